//! Small value types shared by the file formats: durations, secrets, located maps.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde::{Serialize, Serializer};

use crate::node::Located;

/// A duration written as a humantime string: `90s`, `15m`, `4h`, `1h 30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn as_secs_f64(&self) -> f64 {
        self.0.as_secs_f64()
    }
}

impl From<Duration> for Dur {
    fn from(d: Duration) -> Self {
        Dur(d)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_duration(self.0).fmt(f)
    }
}

impl std::str::FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map(Dur)
            .map_err(|e| format!("invalid duration `{s}`: {e} (write e.g. `90s`, `15m`, `4h`)"))
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as `90s`, `15m` or `4h`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Dur, E> {
                s.parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "a duration needs a unit: write `{v}s` or `{v}m`, not `{v}`"
                )))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "a duration needs a unit: write `{v}s` or `{v}m`, not `{v}`"
                )))
            }
        }
        d.deserialize_str(V)
    }
}

impl JsonSchema for Dur {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration such as `90s`, `15m`, `4h` or `1h 30m`",
            "pattern": "^\\s*[0-9]+\\s*[a-zA-Zµ]+(\\s*[0-9]+\\s*[a-zA-Zµ]+)*\\s*$"
        })
    }
}

/// Where a secret comes from: `{env: NAME}` or `{file: PATH}`. The reference itself is
/// not secret; the value it resolves to is a [`SecretString`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

/// Refuses a secret file that its group or other users may read or write (anything
/// wider than 0600): a key others can read is no longer a secret, and one they can write
/// is not the operator's.
fn check_private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "secret file {} is open to other users (mode {mode:04o}); make it private: chmod 600 {}",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

impl SecretRef {
    /// Reads the secret. `{file:}` paths were made absolute when the config was loaded.
    pub fn resolve(&self) -> Result<SecretString, String> {
        match self {
            SecretRef::Env(name) => std::env::var(name)
                .map(SecretString)
                .map_err(|_| format!("environment variable `{name}` is not set")),
            SecretRef::File(path) => {
                check_private(path)?;
                std::fs::read_to_string(path)
                    .map(|s| SecretString(s.trim_end_matches(['\n', '\r']).to_owned()))
                    .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))
            }
        }
    }

    /// The secret's value for keeping it out of records, whatever its file's mode. A
    /// secret file open to other users is refused for use ([`SecretRef::resolve`]), but
    /// a step may still print what it holds: its value is redacted all the same.
    /// `None` when it cannot be read at all.
    pub fn value_to_redact(&self) -> Option<SecretString> {
        match self {
            SecretRef::Env(_) => self.resolve().ok(),
            SecretRef::File(path) => std::fs::read_to_string(path)
                .ok()
                .map(|s| SecretString(s.trim_end_matches(['\n', '\r']).to_owned())),
        }
    }

    /// Resolves a relative `{file:}` path against `base`.
    pub fn rebase(&mut self, base: &Path) {
        if let SecretRef::File(p) = self {
            *p = crate::paths::resolve(base, p);
        }
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(n) => write!(f, "{{env: {n}}}"),
            SecretRef::File(p) => write!(f, "{{file: {}}}", p.display()),
        }
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SecretRef;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a secret reference `{env: NAME}` or `{file: PATH}`")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<SecretRef, E> {
                Err(E::custom(
                    "secrets are never written inline: use `{env: NAME}` or `{file: PATH}`",
                ))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<SecretRef, A::Error> {
                let mut found: Option<SecretRef> = None;
                while let Some(key) = a.next_key::<String>()? {
                    let value = match key.as_str() {
                        "env" => SecretRef::Env(a.next_value()?),
                        "file" => SecretRef::File(a.next_value()?),
                        other => {
                            return Err(de::Error::unknown_field(other, &["env", "file"]));
                        }
                    };
                    if found.replace(value).is_some() {
                        return Err(de::Error::custom("a secret has exactly one of `env` or `file`"));
                    }
                }
                found.ok_or_else(|| de::Error::custom("a secret needs `env: NAME` or `file: PATH`"))
            }
        }
        d.deserialize_map(V)
    }
}

impl JsonSchema for SecretRef {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SecretRef".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A secret, never written inline: `{env: NAME}` or `{file: PATH}`",
            "oneOf": [
                {"type": "object", "properties": {"env": {"type": "string"}}, "required": ["env"], "additionalProperties": false},
                {"type": "object", "properties": {"file": {"type": "string"}}, "required": ["file"], "additionalProperties": false}
            ]
        })
    }
}

/// A resolved secret value. It cannot be printed, formatted or serialized: use
/// [`SecretString::expose`] at the one place that needs the value.
#[derive(Clone)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString([redacted])")
    }
}

/// A YAML mapping kept in source order with located keys (`runs_on`, `instances`, `tiers`).
#[derive(Clone, Debug, PartialEq)]
pub struct LocMap<V>(pub Vec<(Located<String>, V)>);

impl<V> Default for LocMap<V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<V> LocMap<V> {
    pub fn get(&self, key: &str) -> Option<&V> {
        self.0.iter().find(|(k, _)| k.value == key).map(|(_, v)| v)
    }
    pub fn iter(&self) -> impl Iterator<Item = (&Located<String>, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
    pub fn keys(&self) -> impl Iterator<Item = &Located<String>> {
        self.0.iter().map(|(k, _)| k)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl<V: Serialize> Serialize for LocMap<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (&k.value, v)))
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for LocMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Vis<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Vis<V> {
            type Value = LocMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<LocMap<V>, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = a.next_key::<Located<String>>()? {
                    out.push((k, a.next_value()?));
                }
                Ok(LocMap(out))
            }
        }
        d.deserialize_map(Vis(std::marker::PhantomData))
    }
}

impl<V: JsonSchema> JsonSchema for LocMap<V> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("Map_of_{}", V::schema_name()).into()
    }
    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "object",
            "additionalProperties": g.subschema_for::<V>()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn secret_files_open_to_others_are_refused() {
        let path = std::env::temp_dir().join(format!("drover-secret-test-{}", std::process::id()));
        std::fs::write(&path, "s3cr3t-value\n").unwrap();
        let secret = SecretRef::File(path.clone());
        for mode in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = secret.resolve().map(|_| ()).unwrap_err();
            assert!(
                e.contains("open to other users") && e.contains("chmod 600"),
                "{mode:o}: {e}"
            );
            assert!(!e.contains("s3cr3t"), "{e}");
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(secret.resolve().unwrap().expose(), "s3cr3t-value", "{mode:o}");
        }
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_secret_value_never_reaches_a_debug_string_or_a_panic_message() {
        let secret = SecretString::new("canary-0c9e");
        assert_eq!(format!("{secret:?}"), "SecretString([redacted])");
        let payload = std::panic::catch_unwind(|| panic!("lost {secret:?} in {:?}", Some(&secret))).unwrap_err();
        let message = payload.downcast_ref::<String>().unwrap();
        assert!(!message.contains("canary"), "{message}");
    }

    #[test]
    fn a_secret_file_open_to_others_is_refused_for_use_but_still_redacted() {
        let path = std::env::temp_dir().join(format!("drover-secret-redact-{}", std::process::id()));
        std::fs::write(&path, "s3cr3t-value\n").unwrap();
        let secret = SecretRef::File(path.clone());
        for mode in [0o644, 0o600] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(secret.value_to_redact().unwrap().expose(), "s3cr3t-value", "{mode:o}");
        }
        std::fs::remove_file(&path).unwrap();
        assert!(secret.value_to_redact().is_none());
    }
}
