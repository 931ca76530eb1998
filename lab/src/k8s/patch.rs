//! The patch formats the simulator accepts: JSON merge patch (RFC 7386), the
//! strategic merge patch (a merge patch whose lists of named objects, such as
//! `containers` and `env`, merge by `name`, with the `$patch: delete`/`replace`
//! directives), and server-side apply (treated as a strategic merge of the applied
//! configuration, without field ownership).

use serde_json::{Map, Value};

/// RFC 7386: objects merge key by key, `null` removes a key, anything else replaces.
pub(crate) fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("an object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// A strategic merge patch: like [`merge`], except that a list of objects that all
/// have a `name` merges element by element (matched by name), an element
/// `{"name": X, "$patch": "delete"}` removes X, and an object with
/// `"$patch": "replace"` replaces instead of merging.
pub(crate) fn strategic(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if p.get("$patch").and_then(Value::as_str) == Some("replace") {
                let mut p = p.clone();
                p.remove("$patch");
                *target = Value::Object(p);
                return;
            }
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("an object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    strategic(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        Value::Array(items) if named_list(items) && target.as_array().is_some_and(|t| named_list(t)) => {
            let t = target.as_array_mut().expect("an array");
            for item in items {
                let name = item.get("name").cloned();
                let pos = t.iter().position(|e| e.get("name") == name.as_ref());
                let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                match (pos, delete) {
                    (Some(i), true) => {
                        t.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => strategic(&mut t[i], item),
                    (None, false) => {
                        let mut fresh = Value::Null;
                        strategic(&mut fresh, item);
                        t.push(fresh);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn named_list(items: &[Value]) -> bool {
    !items.is_empty() && items.iter().all(|i| i.get("name").is_some_and(Value::is_string))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        // The example of RFC 7386, section 3.
        let mut doc = json!({"title": "Goodbye!", "author": {"givenName": "John", "familyName": "Doe"},
            "tags": ["example", "sample"], "content": "This will be unchanged"});
        merge(
            &mut doc,
            &json!({"title": "Hello!", "phoneNumber": "+01-123-456-7890",
                "author": {"familyName": null}, "tags": ["example"]}),
        );
        assert_eq!(
            doc,
            json!({"title": "Hello!", "author": {"givenName": "John"}, "tags": ["example"],
                "content": "This will be unchanged", "phoneNumber": "+01-123-456-7890"})
        );
    }

    #[test]
    fn strategic_merge_merges_named_lists_by_name() {
        let mut doc = json!({"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]});
        strategic(
            &mut doc,
            &json!({"containers": [{"name": "b", "image": "b:2"}, {"name": "c", "image": "c:1"}]}),
        );
        assert_eq!(
            doc,
            json!({"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:2"}, {"name": "c", "image": "c:1"}]})
        );
        strategic(&mut doc, &json!({"containers": [{"name": "a", "$patch": "delete"}]}));
        assert_eq!(doc["containers"].as_array().unwrap().len(), 2);
        // A merge patch replaces the list instead.
        merge(&mut doc, &json!({"containers": [{"name": "z"}]}));
        assert_eq!(doc, json!({"containers": [{"name": "z"}]}));
    }
}
