//! The located YAML tree: phase one of loading.
//!
//! A file is parsed once (with serde-saphyr, which reports syntax errors with their
//! position) into a [`Node`] tree where every value knows its [`Location`]. Typed values
//! are then read from the tree by [`crate::de`], so every type error, unknown field or
//! missing field points at the node it concerns, and a broken list element does not hide
//! the errors in its siblings.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Serialize, Serializer};

use crate::diag::{Issue, Location};

/// Name under which [`Located`] asks a deserializer for its position. The node
/// deserializer answers with `(line, col, value)`; serde-saphyr is asked through its
/// own `Spanned` wrapper.
pub(crate) const LOCATED_TOKEN: &str = "$drover::Located";

/// A value with the position where it was written.
///
/// Equality, ordering and hashing look at the value only.
#[derive(Clone)]
pub struct Located<T> {
    pub loc: Location,
    pub value: T,
}

impl<T: Copy> Copy for Located<T> {}

impl<T> Located<T> {
    pub const fn new(loc: Location, value: T) -> Self {
        Self { loc, value }
    }

    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Located<U> {
        Located {
            loc: self.loc,
            value: f(self.value),
        }
    }
}

impl Located<String> {
    pub fn as_str(&self) -> &str {
        &self.value
    }
}

impl<T> Deref for Located<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: fmt::Debug> fmt::Debug for Located<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value.fmt(f)
    }
}

impl<T: fmt::Display> fmt::Display for Located<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value.fmt(f)
    }
}

impl<T: PartialEq> PartialEq for Located<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}
impl<T: Eq> Eq for Located<T> {}
impl<T: std::hash::Hash> std::hash::Hash for Located<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.value.hash(state)
    }
}
impl<T: PartialOrd> PartialOrd for Located<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.value.partial_cmp(&other.value)
    }
}
impl<T: Ord> Ord for Located<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.value.cmp(&other.value)
    }
}

impl<T: Serialize> Serialize for Located<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

impl<T: JsonSchema> JsonSchema for Located<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }
    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Located<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Located<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value")
            }
            // serde-saphyr (the reference loader of the tests): its span-aware wrapper.
            #[cfg(test)]
            fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                let s = serde_saphyr::Spanned::<T>::deserialize(d)?;
                let loc = Location::new(
                    u32::try_from(s.referenced.line()).unwrap_or(u32::MAX),
                    u32::try_from(s.referenced.column()).unwrap_or(u32::MAX),
                );
                Ok(Located::new(loc, s.value))
            }
            // The node deserializer: (line, col, value).
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let line: u32 = a.next_element()?.ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let col: u32 = a.next_element()?.ok_or_else(|| de::Error::invalid_length(1, &self))?;
                let value: T = a.next_element()?.ok_or_else(|| de::Error::invalid_length(2, &self))?;
                Ok(Located::new(Location::new(line, col), value))
            }
        }
        d.deserialize_newtype_struct(LOCATED_TOKEN, V(PhantomData))
    }
}

/// A YAML value with located children: what `with:` parameters are kept as.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    Null,
    Bool(bool),
    Int(i64),
    /// An unsigned integer above `i64::MAX`.
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Located<Node>>),
    Map(Vec<(Located<String>, Located<Node>)>),
}

impl Node {
    /// What kind of value this is, for messages.
    pub fn describe(&self) -> &'static str {
        match self {
            Node::Null => "null",
            Node::Bool(_) => "a boolean",
            Node::Int(_) | Node::UInt(_) => "an integer",
            Node::Float(_) => "a number",
            Node::Str(_) => "a string",
            Node::Seq(_) => "a list",
            Node::Map(_) => "a mapping",
        }
    }

    /// A mapping key as text: a plain value (`1`, `true`, `null` become their text);
    /// a list or mapping is given back.
    pub(crate) fn into_key(self) -> Result<String, Node> {
        Ok(match self {
            Node::Str(s) => s,
            Node::Int(i) => i.to_string(),
            Node::UInt(u) => u.to_string(),
            Node::Bool(b) => b.to_string(),
            Node::Float(f) => f.to_string(),
            Node::Null => "null".to_owned(),
            other => return Err(other),
        })
    }
}

impl Located<Node> {
    /// The value under `key` when this is a mapping.
    pub fn get(&self, key: &str) -> Option<&Located<Node>> {
        match &self.value {
            Node::Map(entries) => entries.iter().find(|(k, _)| k.value == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The located key `key` when this is a mapping.
    pub fn key(&self, key: &str) -> Option<&Located<String>> {
        match &self.value {
            Node::Map(entries) => entries.iter().find(|(k, _)| k.value == key).map(|(k, _)| k),
            _ => None,
        }
    }

    /// A copy of this mapping without the given keys (used to check a document's
    /// scalar fields separately from its lists).
    pub fn without_keys(&self, keys: &[&str]) -> Located<Node> {
        match &self.value {
            Node::Map(entries) => Located::new(
                self.loc,
                Node::Map(
                    entries
                        .iter()
                        .filter(|(k, _)| !keys.contains(&k.value.as_str()))
                        .cloned()
                        .collect(),
                ),
            ),
            _ => self.clone(),
        }
    }

    /// An empty mapping at `loc` (the default of `with:`).
    pub fn empty_map(loc: Location) -> Self {
        Located::new(loc, Node::Map(Vec::new()))
    }

    /// Converts to JSON (for handing parameters to external plugins and recording them).
    pub fn to_json(&self) -> serde_json::Value {
        match &self.value {
            Node::Null => serde_json::Value::Null,
            Node::Bool(b) => (*b).into(),
            Node::Int(i) => (*i).into(),
            Node::UInt(u) => (*u).into(),
            Node::Float(f) => serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into),
            Node::Str(s) => s.clone().into(),
            Node::Seq(items) => items.iter().map(Located::to_json).collect(),
            Node::Map(entries) => entries.iter().map(|(k, v)| (k.value.clone(), v.to_json())).collect(),
        }
    }
}

impl Serialize for Node {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            Node::Null => s.serialize_unit(),
            Node::Bool(b) => s.serialize_bool(*b),
            Node::Int(i) => s.serialize_i64(*i),
            Node::UInt(u) => s.serialize_u64(*u),
            Node::Float(f) => s.serialize_f64(*f),
            Node::Str(v) => s.serialize_str(v),
            Node::Seq(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for i in items {
                    seq.serialize_element(&i.value)?;
                }
                seq.end()
            }
            Node::Map(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(&k.value, &v.value)?;
                }
                map.end()
            }
        }
    }
}

impl JsonSchema for Node {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Parameters".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        schemars::json_schema!({
            "description": "Action parameters: see the action reference",
            "type": "object"
        })
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
                Node::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
                Ok(Node::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
                Ok(Node::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
                Ok(i64::try_from(v).map_or(Node::UInt(v), Node::Int))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Node, E> {
                i64::try_from(v)
                    .map(Node::Int)
                    .map_err(|_| E::custom(format!("integer {v} is too large")))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
                u64::try_from(v)
                    .map(|v| self.visit_u64::<E>(v).unwrap_or(Node::UInt(v)))
                    .map_err(|_| E::custom(format!("integer {v} is too large")))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
                Ok(Node::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Node, E> {
                Ok(Node::Str(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Node, E> {
                Ok(Node::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(x) = a.next_element::<Located<Node>>()? {
                    items.push(x);
                }
                Ok(Node::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
                let mut entries: Vec<(Located<String>, Located<Node>)> = Vec::new();
                while let Some(k) = a.next_key::<Located<Node>>()? {
                    let key = k.value.into_key().map_err(|other| {
                        de::Error::custom(format!(
                            "mapping keys must be plain values, found {} at {}",
                            other.describe(),
                            k.loc
                        ))
                    })?;
                    let v = a.next_value::<Located<Node>>()?;
                    entries.push((Located::new(k.loc, key), v));
                }
                Ok(Node::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses one YAML document into a located tree. An empty document is an empty mapping.
/// What a value means, and the limits on hostile files: [`crate::yaml`]. A panic of the
/// parser (none is known; the fuzz targets count them) is an error of the file, not of
/// drover.
pub fn parse_yaml(src: &str) -> Result<Located<Node>, Issue> {
    std::panic::catch_unwind(|| crate::yaml::parse(src))
        .unwrap_or_else(|_| Err(Issue::new(Location::new(1, 1), "the YAML parser failed on this file")))
}

/// The serde-saphyr loader drover used before [`crate::yaml`], kept as the reference of
/// the differential test (`yaml::tests`).
#[cfg(test)]
pub(crate) mod reference {
    use super::*;

    /// Largest input accepted, to bound memory on hostile files.
    const MAX_INPUT: usize = 16 * 1024 * 1024;

    /// Most YAML values (scalars, lists and mappings) in one file, to bound memory: a CMDB
    /// of 100,000 CIs fits. serde-saphyr's default (250,000) stops at about 19,000 CIs.
    const MAX_NODES: usize = 2_000_000;

    /// The loader before `crate::yaml`: serde-saphyr with a `Spanned` per value.
    pub(crate) fn parse_yaml_serde_saphyr(src: &str) -> Result<Located<Node>, Issue> {
        if src.len() > MAX_INPUT {
            return Err(Issue::new(Location::new(1, 1), "file is larger than 16 MiB"));
        }
        let options = serde_saphyr::options! {
            strict_booleans: true,
            with_snippet: false,
            budget: serde_saphyr::budget! {
                max_nodes: MAX_NODES,
                max_events: 3 * MAX_NODES,
            },
        };
        let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            serde_saphyr::from_str_with_options::<Located<Node>>(src, options)
        }));
        match parsed {
            Ok(Ok(node)) => Ok(match node.value {
                Node::Null => Located::empty_map(Location::new(1, 1)),
                _ => node,
            }),
            Ok(Err(e)) => {
                let loc = e
                    .location()
                    .map(|l| {
                        Location::new(
                            u32::try_from(l.line()).unwrap_or(u32::MAX).max(1),
                            u32::try_from(l.column()).unwrap_or(u32::MAX).max(1),
                        )
                    })
                    .unwrap_or(Location::new(1, 1));
                Err(Issue::new(loc, clean_message(&e.to_string())))
            }
            Err(_) => Err(Issue::new(Location::new(1, 1), "the YAML parser failed on this file")),
        }
    }

    /// serde-saphyr's messages start with `error: line L column C: `; the location is
    /// printed by us, so strip it.
    fn clean_message(msg: &str) -> String {
        let first = msg.lines().next().unwrap_or(msg);
        let m = first.strip_prefix("error: ").unwrap_or(first);
        let m = match m.strip_prefix("line ") {
            Some(rest) => match rest.find(": ") {
                Some(i) if rest[..i].contains("column") => &rest[i + 2..],
                _ => m,
            },
            None => m,
        };
        let m = match m.rfind(" at line ") {
            Some(i) if m[i..].contains(", column ") => &m[..i],
            _ => m,
        };
        let m = match m.strip_prefix("budget breached: ") {
            Some(what) => return format!("the file exceeds a limit of the YAML parser: {what}"),
            None => m,
        };
        // Advice meant for programmers using serde-saphyr, not for our users.
        let m = m
            .strip_suffix(", set DuplicateKeyPolicy in Options if acceptable")
            .unwrap_or(m);
        m.trim().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_nodes() {
        let n = parse_yaml("a: 1\nb:\n  - x\n  - {c: 15m}\n").unwrap();
        assert_eq!(n.get("a").unwrap().loc, Location::new(1, 4));
        let Node::Seq(items) = &n.get("b").unwrap().value else {
            panic!()
        };
        assert_eq!(items[1].get("c").unwrap().loc, Location::new(4, 9));
        assert_eq!(n.key("b").unwrap().loc, Location::new(2, 1));
    }

    #[test]
    fn syntax_error_is_located_and_clean() {
        let e = parse_yaml("a: [1, 2\n").unwrap_err();
        assert_eq!(e.loc, Location::new(1, 4));
        assert_eq!(e.message, "unclosed bracket '['");
    }

    #[test]
    fn yaml11_booleans_are_strings() {
        let n = parse_yaml("y: no\n").unwrap();
        assert_eq!(n.get("y").unwrap().value, Node::Str("no".into()));
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let e = parse_yaml("a: 1\na: 2\n").unwrap_err();
        assert_eq!(e.loc, Location::new(2, 1));
        assert_eq!(e.message, "duplicate mapping key: a");
    }

    #[test]
    fn large_files_parse() {
        // More values than serde-saphyr's default budget allows (a CMDB of ~25,000 CIs).
        let src = format!("[{}]", "1,".repeat(260_000));
        let Node::Seq(items) = parse_yaml(&src).unwrap().value else {
            panic!()
        };
        assert_eq!(items.len(), 260_000);
    }

    #[test]
    fn empty_document_is_empty_map() {
        assert_eq!(parse_yaml("").unwrap().value, Node::Map(vec![]));
        assert_eq!(parse_yaml("# only a comment\n").unwrap().value, Node::Map(vec![]));
    }
}
