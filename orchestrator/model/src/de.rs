//! Phase two of loading: typed values read from the located tree.
//!
//! [`from_node`] drives any `serde::Deserialize` type from a [`Located<Node>`]. Every
//! error carries the location of the node it was raised at: a type error at the value,
//! an unknown field at its key, a missing field at the mapping that lacks it.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, Visitor};

use crate::diag::{Issue, Location};
use crate::node::{LOCATED_TOKEN, Located, Node};

/// A deserialization error, located once it has passed through a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeError {
    pub loc: Option<Location>,
    pub message: String,
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            loc: None,
            message: msg.to_string(),
        }
    }
}

impl DeError {
    fn at(mut self, loc: Location) -> Self {
        self.loc.get_or_insert(loc);
        self
    }

    /// As an [`Issue`], falling back to `fallback` for the (rare) unlocated error.
    pub fn into_issue(self, fallback: Location) -> Issue {
        Issue::new(self.loc.unwrap_or(fallback), self.message)
    }
}

/// Reads a `T` from a located node.
pub fn from_node<'de, T: serde::Deserialize<'de>>(node: &Located<Node>) -> Result<T, DeError> {
    T::deserialize(NodeDe { node }).map_err(|e| e.at(node.loc))
}

/// A `serde::Deserializer` over one located node.
#[derive(Debug, Clone, Copy)]
pub struct NodeDe<'a> {
    node: &'a Located<Node>,
}

impl<'a> NodeDe<'a> {
    pub fn new(node: &'a Located<Node>) -> Self {
        Self { node }
    }
}

macro_rules! located {
    ($self:ident, $body:expr) => {{
        let loc = $self.node.loc;
        ($body).map_err(|e: DeError| e.at(loc))
    }};
}

impl<'de> Deserializer<'de> for NodeDe<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        located!(
            self,
            match &self.node.value {
                Node::Null => v.visit_unit(),
                Node::Bool(b) => v.visit_bool(*b),
                Node::Int(i) => v.visit_i64(*i),
                Node::UInt(u) => v.visit_u64(*u),
                Node::Float(f) => v.visit_f64(*f),
                Node::Str(s) => v.visit_str(s),
                Node::Seq(items) => v.visit_seq(SeqDe {
                    iter: items.iter(),
                    index: 0,
                }),
                Node::Map(entries) => v.visit_map(MapDe {
                    iter: entries.iter(),
                    value: None,
                }),
            }
        )
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        located!(
            self,
            match &self.node.value {
                Node::Null => v.visit_none(),
                _ => v.visit_some(self),
            }
        )
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        located!(
            self,
            match &self.node.value {
                Node::Null => v.visit_unit(),
                _ => self.deserialize_any(v),
            }
        )
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        // `command: [sleep, 1]`: a plain scalar is text where text is expected.
        located!(
            self,
            match &self.node.value {
                Node::Bool(b) => v.visit_string(b.to_string()),
                Node::Int(i) => v.visit_string(i.to_string()),
                Node::UInt(u) => v.visit_string(u.to_string()),
                Node::Float(f) => v.visit_string(f.to_string()),
                _ => self.deserialize_any(v),
            }
        )
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        // `steps:` with nothing after it is an empty list, not an error.
        located!(
            self,
            match &self.node.value {
                Node::Null => v.visit_seq(SeqDe {
                    iter: [].iter(),
                    index: 0,
                }),
                _ => self.deserialize_any(v),
            }
        )
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        located!(
            self,
            match &self.node.value {
                Node::Null => v.visit_map(MapDe {
                    iter: [].iter(),
                    value: None,
                }),
                _ => self.deserialize_any(v),
            }
        )
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        // serde's derived structs also accept a list of their fields in order; in YAML
        // that only turns "this should be a mapping" into a baffling message.
        if let Node::Seq(_) = &self.node.value {
            let e: DeError = de::Error::invalid_type(de::Unexpected::Seq, &v);
            return Err(e.at(self.node.loc));
        }
        self.deserialize_map(v)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, name: &'static str, v: V) -> Result<V::Value, DeError> {
        if name == LOCATED_TOKEN {
            located!(
                self,
                v.visit_seq(LocatedSeq {
                    node: self.node,
                    pos: 0
                })
            )
        } else {
            located!(self, v.visit_newtype_struct(self))
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        located!(
            self,
            match &self.node.value {
                Node::Str(s) => v.visit_enum(s.as_str().into_deserializer()),
                Node::Map(entries) if entries.len() == 1 => v.visit_enum(EnumDe {
                    key: &entries[0].0,
                    value: &entries[0].1,
                }),
                other => Err(de::Error::custom(format!(
                    "expected a name or a single-key mapping, found {}",
                    other.describe()
                ))),
            }
        )
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char
        bytes byte_buf unit_struct tuple tuple_struct identifier ignored_any
    }
}

struct LocatedSeq<'a> {
    node: &'a Located<Node>,
    pos: u8,
}

impl<'de> de::SeqAccess<'de> for LocatedSeq<'_> {
    type Error = DeError;
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, DeError> {
        self.pos += 1;
        match self.pos {
            1 => seed.deserialize(self.node.loc.line.into_deserializer()).map(Some),
            2 => seed.deserialize(self.node.loc.col.into_deserializer()).map(Some),
            3 => seed.deserialize(NodeDe { node: self.node }).map(Some),
            _ => Ok(None),
        }
    }
}

struct SeqDe<'a> {
    iter: std::slice::Iter<'a, Located<Node>>,
    index: usize,
}

impl<'de> de::SeqAccess<'de> for SeqDe<'_> {
    type Error = DeError;
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, DeError> {
        match self.iter.next() {
            Some(node) => {
                self.index += 1;
                seed.deserialize(NodeDe { node }).map(Some).map_err(|e| e.at(node.loc))
            }
            None => Ok(None),
        }
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

struct MapDe<'a> {
    iter: std::slice::Iter<'a, (Located<String>, Located<Node>)>,
    value: Option<&'a Located<Node>>,
}

impl<'de> de::MapAccess<'de> for MapDe<'_> {
    type Error = DeError;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, DeError> {
        match self.iter.next() {
            Some((k, v)) => {
                self.value = Some(v);
                seed.deserialize(KeyDe { key: k }).map(Some).map_err(|e| e.at(k.loc))
            }
            None => Ok(None),
        }
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let node = self
            .value
            .take()
            .ok_or_else(|| <DeError as de::Error>::custom("value requested before key"))?;
        seed.deserialize(NodeDe { node }).map_err(|e| e.at(node.loc))
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

/// A mapping key: a string, with its location.
struct KeyDe<'a> {
    key: &'a Located<String>,
}

impl<'de> Deserializer<'de> for KeyDe<'_> {
    type Error = DeError;
    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_str(&self.key.value).map_err(|e: DeError| e.at(self.key.loc))
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(self, name: &'static str, v: V) -> Result<V::Value, DeError> {
        if name == LOCATED_TOKEN {
            let node = Located::new(self.key.loc, Node::Str(self.key.value.clone()));
            v.visit_seq(LocatedSeq { node: &node, pos: 0 })
        } else {
            v.visit_newtype_struct(self)
        }
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

struct EnumDe<'a> {
    key: &'a Located<String>,
    value: &'a Located<Node>,
}

impl<'de, 'a> de::EnumAccess<'de> for EnumDe<'a> {
    type Error = DeError;
    type Variant = NodeDe<'a>;
    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, NodeDe<'a>), DeError> {
        let variant = seed
            .deserialize(KeyDe { key: self.key })
            .map_err(|e| e.at(self.key.loc))?;
        Ok((variant, NodeDe { node: self.value }))
    }
}

impl<'de> de::VariantAccess<'de> for NodeDe<'_> {
    type Error = DeError;
    fn unit_variant(self) -> Result<(), DeError> {
        match &self.node.value {
            Node::Null => Ok(()),
            other => Err(DeError {
                loc: Some(self.node.loc),
                message: format!("expected no value, found {}", other.describe()),
            }),
        }
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(self)
    }
    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, DeError> {
        self.deserialize_any(v)
    }
    fn struct_variant<V: Visitor<'de>>(self, _fields: &'static [&'static str], v: V) -> Result<V::Value, DeError> {
        self.deserialize_any(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::parse_yaml;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct S {
        name: Located<String>,
        n: u32,
        #[serde(default)]
        list: Vec<Located<u32>>,
        opt: Option<String>,
    }

    fn err(src: &str) -> (Location, String) {
        let node = parse_yaml(src).unwrap();
        let e = from_node::<S>(&node).unwrap_err();
        (e.loc.unwrap(), e.message)
    }

    #[test]
    fn reads_located_values() {
        let node = parse_yaml("name: a\nn: 3\nlist: [1, 2]\n").unwrap();
        let s: S = from_node(&node).unwrap();
        assert_eq!(s.name.loc, Location::new(1, 7));
        assert_eq!(s.list[1].loc, Location::new(3, 11));
        assert_eq!(s.opt, None);
    }

    #[test]
    fn errors_point_at_the_culprit() {
        assert_eq!(err("name: a\nn: x\n").0, Location::new(2, 4));
        let (loc, msg) = err("name: a\nn: 1\nbogus: 2\n");
        assert_eq!(loc, Location::new(3, 1));
        assert!(msg.starts_with("unknown field `bogus`"), "{msg}");
        let (loc, msg) = err("x: 1\n");
        assert_eq!(loc, Location::new(1, 1));
        assert!(msg.starts_with("unknown field `x`"), "{msg}");
        let (loc, msg) = err("name: a\n");
        assert_eq!((loc, msg.as_str()), (Location::new(1, 1), "missing field `n`"));
        assert_eq!(err("name: a\nn: 1\nlist: [1, -2]\n").0, Location::new(3, 11));
        assert_eq!(
            err("- a\n- 1\n"),
            (
                Location::new(1, 1),
                "invalid type: sequence, expected struct S".to_owned()
            )
        );
    }
}
