//! Flattening and coercion of Currents values into Heap properties.
//!
//! Why these rules: Heap accepts only flat maps of strings (< 1024 characters) and numbers
//! (`heap-api.md` §(b), (c)); anything else is at best silently mangled by Heap and at worst
//! gets the whole bulk request refused. So every value is made Heap-shaped here, deterministically
//! and without losing more than the limits force:
//!
//! | Currents value | Heap value |
//! |---|---|
//! | string | itself, cut to 1023 characters on a character boundary |
//! | number with \|n\| < 2^53 | itself |
//! | number with \|n\| ≥ 2^53 | its JSON text, `"9007199254740993"`, `"1e+300"` (beyond ±2^53 a double loses integer precision) |
//! | `true` / `false` | `"true"` / `"false"` |
//! | `null` | dropped |
//! | array | elements joined with `\|\|` (strings as is, numbers as text, booleans as `true`/`false`, nested arrays/objects as compact JSON, nulls skipped), cut to 1023 characters; an empty result is dropped |
//! | object | flattened: `{"a":{"b":1}}` → key `a.b` |
//!
//! Keys: a key longer than 1023 characters or empty is dropped; a key equal to `id` in any
//! letter case (reserved by Heap) is renamed with a leading underscore (`id` → `_id`), and for
//! user properties it is dropped, like `user_id`. When two values end up on one key the first
//! one placed wins (see `event_properties` for the order), so Braze's own fields are never
//! overwritten by customer-defined ones.

use std::borrow::Cow;

use serde_json::{Map, Number, Value};

use super::options::MappingOptions;
use crate::heap::model::{
    MAX_KEY_CHARS, MAX_VALUE_CHARS, Properties, PropertyValue, USER_ID_BOUND,
};

/// The containers whose entries are lifted to the top level of the event properties.
pub const LIFTED_CONTAINERS: &[&str] = &["custom_properties", "purchase_properties"];

/// Separator of array elements in a joined value (Heap's own convention for arrays).
pub const ARRAY_SEPARATOR: &str = "||";

/// `s` cut to at most `max` characters, on a character boundary.
pub fn truncate_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((byte, _)) => &s[..byte],
        None => s,
    }
}

/// Whether a key fits Heap's key length limit (non-empty, fewer than 1024 characters).
pub fn key_fits(key: &str) -> bool {
    !key.is_empty() && (key.len() <= MAX_KEY_CHARS || key.chars().count() <= MAX_KEY_CHARS)
}

/// A Heap string value: `s` cut to 1023 characters.
pub fn string_value(s: &str) -> PropertyValue {
    PropertyValue::Str(truncate_chars(s, MAX_VALUE_CHARS).to_string())
}

/// A Heap number, or its text when a double could not hold it exactly.
pub fn number_value(n: &Number) -> PropertyValue {
    const SAFE: u64 = USER_ID_BOUND - 1;
    let safe = if let Some(u) = n.as_u64() {
        u <= SAFE
    } else if let Some(i) = n.as_i64() {
        i.unsigned_abs() <= SAFE
    } else {
        n.as_f64()
            .is_some_and(|f| f.is_finite() && f.abs() <= SAFE as f64)
    };
    if safe {
        PropertyValue::Num(n.clone())
    } else {
        string_value(&n.to_string())
    }
}

/// A non-object value as one Heap value; `None` for `null` and for empty arrays. Objects become
/// compact JSON (only used where flattening does not apply, e.g. `user` fields).
pub fn leaf_value(value: &Value) -> Option<PropertyValue> {
    match value {
        Value::Null => None,
        Value::Bool(b) => Some(string_value(if *b { "true" } else { "false" })),
        Value::Number(n) => Some(number_value(n)),
        Value::String(s) => Some(string_value(s)),
        Value::Array(items) => joined(items),
        Value::Object(_) => Some(string_value(&value.to_string())),
    }
}

fn joined(items: &[Value]) -> Option<PropertyValue> {
    let mut out = String::new();
    let mut any = false;
    for item in items {
        let text = match item {
            Value::Null => continue,
            Value::Bool(b) => if *b { "true" } else { "false" }.to_string(),
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            Value::Array(_) | Value::Object(_) => item.to_string(),
        };
        if any {
            out.push_str(ARRAY_SEPARATOR);
        }
        out.push_str(&text);
        any = true;
        // Nothing past the cut can show; stop copying a huge array early.
        if out.len() > 4 * MAX_VALUE_CHARS {
            break;
        }
    }
    any.then(|| string_value(&out))
}

/// Flattens `value` under the top-level `key` into `(key, value)` pairs, in key order: nested
/// objects add `.child` to the key.
pub fn flatten(key: &str, value: &Value, out: &mut Vec<(String, PropertyValue)>) {
    match value {
        Value::Object(map) => {
            // A key only grows with depth: once too long, nothing below can be kept.
            if key.chars().count() > MAX_KEY_CHARS {
                return;
            }
            for (k, v) in map {
                flatten(&format!("{key}.{k}"), v, out);
            }
        }
        other => {
            if let Some(v) = leaf_value(other) {
                out.push((key.to_string(), v));
            }
        }
    }
}

/// Places `value` on `key` unless the key is unusable, dropped by the settings or taken.
/// Returns whether the key was free (`false` lets the caller try another key).
pub fn place(map: &mut Properties, key: &str, value: PropertyValue, opts: &MappingOptions) -> bool {
    if !key_fits(key) || opts.drops(key) {
        return true;
    }
    let key = if key.eq_ignore_ascii_case("id") {
        format!("_{key}")
    } else {
        key.to_string()
    };
    if opts.drops(&key) {
        return true;
    }
    if map.contains_key(&key) {
        return false;
    }
    map.insert(key, value);
    true
}

/// The event properties of one event, in precedence order:
///
/// 1. `braze_event_type`, `braze_event_id`, `braze_user_id`, `braze_device_id`,
///    `braze_timezone` (the last three when present in `user`);
/// 2. Braze's own `properties` fields, flattened;
/// 3. the entries of `custom_properties` then `purchase_properties` (an object, or a string
///    holding a JSON object), lifted to the top level; an entry whose key is already taken is
///    kept under its un-lifted key instead (`custom_properties.name`).
///
/// The drop list applies to the final keys of all three.
pub fn event_properties(
    event_type: &str,
    event_id: &str,
    user: Option<&Map<String, Value>>,
    properties: Option<&Map<String, Value>>,
    opts: &MappingOptions,
) -> Properties {
    let mut map = Properties::new();
    place(&mut map, "braze_event_type", string_value(event_type), opts);
    place(&mut map, "braze_event_id", string_value(event_id), opts);
    for (field, key) in [
        ("user_id", "braze_user_id"),
        ("device_id", "braze_device_id"),
        ("timezone", "braze_timezone"),
    ] {
        if let Some(v) = user.and_then(|u| u.get(field)).and_then(leaf_value) {
            place(&mut map, key, v, opts);
        }
    }
    let Some(properties) = properties else {
        return map;
    };
    let mut pairs = Vec::new();
    for (k, v) in properties {
        if !(LIFTED_CONTAINERS.contains(&k.as_str()) && lifted_object(v).is_some()) {
            flatten(k, v, &mut pairs);
        }
    }
    for (k, v) in pairs.drain(..) {
        place(&mut map, &k, v, opts);
    }
    for container in LIFTED_CONTAINERS {
        let Some(entries) = properties.get(*container).and_then(lifted_object) else {
            continue;
        };
        for (k, v) in entries.iter() {
            flatten(k, v, &mut pairs);
        }
        for (k, v) in pairs.drain(..) {
            if !place(&mut map, &k, v.clone(), opts) {
                place(&mut map, &format!("{container}.{k}"), v, opts);
            }
        }
    }
    map
}

/// The object to lift out of a container: the container itself, or the JSON object a string
/// container holds (the Avro export's encoding). Anything else is flattened like any field.
fn lifted_object(value: &Value) -> Option<Cow<'_, Map<String, Value>>> {
    match value {
        Value::Object(map) => Some(Cow::Borrowed(map)),
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(map)) => Some(Cow::Owned(map)),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn props(event: Value, opts: &MappingOptions) -> Value {
        let map = event_properties(
            "t",
            "i",
            event.get("user").and_then(Value::as_object),
            event.get("properties").and_then(Value::as_object),
            opts,
        );
        serde_json::to_value(map).unwrap()
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_chars("héllo", 2), "hé");
        assert_eq!(truncate_chars("hé", 5), "hé");
        assert_eq!(truncate_chars("", 0), "");
        let s = format!("{}€€", "a".repeat(1022));
        assert_eq!(
            string_value(&s),
            PropertyValue::Str(format!("{}€", "a".repeat(1022)))
        );
    }

    #[test]
    fn leaf_coercions() {
        let v = |j: Value| serde_json::to_value(leaf_value(&j)).unwrap();
        assert_eq!(v(json!(true)), json!("true"));
        assert_eq!(v(json!(false)), json!("false"));
        assert_eq!(v(json!(null)), json!(null));
        assert_eq!(v(json!(3.25)), json!(3.25));
        assert_eq!(v(json!(-9007199254740991i64)), json!(-9007199254740991i64));
        assert_eq!(v(json!(9007199254740992u64)), json!("9007199254740992"));
        assert_eq!(v(json!(-9007199254740992i64)), json!("-9007199254740992"));
        assert_eq!(v(json!(u64::MAX)), json!("18446744073709551615"));
        assert_eq!(v(json!(1e300)), json!("1e+300"));
        assert_eq!(
            v(json!(["a", 1, true, null, [2, "x"], {"k": null}])),
            json!("a||1||true||[2,\"x\"]||{\"k\":null}")
        );
        assert_eq!(v(json!([])), json!(null));
        assert_eq!(v(json!([null])), json!(null));
        let long: Vec<String> = (0..2000).map(|i| format!("{i}")).collect();
        let joined = leaf_value(&json!(long)).unwrap();
        let PropertyValue::Str(s) = joined else {
            panic!()
        };
        assert_eq!(s.chars().count(), 1023);
        assert!(s.starts_with("0||1||2"));
    }

    #[test]
    fn flattening_lifting_and_metadata() {
        let event = json!({
            "user": {"user_id": "b1", "device_id": "d1", "timezone": "UTC", "external_user_id": "x"},
            "properties": {
                "name": "Added", "nested": {"a": {"b": 1}, "empty": {}}, "flag": false, "gone": null,
                "custom_properties": {"plan": "pro", "name": "shadowed", "deep": {"k": [1, 2]}},
                "purchase_properties": {"plan": "also taken", "sku": "s-1"}
            }
        });
        assert_eq!(
            props(event, &MappingOptions::default()),
            json!({
                "braze_event_type": "t", "braze_event_id": "i", "braze_user_id": "b1",
                "braze_device_id": "d1", "braze_timezone": "UTC",
                "name": "Added", "nested.a.b": 1, "flag": "false",
                "plan": "pro", "custom_properties.name": "shadowed", "deep.k": "1||2",
                "purchase_properties.plan": "also taken", "sku": "s-1"
            })
        );
    }

    #[test]
    fn string_containers_are_lifted_and_other_shapes_kept() {
        let event = json!({"properties": {
            "custom_properties": "{\"plan\":\"pro\"}",
            "purchase_properties": "not json"
        }});
        let out = props(event, &MappingOptions::default());
        assert_eq!(out["plan"], json!("pro"));
        assert_eq!(out["purchase_properties"], json!("not json"));
        assert!(out.get("custom_properties").is_none());
    }

    #[test]
    fn keys_reserved_empty_too_long_and_dropped() {
        let long = "k".repeat(1024);
        let ok = "k".repeat(1023);
        let event = json!({
            "user": {"device_id": "d"},
            "properties": {"id": 1, "ID": 2, "": "empty", long.clone(): 3, ok.clone(): 4,
                "email_address": "a@b", "custom_properties": {"Id": 5, "id": "shadowed", "": 6}}
        });
        let drop = ["email_address".to_string(), "braze_device_id".to_string()];
        let opts = MappingOptions::from_parts(None, None, None, &[], &[], &drop).unwrap();
        let out = props(event, &opts);
        assert_eq!(out["_id"], json!(1));
        assert_eq!(out["_ID"], json!(2));
        assert_eq!(out["_Id"], json!(5));
        assert_eq!(out["custom_properties.id"], json!("shadowed"));
        assert_eq!(out[ok.as_str()], json!(4));
        assert!(out.get(long.as_str()).is_none());
        assert!(out.get("").is_none());
        assert!(out.get("email_address").is_none());
        assert!(out.get("braze_device_id").is_none());
    }

    #[test]
    fn metadata_wins_over_same_named_properties() {
        let event = json!({"properties": {"braze_event_type": "spoof", "custom_properties": {"braze_event_id": "spoof"}}});
        let out = props(event, &MappingOptions::default());
        assert_eq!(out["braze_event_type"], json!("t"));
        assert_eq!(out["braze_event_id"], json!("i"));
        assert_eq!(out["custom_properties.braze_event_id"], json!("spoof"));
    }

    #[test]
    fn empty_keys_inside_objects_keep_their_dot() {
        let out = props(
            json!({"properties": {"": {"a": 1}, "b": {"": 2}}}),
            &MappingOptions::default(),
        );
        assert_eq!(out[".a"], json!(1));
        assert_eq!(out["b."], json!(2));
    }

    #[test]
    fn deep_keys_stop_at_the_key_limit() {
        let mut v = json!("leaf");
        for _ in 0..120 {
            v = json!({ "abcdefghij": v });
        }
        let mut out = Vec::new();
        flatten("root", &v, &mut out);
        assert!(out.is_empty(), "a 1300-character key cannot be kept");
    }
}
