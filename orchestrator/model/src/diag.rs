//! Diagnostics: errors found in the user's files, each with a file, a line and a column.
//!
//! Every error the loader or a semantic check finds becomes a [`Diagnostic`]; they are
//! collected (never the first one only) and rendered as `PATH:LINE:COL: error: MESSAGE`,
//! optionally followed by a source snippet with a caret under the offending column.

use std::fmt;
use std::path::{Path, PathBuf};

/// A 1-based line and column in a source file (columns count characters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    pub line: u32,
    pub col: u32,
}

impl Location {
    pub const fn new(line: u32, col: u32) -> Self {
        Self { line, col }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// A problem at a location, not yet tied to a file (plugins report these).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    pub loc: Location,
    pub message: String,
}

impl Issue {
    pub fn new(loc: Location, message: impl Into<String>) -> Self {
        Self {
            loc,
            message: message.into(),
        }
    }

    /// Ties the issue to the file it was found in.
    pub fn in_file(self, file: &Path) -> Diagnostic {
        Diagnostic {
            file: file.to_path_buf(),
            loc: self.loc,
            message: self.message,
        }
    }
}

/// An error in an input file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub loc: Location,
    pub message: String,
}

impl Diagnostic {
    pub fn new(file: impl Into<PathBuf>, loc: Location, message: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            loc,
            message: message.into(),
        }
    }

    /// Renders the one-line form and, when `source` is the file's text, a snippet
    /// with a caret under the column.
    pub fn render(&self, source: Option<&str>) -> String {
        let mut out = self.to_string();
        if let Some(line) = source.and_then(|s| s.lines().nth(self.loc.line.saturating_sub(1) as usize)) {
            let num = self.loc.line.to_string();
            let pad = " ".repeat(num.len());
            let caret_pad: String = line
                .chars()
                .take(self.loc.col.saturating_sub(1) as usize)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            out.push_str(&format!("\n{pad} |\n{num} | {line}\n{pad} | {caret_pad}^"));
        }
        out
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: error: {}",
            self.file.display(),
            self.loc.line,
            self.loc.col,
            self.message
        )
    }
}

/// Sorts diagnostics by file and position and drops exact duplicates.
pub fn sort_and_dedup(diags: &mut Vec<Diagnostic>) {
    diags.sort_by(|a, b| (&a.file, a.loc, &a.message).cmp(&(&b.file, b.loc, &b.message)));
    diags.dedup();
}

/// The closest candidate to `word` by edit distance, if it is close enough to be a likely typo.
///
/// The distance is the optimal string alignment distance (`strsim::osa_distance`): a swap
/// of two neighbouring characters, the commonest typo, is one edit (`fenec` is one edit
/// from `fence`). Ties go to the candidate that sorts first.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let max = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (strsim::osa_distance(word, c), c))
        .filter(|(d, _)| *d <= max)
        .min()
        .map(|(_, c)| c)
}

/// The candidate whose beginning is closest to `word` (a mistyped prefix of a long id,
/// such as a run id): each candidate is compared cut to the length of `word`.
pub fn suggest_by_prefix<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let n = word.chars().count();
    let max = (n / 3).max(1);
    candidates
        .into_iter()
        .map(|c| {
            let head: String = c.chars().take(n).collect();
            (strsim::osa_distance(word, &head), std::cmp::Reverse(c))
        })
        .filter(|(d, _)| *d <= max)
        .min()
        .map(|(_, std::cmp::Reverse(c))| c)
}

/// `did you mean ...?` suffix for an unknown name, or nothing.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    match suggest(word, candidates) {
        Some(s) => format!(" (did you mean `{s}`?)"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_snippet_with_caret() {
        let d = Diagnostic::new("f.yaml", Location::new(2, 5), "bad");
        let r = d.render(Some("a: 1\nb:  x\n"));
        assert_eq!(r, "f.yaml:2:5: error: bad\n  |\n2 | b:  x\n  |     ^");
    }

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(suggest("exec.rnu", ["exec.run", "http.check"]), Some("exec.run"));
        assert_eq!(suggest("zzz", ["exec.run"]), None);
        // A swap of neighbours is one edit.
        assert_eq!(suggest("fenec", ["fence", "promote"]), Some("fence"));
        assert_eq!(suggest("wset", ["east", "west"]), Some("west"));
        assert_eq!(
            suggest("payment-failover", ["payments-failover", "backups"]),
            Some("payments-failover")
        );
    }

    #[test]
    fn suggests_ids_by_their_beginning() {
        let ids = ["20260101-101010-aaaaaaaaaaaa", "20260101-101010-abcdef012345"];
        // One typo in a prefix: compared with the ids cut to its length.
        assert_eq!(suggest_by_prefix("20260101-101010-abdd", ids), Some(ids[1]));
        // Equally close: the newest (last in sort order).
        assert_eq!(suggest_by_prefix("20260101-1O1010", ids), Some(ids[1]));
        assert_eq!(suggest_by_prefix("19991231", ids), None);
        // A whole id with one typo is also found.
        assert_eq!(suggest_by_prefix("20260101-101010-abcdef012346", ids), Some(ids[1]));
    }
}
