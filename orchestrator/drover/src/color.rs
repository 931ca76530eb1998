//! Colour on the terminal, by one rule for every output of the binary: colour only when
//! the stream is a terminal (and `TERM` is not `dumb`), never when `NO_COLOR` is set to
//! anything but the empty string (no-color.org), always when `CLICOLOR_FORCE` is (and
//! `NO_COLOR` is not). These are the rules clap's own help and errors follow (through
//! the same crate, `anstyle-query`), so drover's lines and clap's agree.

use std::io::IsTerminal;

use anstyle::{AnsiColor, Style};

/// An output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn is_terminal(self) -> bool {
        match self {
            Stream::Stdout => std::io::stdout().is_terminal(),
            Stream::Stderr => std::io::stderr().is_terminal(),
        }
    }
}

/// Whether to colour what goes to `stream`.
pub fn enabled(stream: Stream) -> bool {
    decide(stream.is_terminal())
}

fn decide(terminal: bool) -> bool {
    if anstyle_query::no_color() {
        return false;
    }
    if anstyle_query::clicolor_force() {
        return true;
    }
    if anstyle_query::clicolor() == Some(false) {
        return false;
    }
    terminal && anstyle_query::term_supports_color()
}

/// Whether stderr can take the live display (spinners redrawn in place with cursor
/// escapes): a terminal that is not `dumb`, and no `NO_COLOR`, which asks for plain
/// output. `CLICOLOR_FORCE` does not force it: redrawing makes no sense in a file.
pub fn live_stderr() -> bool {
    std::io::stderr().is_terminal() && !anstyle_query::no_color() && anstyle_query::term_supports_color()
}

/// What a piece of text says, which picks its colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Good,
    Bad,
    Warn,
}

/// `text` in the colour of `tone` when `on`, else unchanged.
pub fn paint(text: &str, tone: Tone, on: bool) -> String {
    if !on {
        return text.to_owned();
    }
    let color = match tone {
        Tone::Good => AnsiColor::Green,
        Tone::Bad => AnsiColor::Red,
        Tone::Warn => AnsiColor::Yellow,
    };
    let style = Style::new().fg_color(Some(color.into())).bold();
    format!("{style}{text}{style:#}")
}

/// The tone of a run's result (`passed`, `failed`, ...), if it has one.
pub fn outcome_tone(result: &str) -> Option<Tone> {
    match result {
        "passed" => Some(Tone::Good),
        "failed" | "stuck" => Some(Tone::Bad),
        "targets_missed" | "refused" | "interrupted" => Some(Tone::Warn),
        _ => None,
    }
}

/// A progress line with its leading mark (`✓`, `✗`, `?`) coloured when `on`.
pub fn mark_line(line: &str, on: bool) -> String {
    let tone = match line.chars().next() {
        Some('✓') => Tone::Good,
        Some('✗') => Tone::Bad,
        Some('?' | '…') => Tone::Warn,
        _ => return line.to_owned(),
    };
    let split = line.chars().next().map_or(0, char::len_utf8);
    format!("{}{}", paint(&line[..split], tone, on), &line[split..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paint_is_plain_when_off() {
        assert_eq!(paint("PASSED", Tone::Good, false), "PASSED");
        let on = paint("PASSED", Tone::Good, true);
        assert!(
            on.starts_with('\x1b') && on.contains("PASSED") && on.ends_with('m'),
            "{on:?}"
        );
        assert_eq!(mark_line("✓ step `a` done", false), "✓ step `a` done");
        assert!(mark_line("✗ step `a` failed", true).starts_with('\x1b'));
        assert_eq!(mark_line("step `a` started", true), "step `a` started");
    }
}
