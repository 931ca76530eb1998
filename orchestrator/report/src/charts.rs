//! Inline SVG charts, built with the `svg` crate: the Gantt chart of a run's timeline and
//! the RTO/RPO trend of a service.

use drover_engine::journal::Phase;
use drover_engine::view::RunView;
use svg::Document;
use svg::node::element::{Group, Line, Polyline, Rectangle, Text, Title};

use drover_engine::coverage::Coverage;

use crate::{TrendPoint, secs};

const LABEL_W: f64 = 220.0;
const PLOT_W: f64 = 700.0;
const ROW_H: f64 = 22.0;
const TOP: f64 = 34.0;

fn status_color(status: &str) -> &'static str {
    match status {
        "ok" => "#2e7d32",
        "failed" => "#c62828",
        "outcome_unknown" => "#ef6c00",
        "running" | "interrupted" => "#6a1b9a",
        _ => "#9e9e9e",
    }
}

/// Round tick spacing for an axis of `max` seconds.
fn tick_step(max: f64) -> f64 {
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let step = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    (step * mag).max(1e-3)
}

fn text(x: f64, y: f64, s: &str, anchor: &str, size: u32) -> Text {
    Text::new(s)
        .set("x", x)
        .set("y", y)
        .set("text-anchor", anchor)
        .set("font-size", size)
        .set("font-family", "Helvetica, Arial, sans-serif")
}

/// A Gantt chart of the run: the preflight checks as one band (they gate everything, so
/// the steps start where it ends), then every step, compensation and rollback step: one
/// row each, the bar from its start to its end on the run clock, coloured by status; the
/// critical path outlined; the RTO achieved and its target as vertical lines.
pub fn gantt_svg(run: &RunView) -> String {
    let rows: Vec<_> = run.steps.iter().filter(|s| s.start_s.is_some()).collect();
    let band = run.preflight.as_ref();
    let end = rows
        .iter()
        .filter_map(|s| s.end_s.or(s.start_s))
        .chain(run.rto.achieved_s)
        .chain(band.map(|b| b.end_s))
        .fold(0.0f64, f64::max);
    let max = if end > 0.0 { end * 1.05 } else { 1.0 };
    let x = |t: f64| LABEL_W + (t / max).clamp(0.0, 1.0) * PLOT_W;
    let band_rows = usize::from(band.is_some());
    let height = TOP + ROW_H * (rows.len() + band_rows).max(1) as f64 + 30.0;
    let width = LABEL_W + PLOT_W + 20.0;
    let mut doc = Document::new()
        .set("viewBox", (0, 0, width, height))
        .set("width", width)
        .set("height", height)
        .set("role", "img")
        .add(Title::new(format!("Timeline of run {}", run.id)));
    // Axis and grid.
    let step = tick_step(max);
    let mut axis = Group::new().set("class", "axis");
    let mut t = 0.0;
    while t <= max + 1e-9 {
        axis = axis
            .add(
                Line::new()
                    .set("x1", x(t))
                    .set("x2", x(t))
                    .set("y1", TOP - 6.0)
                    .set("y2", height - 24.0)
                    .set("stroke", "#e0e0e0"),
            )
            .add(text(x(t), TOP - 10.0, &secs(t), "middle", 10));
        t += step;
    }
    doc = doc.add(axis);
    if let Some(b) = band {
        let label = format!("preflight ({} check{})", b.checks, if b.checks == 1 { "" } else { "s" });
        let tip = format!(
            "{label}: {} from {} for {}",
            if b.passed { "passed" } else { "failed" },
            secs(b.start_s),
            secs(b.duration_s)
        );
        let color = status_color(if b.passed { "ok" } else { "failed" });
        doc = doc.add(
            Group::new()
                .set("class", "preflight")
                .add(Title::new(tip))
                .add(text(LABEL_W - 8.0, TOP + ROW_H / 2.0 + 4.0, &label, "end", 12).set("font-style", "italic"))
                .add(
                    Rectangle::new()
                        .set("x", x(b.start_s))
                        .set("y", TOP + 4.0)
                        .set("width", (x(b.end_s) - x(b.start_s)).max(2.0))
                        .set("height", ROW_H - 8.0)
                        .set("rx", 2)
                        .set("fill", color)
                        .set("fill-opacity", 0.45)
                        .set("stroke", color)
                        .set("stroke-dasharray", "3 2"),
                ),
        );
    }
    for (i, s) in rows.iter().enumerate() {
        let y = TOP + ROW_H * (i + band_rows) as f64;
        let start = s.start_s.unwrap_or(0.0);
        let stop = s.end_s.unwrap_or(end);
        let label = match s.phase {
            Phase::Steps => s.id.clone(),
            Phase::Compensation => format!("undo {}", s.id),
            Phase::Rollback => format!("rollback {}", s.id),
            Phase::Preflight | Phase::Verify => s.id.clone(),
        };
        let critical = s.phase == Phase::Steps && run.critical_path.contains(&s.id);
        let mut bar = Rectangle::new()
            .set("x", x(start))
            .set("y", y + 4.0)
            .set("width", (x(stop) - x(start)).max(2.0))
            .set("height", ROW_H - 8.0)
            .set("rx", 2)
            .set("fill", status_color(&s.status));
        if critical {
            bar = bar.set("stroke", "#000").set("stroke-width", 2);
        }
        let tip = format!(
            "{label}: {} from {} for {}{}",
            s.status,
            secs(start),
            s.duration_s.map(secs).unwrap_or_else(|| "?".into()),
            if s.attempts > 1 {
                format!(", {} attempts", s.attempts)
            } else {
                String::new()
            }
        );
        doc = doc.add(
            Group::new()
                .add(Title::new(tip))
                .add(text(LABEL_W - 8.0, y + ROW_H / 2.0 + 4.0, &label, "end", 12))
                .add(bar),
        );
    }
    let bottom = height - 24.0;
    let marker = |t: f64, color: &str, label: String, dash: &str| {
        let line = Line::new()
            .set("x1", x(t))
            .set("x2", x(t))
            .set("y1", TOP - 4.0)
            .set("y2", bottom)
            .set("stroke", color.to_owned())
            .set("stroke-width", 1.5)
            .set("stroke-dasharray", dash.to_owned());
        Group::new()
            .add(line)
            .add(text(x(t), bottom + 14.0, &label, "middle", 11).set("fill", color.to_owned()))
    };
    if let Some(a) = run.rto.achieved_s {
        doc = doc.add(marker(a, "#1565c0", format!("RTO {}", secs(a)), "4 2"));
    }
    if let Some(t) = run.rto.target_s.filter(|t| *t <= max) {
        doc = doc.add(marker(t, "#c62828", format!("target {}", secs(t)), "2 2"));
    }
    doc.to_string()
}

/// A series of the trend chart: name, colour, achieved and target figures of a point.
type Series = (
    &'static str,
    &'static str,
    fn(&TrendPoint) -> Option<f64>,
    fn(&TrendPoint) -> Option<f64>,
);

/// RTO and RPO achieved across runs (oldest left), with their targets as dashed lines.
pub fn trend_svg(service: &str, points: &[TrendPoint]) -> String {
    // The right margin holds half of the newest point's label (centred under it), so
    // that it is never clipped; the left one holds the axis figures.
    let (w, h, left, right, top, bottom) = (860.0, 320.0, 70.0, 40.0, 30.0, 60.0);
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let values = points.iter().flat_map(|p| {
        [p.rto.achieved_s, p.rto.target_s, p.rpo.achieved_s, p.rpo.target_s]
            .into_iter()
            .flatten()
    });
    let max = values.fold(0.0f64, f64::max).max(1e-3) * 1.1;
    let n = points.len().max(1);
    let px = |i: usize| {
        left + if n == 1 {
            plot_w / 2.0
        } else {
            plot_w * i as f64 / (n - 1) as f64
        }
    };
    let py = |v: f64| top + plot_h * (1.0 - v / max);
    let mut doc = Document::new()
        .set("viewBox", (0, 0, w, h))
        .set("width", w)
        .set("height", h)
        .set("role", "img")
        .add(Title::new(format!("RTO and RPO of {service} across runs")));
    let step = tick_step(max);
    let mut v = 0.0;
    while v <= max + 1e-9 {
        doc = doc
            .add(
                Line::new()
                    .set("x1", left)
                    .set("x2", w - right)
                    .set("y1", py(v))
                    .set("y2", py(v))
                    .set("stroke", "#e0e0e0"),
            )
            .add(text(left - 6.0, py(v) + 4.0, &secs(v), "end", 10));
        v += step;
    }
    let series: [Series; 2] = [
        ("RTO", "#1565c0", |p| p.rto.achieved_s, |p| p.rto.target_s),
        ("RPO", "#6a1b9a", |p| p.rpo.achieved_s, |p| p.rpo.target_s),
    ];
    for (k, (name, color, achieved, target)) in series.iter().enumerate() {
        let line: Vec<(f64, f64)> = points
            .iter()
            .enumerate()
            .filter_map(|(i, p)| achieved(p).map(|v| (px(i), py(v))))
            .collect();
        if !line.is_empty() {
            let pts: Vec<String> = line.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            doc = doc.add(
                Polyline::new()
                    .set("points", pts.join(" "))
                    .set("fill", "none")
                    .set("stroke", *color)
                    .set("stroke-width", 2),
            );
            for (i, p) in points.iter().enumerate() {
                if let Some(v) = achieved(p) {
                    let missed = target(p).is_some_and(|t| v > t);
                    doc = doc.add(
                        Group::new()
                            .add(Title::new(format!(
                                "{name} {} in run {} ({})",
                                secs(v),
                                p.run,
                                p.started_at
                            )))
                            .add(
                                svg::node::element::Circle::new()
                                    .set("cx", px(i))
                                    .set("cy", py(v))
                                    .set("r", 4)
                                    .set("fill", if missed { "#c62828" } else { *color }),
                            ),
                    );
                }
            }
        }
        let targets: Vec<String> = points
            .iter()
            .enumerate()
            .filter_map(|(i, p)| target(p).map(|t| format!("{:.1},{:.1}", px(i), py(t))))
            .collect();
        if !targets.is_empty() {
            doc = doc.add(
                Polyline::new()
                    .set("points", targets.join(" "))
                    .set("fill", "none")
                    .set("stroke", *color)
                    .set("stroke-dasharray", "6 4")
                    .set("stroke-width", 1),
            );
        }
        let lx = left + 10.0 + 170.0 * k as f64;
        doc = doc
            .add(
                Line::new()
                    .set("x1", lx)
                    .set("x2", lx + 24.0)
                    .set("y1", h - 18.0)
                    .set("y2", h - 18.0)
                    .set("stroke", *color)
                    .set("stroke-width", 2),
            )
            .add(text(
                lx + 30.0,
                h - 14.0,
                &format!("{name} (dashed: target)"),
                "start",
                11,
            ));
    }
    // Every k-th label from the newest back, so that neighbours never overlap.
    let spacing = if n > 1 { plot_w / (n - 1) as f64 } else { plot_w };
    let every = ((LABEL_MAX + 6.0) / spacing).ceil().max(1.0) as usize;
    let shown = |i: usize| (n - 1 - i).is_multiple_of(every);
    for (i, [first, second]) in point_labels(points, shown).iter().enumerate() {
        if !shown(i) {
            continue;
        }
        let mut g = Group::new()
            .set("class", "x-label")
            .add(text(px(i), h - bottom + 16.0, first, "middle", 10));
        if !second.is_empty() {
            g = g.add(text(px(i), h - bottom + 28.0, second, "middle", 10).set("fill", "#616161"));
        }
        doc = doc.add(g);
    }
    doc.to_string()
}

/// Seconds since the epoch of an RFC 3339 time.
fn epoch_s(t: &str) -> Option<f64> {
    drover_engine::journal::parse_rfc3339(t)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64())
}

fn status_fill(status: &str) -> &'static str {
    match status {
        "ok" => "#2e7d32",
        "due" => "#f9a825",
        "overdue" | "failing" => "#ad1457",
        "never" => "#546e7a",
        _ => "#424242",
    }
}

/// The drill timeline of the coverage: one row per tiered CI, each drill or failover a
/// dot on the time axis (green passed, red not), its due date a tick coloured by the
/// status, and the instant judged at ("now") a vertical line.
pub fn coverage_svg(c: &Coverage) -> String {
    let now = epoch_s(&c.at).unwrap_or(0.0);
    let day = 86_400.0;
    let times = c.items.iter().flat_map(|i| {
        i.drills
            .iter()
            .filter_map(|d| epoch_s(&d.at))
            .chain(i.due_by.as_deref().and_then(epoch_s))
    });
    let (lo, hi) = times.fold((now - 30.0 * day, now + 7.0 * day), |(lo, hi), t| {
        (lo.min(t), hi.max(t))
    });
    let span = (hi - lo).max(day) * 1.04;
    let lo = lo - span * 0.02;
    let x = |t: f64| LABEL_W + ((t - lo) / span).clamp(0.0, 1.0) * PLOT_W;
    let rows = c.items.len().max(1);
    let height = TOP + ROW_H * rows as f64 + 34.0;
    let width = LABEL_W + PLOT_W + 20.0;
    let mut doc = Document::new()
        .set("viewBox", (0, 0, width, height))
        .set("width", width)
        .set("height", height)
        .set("role", "img")
        .add(Title::new(format!(
            "Drills per CI against their due dates, as of {}",
            c.at
        )));
    // Month-ish grid: a tick every `step` days, labelled with the date.
    let days = span / day;
    let step = [1.0, 7.0, 14.0, 30.0, 60.0, 90.0, 180.0, 365.0]
        .into_iter()
        .find(|s| days / s <= 8.0)
        .unwrap_or(730.0)
        * day;
    let mut t = (lo / step).ceil() * step;
    while t <= lo + span {
        let label =
            drover_engine::journal::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(t.max(0.0)));
        doc = doc
            .add(
                Line::new()
                    .set("x1", x(t))
                    .set("x2", x(t))
                    .set("y1", TOP - 6.0)
                    .set("y2", height - 28.0)
                    .set("stroke", "#e0e0e0"),
            )
            .add(text(x(t), TOP - 10.0, label.get(..10).unwrap_or(&label), "middle", 10));
        t += step;
    }
    for (i, item) in c.items.iter().enumerate() {
        let y = TOP + ROW_H * i as f64 + ROW_H / 2.0;
        let mut row = Group::new()
            .add(Title::new(format!(
                "{} ({}): {}{}",
                item.ci,
                item.tier,
                item.status,
                item.due_by
                    .as_deref()
                    .map(|d| format!(", due by {d}"))
                    .unwrap_or_default()
            )))
            .add(text(LABEL_W - 8.0, y + 4.0, &item.ci, "end", 12))
            .add(
                Line::new()
                    .set("x1", LABEL_W)
                    .set("x2", LABEL_W + PLOT_W)
                    .set("y1", y)
                    .set("y2", y)
                    .set("stroke", "#eeeeee"),
            );
        for d in &item.drills {
            let Some(t) = epoch_s(&d.at) else { continue };
            row = row.add(
                Group::new()
                    .add(Title::new(format!("{} {} {}: {}", d.mode, d.run, d.at, d.outcome)))
                    .add(
                        svg::node::element::Circle::new()
                            .set("cx", x(t))
                            .set("cy", y)
                            .set("r", 5)
                            .set("fill", if d.outcome == "passed" { "#2e7d32" } else { "#c62828" }),
                    ),
            );
        }
        if let Some(due) = item.due_by.as_deref().and_then(epoch_s) {
            row = row.add(
                Rectangle::new()
                    .set("x", x(due) - 1.5)
                    .set("y", y - ROW_H / 2.0 + 3.0)
                    .set("width", 3)
                    .set("height", ROW_H - 6.0)
                    .set("fill", status_fill(item.status)),
            );
        } else if item.status != "ok" {
            row = row.add(text(LABEL_W + 6.0, y + 4.0, item.status, "start", 11).set("fill", status_fill(item.status)));
        }
        doc = doc.add(row);
    }
    let bottom = height - 28.0;
    doc = doc
        .add(
            Line::new()
                .set("x1", x(now))
                .set("x2", x(now))
                .set("y1", TOP - 4.0)
                .set("y2", bottom)
                .set("stroke", "#1565c0")
                .set("stroke-width", 1.5)
                .set("stroke-dasharray", "4 2"),
        )
        .add(text(x(now), bottom + 14.0, "now", "middle", 11).set("fill", "#1565c0"))
        .add(text(
            LABEL_W,
            height - 4.0,
            "dot: a drill (green passed, red not); bar: the due date (its colour is the status)",
            "start",
            10,
        ));
    doc.to_string()
}

/// The widest x-axis label line (a date, `2026-11-27`, in 10-pixel Helvetica, whose
/// digits and `-` are about 0.56 em wide, with some room to spare).
const LABEL_MAX: f64 = 10.0 * 10.0 * 0.6;

/// The x-axis label of each point, as two lines: the date of a run alone on its day;
/// the time (UTC) for runs that share a day, with the date under the first of them that
/// is `shown` (and seconds when two share a minute).
fn point_labels(points: &[TrendPoint], shown: impl Fn(usize) -> bool) -> Vec<[String; 2]> {
    let date = |p: &TrendPoint| p.started_at.get(..10).unwrap_or(&p.started_at).to_owned();
    let minute = |p: &TrendPoint| p.started_at.get(..16).unwrap_or(&p.started_at).to_owned();
    let mut dated = std::collections::HashSet::new();
    points
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let day = date(p);
            if points.iter().filter(|q| date(q) == day).count() == 1 {
                return [day, String::new()];
            }
            let same_minute = points.iter().filter(|q| minute(q) == minute(p)).count();
            let time_end = if same_minute > 1 { 19 } else { 16 };
            let time = p.started_at.get(11..time_end).unwrap_or_default().to_owned();
            let under = if shown(i) && dated.insert(day.clone()) {
                day
            } else {
                String::new()
            };
            [time, under]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Measure;

    fn point(started_at: &str) -> TrendPoint {
        TrendPoint {
            run: format!("run-{started_at}"),
            started_at: started_at.to_owned(),
            mode: Some("drill"),
            outcome: Some("passed"),
            rto: Measure::new(Some(600.0), Some(30.0)),
            rpo: Measure::new(None, None),
            actions: Vec::new(),
        }
    }

    /// The x-axis labels of a chart: (x, the label's lines).
    fn x_labels(svg: &str) -> Vec<(f64, Vec<String>)> {
        svg.split("<g class=\"x-label\">")
            .skip(1)
            .map(|g| {
                let g = &g[..g.find("</g>").unwrap()];
                let x = g
                    .split("x=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                let lines = g
                    .split("</text>")
                    .filter_map(|t| t.rsplit('>').next())
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect();
                (x, lines)
            })
            .collect()
    }

    fn view_box_width(svg: &str) -> f64 {
        let vb = svg.split("viewBox=\"").nth(1).unwrap().split('"').next().unwrap();
        vb.split_whitespace().nth(2).unwrap().parse().unwrap()
    }

    #[test]
    fn runs_of_one_day_are_labelled_with_their_times() {
        let points = [
            point("2026-11-26T09:00:00Z"),
            point("2026-11-27T09:15:02.5Z"),
            point("2026-11-27T14:40:10Z"),
            point("2026-11-27T14:40:55Z"),
        ];
        let svg = trend_svg("svc", &points);
        let labels: Vec<Vec<String>> = x_labels(&svg).into_iter().map(|(_, l)| l).collect();
        assert_eq!(
            labels,
            [
                vec!["2026-11-26".to_owned()],
                vec!["09:15".to_owned(), "2026-11-27".to_owned()],
                vec!["14:40:10".to_owned()],
                vec!["14:40:55".to_owned()],
            ]
        );
    }

    #[test]
    fn no_label_is_clipped_or_overlaps_its_neighbour() {
        for n in [1usize, 2, 5, 40] {
            let points: Vec<TrendPoint> = (0..n)
                .map(|i| point(&format!("2026-{:02}-{:02}T10:00:00Z", 1 + i / 28, 1 + i % 28)))
                .collect();
            let svg = trend_svg("svc", &points);
            let width = view_box_width(&svg);
            let labels = x_labels(&svg);
            assert!(!labels.is_empty(), "{n} points, no label");
            // The newest run is always labelled.
            assert_eq!(labels.last().unwrap().1[0], points[n - 1].started_at[..10], "{n}");
            for (x, lines) in &labels {
                let half = lines.iter().map(|l| l.len()).max().unwrap() as f64 * 10.0 * 0.6 / 2.0;
                assert!(
                    x - half >= 0.0 && x + half <= width,
                    "{n} points: {lines:?} at {x} is clipped"
                );
            }
            for pair in labels.windows(2) {
                assert!(
                    pair[1].0 - pair[0].0 >= LABEL_MAX,
                    "{n} points: labels overlap: {pair:?}"
                );
            }
        }
    }
}
