//! Keeping secret values out of journal records: the second line of defence behind
//! `SecretString` (a command's output or an error message may quote a secret).
//!
//! Redaction works on the record's values, not on its text: the record is turned into a
//! `serde_json::Value`, and secrets are replaced only inside string values. Keys,
//! numbers, booleans and the record's own bookkeeping are never touched, so a secret
//! that happens to equal a field name (`"seq"`), a number (`"1"`) or an event name
//! cannot corrupt a record or break its hash chain.
//!
//! Rules:
//! - A secret of 4 or more characters is replaced wherever it occurs inside a string.
//! - A shorter secret is replaced only where a whole string (ignoring surrounding
//!   whitespace, such as a command's final newline) equals it. A 1 to 3 character value
//!   occurs by chance inside ordinary text (ids, words, numbers, timestamps); replacing
//!   every occurrence would mangle records and, by marking where the value occurs,
//!   reveal it rather than hide it.
//! - A secret that is a URL with a password (`postgres://user:pa%20ss@host/db`) also
//!   makes its password a secret, raw (`pa%20ss`) and percent-decoded (`pa ss`), so an
//!   error message quoting only the password is redacted too. The user name is not a
//!   secret and stays.
//!
//! Left alone, because drover writes them itself or takes them from the runbook and the
//! CMDB (files that never hold secret values: a secret there is `{env:}` or `{file:}`),
//! and because the run is replayed and its chain checked by them:
//! - the record's envelope: `seq`, `at`, `t`, `prev` (the hash chain), `event`;
//! - the whole `sealed` record (hashes, signature, key);
//! - names: `phase`, `step`, `name` (a check), and `runbook`, `service`, `plan`, `cis`,
//!   `change`, `from`, `to` of the run;
//! - words of drover's own vocabulary in fields that admit nothing else (an enum such as
//!   a step's `status: ok`): when a replacement would make the record unreadable, that
//!   one replacement is skipped, as the field cannot hold anything but a fixed word.

use serde_json::Value;

use crate::journal::Record;

/// What replaces a secret.
pub const REDACTED: &str = "[redacted]";

/// Below this many characters a secret is only replaced where it is a whole string.
pub const MIN_INNER_LEN: usize = 4;

/// Record fields that are never redacted (see the module documentation).
const ENVELOPE: &[&str] = &["seq", "at", "t", "prev", "event"];
const NAMES: &[&str] = &[
    "phase", "step", "name", "runbook", "service", "plan", "cis", "change", "from", "to",
];

/// The secrets to keep out of records, prepared for matching.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Replaced wherever they occur inside a string; longest first.
    inner: Vec<String>,
    /// Replaced where a whole (trimmed) string equals them.
    whole: Vec<String>,
    /// The JSON-escaped forms of all of them: a record whose text contains none of
    /// these has no string value to redact (escaping maps characters one by one).
    escaped: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("secrets", &(self.inner.len() + self.whole.len()))
            .finish()
    }
}

impl Redactor {
    /// Prepares `secrets` (and the passwords of those that are URLs); empty ones are
    /// ignored.
    pub fn new(secrets: &[String]) -> Self {
        let mut all: Vec<String> = Vec::new();
        for s in secrets {
            all.push(s.clone());
            all.extend(url_password(s));
        }
        all.retain(|s| !s.trim().is_empty());
        all.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        all.dedup();
        let escaped = all.iter().map(|s| json_escaped(s)).collect();
        let (inner, whole) = all.into_iter().partition(|s| s.chars().count() >= MIN_INNER_LEN);
        Redactor { inner, whole, escaped }
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty() && self.whole.is_empty()
    }

    /// `s` with the secrets replaced, or `None` when it holds none.
    pub fn redact_str(&self, s: &str) -> Option<String> {
        let trimmed = s.trim();
        if self.whole.iter().chain(&self.inner).any(|w| w == trimmed) {
            let start = s.len() - s.trim_start().len();
            return Some(format!("{}{REDACTED}{}", &s[..start], &s[start + trimmed.len()..]));
        }
        let mut ranges: Vec<(usize, usize)> = self
            .inner
            .iter()
            .flat_map(|n| s.match_indices(n.as_str()).map(|(i, m)| (i, i + m.len())))
            .collect();
        if ranges.is_empty() {
            return None;
        }
        ranges.sort_unstable();
        let mut out = String::with_capacity(s.len());
        let mut done = 0;
        for (a, b) in ranges {
            if b <= done {
                continue;
            }
            if a >= done {
                out.push_str(&s[done..a]);
                out.push_str(REDACTED);
            }
            // Overlapping matches (a < done) merge into the replacement already written.
            done = b;
        }
        out.push_str(&s[done..]);
        Some(out)
    }

    /// Replaces the secrets inside every string value of `v` (keys are left alone);
    /// returns whether anything changed.
    pub fn redact_value(&self, v: &mut Value) -> bool {
        match v {
            Value::String(s) => match self.redact_str(s) {
                Some(r) => {
                    *s = r;
                    true
                }
                None => false,
            },
            Value::Array(items) => items.iter_mut().fold(false, |c, x| self.redact_value(x) | c),
            Value::Object(map) => map.values_mut().fold(false, |c, x| self.redact_value(x) | c),
            Value::Null | Value::Bool(_) | Value::Number(_) => false,
        }
    }

    /// The record as it may be stored, and its text: `rec` itself when it holds no
    /// secret, else a copy with the secrets replaced in its string values.
    pub fn record(&self, rec: Record) -> Result<(Record, String), serde_json::Error> {
        let json = serde_json::to_string(&rec)?;
        if !self.escaped.iter().any(|e| json.contains(e.as_str())) {
            return Ok((rec, json));
        }
        let original = serde_json::to_value(&rec)?;
        let Value::Object(fields) = &original else {
            return Ok((rec, json));
        };
        if fields.get("event").and_then(Value::as_str) == Some("sealed") {
            return Ok((rec, json));
        }
        // Each redactable field on its own, so that one that admits only fixed words
        // can be left as it was (see the module documentation).
        let mut redacted = original.clone();
        let mut changed: Vec<String> = Vec::new();
        if let Value::Object(out) = &mut redacted {
            for (key, value) in out.iter_mut() {
                if ENVELOPE.contains(&key.as_str()) || NAMES.contains(&key.as_str()) {
                    continue;
                }
                let mut v = value.clone();
                if self.redact_value(&mut v) {
                    changed.push(key.clone());
                    *value = v;
                }
            }
        }
        if changed.is_empty() {
            return Ok((rec, json));
        }
        let rec = match serde_json::from_value::<Record>(redacted) {
            Ok(r) => r,
            Err(_) => self.field_by_field(&original, &changed)?,
        };
        let json = serde_json::to_string(&rec)?;
        Ok((rec, json))
    }

    /// The slow way, when replacing everything made the record unreadable: every
    /// string of every changed field is tried on its own, and kept unless the record
    /// does not read with it.
    fn field_by_field(&self, original: &Value, changed: &[String]) -> Result<Record, serde_json::Error> {
        let mut current = original.clone();
        for key in changed {
            let mut paths = Vec::new();
            string_paths(
                &original[key.as_str()],
                &mut format!("/{}", escape_pointer(key)),
                &mut paths,
            );
            for path in paths {
                let Some(Value::String(s)) = current.pointer(&path) else {
                    continue;
                };
                let Some(r) = self.redact_str(s) else { continue };
                let mut attempt = current.clone();
                if let Some(slot) = attempt.pointer_mut(&path) {
                    *slot = Value::String(r);
                }
                if serde_json::from_value::<Record>(attempt.clone()).is_ok() {
                    current = attempt;
                }
            }
        }
        serde_json::from_value(current)
    }
}

/// JSON pointers of every string value below `v`.
fn string_paths(v: &Value, at: &mut String, out: &mut Vec<String>) {
    match v {
        Value::String(_) => out.push(at.clone()),
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                let len = at.len();
                at.push_str(&format!("/{i}"));
                string_paths(x, at, out);
                at.truncate(len);
            }
        }
        Value::Object(map) => {
            for (k, x) in map {
                let len = at.len();
                at.push('/');
                at.push_str(&escape_pointer(k));
                string_paths(x, at, out);
                at.truncate(len);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// `s` as it appears between the quotes of a JSON string.
fn json_escaped(s: &str) -> String {
    let quoted = serde_json::to_string(s).unwrap_or_default();
    quoted[1..quoted.len() - 1].to_owned()
}

/// The password of a URL secret (`scheme://user:password@host...`), raw and, when
/// different, percent-decoded. The user name is not a secret.
fn url_password(s: &str) -> Vec<String> {
    let Some((scheme, rest)) = s.split_once("://") else {
        return Vec::new();
    };
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return Vec::new();
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let Some((userinfo, _host)) = authority.rsplit_once('@') else {
        return Vec::new();
    };
    let Some((_user, password)) = userinfo.split_once(':') else {
        return Vec::new();
    };
    if password.is_empty() {
        return Vec::new();
    }
    let mut out = vec![password.to_owned()];
    if let Some(decoded) = percent_decode(password)
        && decoded != password
    {
        out.push(decoded);
    }
    out
}

/// Decodes `%XX` escapes; `None` when the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit));
        if b[i] == b'%'
            && let Some(byte) = hex.and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok())
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::journal::{Event, Phase, StepStatus};
    use drover_plugin_api::{ActionError, StepOutput};

    fn redactor(secrets: &[&str]) -> Redactor {
        Redactor::new(&secrets.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
    }

    fn record(seq: u64, event: Event) -> Record {
        Record {
            seq,
            at: "2026-01-02T03:04:05.678Z".into(),
            t: 1.25,
            prev: Some("ab".repeat(32)),
            writer: None,
            event,
        }
    }

    fn finished(summary: &str, data: Value) -> Event {
        Event::StepFinished {
            phase: Phase::Steps,
            step: "s1".into(),
            status: StepStatus::Ok,
            attempts: 1,
            output: Some(StepOutput::new(summary).with_data(data)),
            error: None,
            found: Value::Null,
        }
    }

    /// Redacts `rec` and checks that the stored text reads back as the returned record.
    fn redact(r: &Redactor, rec: Record) -> (Record, Value) {
        let (rec, json) = r.record(rec).expect("redacts");
        let back: Record = serde_json::from_str(&json).expect("the stored text is a record");
        assert_eq!(back, rec);
        (rec, serde_json::from_str(&json).unwrap())
    }

    #[test]
    fn long_secret_is_replaced_inside_strings_at_any_depth() {
        let r = redactor(&["hunter22"]);
        let rec = record(
            3,
            finished(
                "logged in with hunter22.",
                json!({"stdout": ["a", {"deep": ["x hunter22 y", "hunter22hunter22"]}], "n": 5}),
            ),
        );
        let (_, v) = redact(&r, rec);
        assert_eq!(v["output"]["summary"], "logged in with [redacted].");
        assert_eq!(v["output"]["data"]["stdout"][1]["deep"][0], "x [redacted] y");
        assert_eq!(v["output"]["data"]["stdout"][1]["deep"][1], "[redacted][redacted]");
        assert_eq!(v["output"]["data"]["n"], 5);
        assert!(!v.to_string().contains("hunter22"));
    }

    #[test]
    fn a_secret_equal_to_a_key_or_an_event_name_leaves_the_record_intact() {
        // "seq" is a key of every record, "step" a key and "sealed" an event name.
        let r = redactor(&["seq", "step", "sealed", "event"]);
        let rec = record(
            7,
            finished("seq", json!({"seq": "not seq", "step": 1, "event": "sealed"})),
        );
        let (out, v) = redact(&r, rec.clone());
        assert_eq!(v["seq"], 7);
        assert_eq!(v["event"], "step_finished");
        assert_eq!(v["step"], "s1");
        // A whole string equal to a short secret goes; keys and other text stay.
        assert_eq!(v["output"]["summary"], "[redacted]");
        assert_eq!(v["output"]["data"]["seq"], "not seq");
        // 4+ characters: replaced inside strings, never in keys.
        assert_eq!(v["output"]["data"]["step"], 1);
        assert_eq!(v["output"]["data"]["event"], "[redacted]");
        assert_eq!(out.seq, rec.seq);
        // A record with nothing to redact is stored exactly as it was.
        let plain = record(8, finished("all good", json!({"seq": 1})));
        let (same, json) = r.record(plain.clone()).unwrap();
        assert_eq!(same, plain);
        assert_eq!(json, serde_json::to_string(&plain).unwrap());
    }

    #[test]
    fn a_secret_equal_to_1_touches_no_number() {
        let r = redactor(&["1"]);
        let rec = record(
            1,
            finished("1", json!({"attempts": 1, "list": [1, "1", " 1\n", "10", "a1"]})),
        );
        let (out, v) = redact(&r, rec);
        assert_eq!(out.seq, 1);
        assert_eq!(v["attempts"], 1);
        assert_eq!(v["t"], 1.25);
        assert_eq!(v["output"]["summary"], "[redacted]");
        assert_eq!(
            v["output"]["data"]["list"],
            json!([1, "[redacted]", " [redacted]\n", "10", "a1"])
        );
    }

    #[test]
    fn a_numeric_secret_stays_in_numbers_and_goes_from_strings() {
        let r = redactor(&["20260"]);
        let rec = record(
            20260,
            finished(
                "pin 20260 accepted",
                json!({"code": 20260, "codes": [20260, 202601], "text": "20260"}),
            ),
        );
        let (out, v) = redact(&r, rec);
        assert_eq!(out.seq, 20260);
        assert_eq!(v["output"]["summary"], "pin [redacted] accepted");
        assert_eq!(v["output"]["data"]["code"], 20260);
        assert_eq!(v["output"]["data"]["codes"], json!([20260, 202601]));
        assert_eq!(v["output"]["data"]["text"], "[redacted]");
        // The envelope keeps its time and hash even when they contain the secret.
        assert_eq!(v["at"], "2026-01-02T03:04:05.678Z");
        assert_eq!(
            redactor(&["2026"])
                .record(record(0, finished("x", Value::Null)))
                .unwrap()
                .0
                .at,
            "2026-01-02T03:04:05.678Z"
        );
    }

    #[test]
    fn the_hash_chain_and_the_seal_are_never_touched() {
        let hash = "ab".repeat(32);
        let r = redactor(&["abab", "SHA256"]);
        let (out, _) = redact(&r, record(2, finished("x", Value::Null)));
        assert_eq!(out.prev.as_deref(), Some(hash.as_str()));
        let seal = record(
            9,
            Event::Sealed {
                head: hash.clone(),
                signature: "ab".repeat(64),
                public_key: "ab".repeat(32),
                fingerprint: format!("SHA256:{hash}"),
            },
        );
        let (out, _) = redact(&r, seal.clone());
        assert_eq!(out, seal);
    }

    #[test]
    fn a_secret_equal_to_a_fixed_word_keeps_the_record_readable() {
        // "ok" is the step's status, "failed" an outcome word, "retryable" an error
        // kind: fields that admit only those words are left as they are; free text goes.
        let r = redactor(&["ok", "retryable"]);
        let (out, v) = redact(&r, record(4, finished("ok", json!(["ok"]))));
        assert!(matches!(
            out.event,
            Event::StepFinished {
                status: StepStatus::Ok,
                ..
            }
        ));
        assert_eq!(v["output"]["summary"], "[redacted]");
        assert_eq!(v["output"]["data"], json!(["[redacted]"]));
        let failed = record(
            5,
            Event::StepAttemptFailed {
                phase: Phase::Steps,
                step: "s1".into(),
                attempt: 1,
                error: ActionError::Retryable("retryable: try again".into()),
                retry_in_s: Some(1.0),
            },
        );
        let (_, v) = redact(&r, failed);
        assert_eq!(
            v["error"],
            json!({"kind": "retryable", "message": "[redacted]: try again"})
        );
    }

    #[test]
    fn the_password_of_a_url_secret_is_a_secret_raw_and_decoded() {
        let r = redactor(&["postgres://app:pa%20ss%2Fw0rd@db.example:5432/payments"]);
        let rec = record(
            1,
            finished(
                "auth failed for app with pa%20ss%2Fw0rd",
                json!({
                    "stderr": "password \"pa ss/w0rd\" rejected",
                    "url": "postgres://app:pa%20ss%2Fw0rd@db.example:5432/payments",
                }),
            ),
        );
        let (_, v) = redact(&r, rec);
        assert_eq!(v["output"]["summary"], "auth failed for app with [redacted]");
        assert_eq!(v["output"]["data"]["stderr"], "password \"[redacted]\" rejected");
        // The whole URL goes at once, not with its user name and host left around it.
        assert_eq!(v["output"]["data"]["url"], "[redacted]");
        // The user name is not a secret.
        assert!(v.to_string().contains("for app with"));
    }

    #[test]
    fn url_passwords() {
        assert_eq!(url_password("https://u:p@h"), vec!["p"]);
        assert_eq!(
            url_password("postgres://user:pa%20ss@host/db"),
            vec!["pa%20ss", "pa ss"]
        );
        assert_eq!(
            url_password("postgresql://u:p%40ss@h/db?sslmode=require"),
            vec!["p%40ss", "p@ss"]
        );
        // The last `@` ends the user info; `@` in the path does not count.
        assert_eq!(url_password("https://u:a@b@host/x@y"), vec!["a@b"]);
        assert!(url_password("https://user@host/db").is_empty());
        assert!(url_password("https://host/a:b@c").is_empty());
        assert!(url_password("https://u:@host").is_empty());
        assert!(url_password("not a url: x@y").is_empty());
        assert!(url_password("plain-secret").is_empty());
        // Only `%` and two hex digits is an escape (`from_str_radix` alone would take `+1`).
        assert_eq!(percent_decode("a%+1b%zz%4").as_deref(), Some("a%+1b%zz%4"));
        assert_eq!(percent_decode("%e2%82%ac%41").as_deref(), Some("€A"));
        assert_eq!(percent_decode("%ff"), None);
        // A short password is a whole-string secret, like any short one.
        let r = redactor(&["https://u:p@h"]);
        assert_eq!(r.redact_str("p"), Some("[redacted]".into()));
        assert_eq!(r.redact_str("up"), None);
    }

    #[test]
    fn overlapping_and_repeated_secrets_are_replaced_once() {
        let r = redactor(&["abcdef", "cdefgh", "", "  "]);
        assert_eq!(r.redact_str("xxabcdefghyy").as_deref(), Some("xx[redacted]yy"));
        assert_eq!(r.redact_str("abcdef abcdef").as_deref(), Some("[redacted] [redacted]"));
        assert_eq!(r.redact_str("nothing here"), None);
        assert!(!r.is_empty());
        assert!(redactor(&["", " "]).is_empty());
        // A secret needing JSON escapes is found in the value, not its escaped text.
        let r = redactor(&["q\"uo\\te"]);
        let (_, v) = redact(&r, record(0, finished("say q\"uo\\te", Value::Null)));
        assert_eq!(v["output"]["summary"], "say [redacted]");
    }

    #[test]
    fn debug_shows_no_secret() {
        let r = redactor(&["hunter22"]);
        assert!(!format!("{r:?}").contains("hunter22"));
    }
}
