//! Reading a stored event's `user` and `properties` value by value, so that one value Heap
//! cannot take costs that value only, never the event.
//!
//! Why: ingest checks only an event's structure (product.md §3), acknowledges it and stores its
//! exact bytes; the mapping reads them later. Some valid JSON has no Heap form and no
//! `serde_json::Value` form either: a number beyond the range of a double (`1e999`), a string
//! holding a `\u` escape of a lone UTF-16 surrogate (`"\ud800"`), or nesting so deep that a
//! recursive reader would have to give up (serde_json stops at 128 levels rather than overflow
//! its stack). Reading the whole event as one `Value` fails on any of them, and an event Braze
//! was already told is safe would be skipped whole for one odd property. So objects and arrays
//! are walked here one level at a time (serde_json skips what it does not parse without
//! recursion, so the walk never depends on the depth of the input), down to [`MAX_DEPTH`]
//! levels, and only what cannot be read is left out, each time with a [`DropReason`] that
//! `serve` counts (`currents_heap_properties_dropped_total`) and `transform` prints.

use std::fmt;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::properties::truncate_chars;
use crate::currents::object_entries;

/// Levels of objects and arrays, `properties` (or `user`) itself being level 1: in
/// `{"properties": {"a": {"b": [1]}}}` the array is at level 3. An object or array at a deeper
/// level is left out whole ([`DropReason::TooDeep`]). Real Braze events nest 3 or 4 levels;
/// every level adds a dotted component to a Heap key, which may not exceed 1023 characters.
pub const MAX_DEPTH: usize = 32;

/// Why a value was left out of a mapped event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// A number beyond the range of a 64-bit double, such as `1e999`: neither Heap nor JSON
    /// parsers can hold it (no Heap number is infinite).
    NonFiniteNumber,
    /// A string with a `\u` escape of a lone UTF-16 surrogate (`"\ud800"`): valid JSON syntax,
    /// but no Unicode text. An object with such a key is left out whole.
    InvalidString,
    /// An object or array at a nesting level beyond [`MAX_DEPTH`].
    TooDeep,
}

impl DropReason {
    /// Every reason, in [`DROP_REASONS`] order.
    pub const ALL: [DropReason; 3] = [
        DropReason::NonFiniteNumber,
        DropReason::InvalidString,
        DropReason::TooDeep,
    ];

    /// The metric label / log value.
    pub fn as_str(&self) -> &'static str {
        match self {
            DropReason::NonFiniteNumber => "non_finite_number",
            DropReason::InvalidString => "invalid_string",
            DropReason::TooDeep => "too_deep",
        }
    }

    /// When a value is dropped for this reason (for `docs/MAPPING.md`).
    pub fn describe(&self) -> String {
        match self {
            DropReason::NonFiniteNumber => {
                "a number beyond the range of a 64-bit double, such as `1e999` or `-1e400` (Heap numbers are finite)".into()
            }
            DropReason::InvalidString => {
                "a string holding a `\\u` escape of a lone UTF-16 surrogate, such as `\"\\ud800\"` (valid JSON syntax, but not text); an object with such a key is dropped whole".into()
            }
            DropReason::TooDeep => format!(
                "an object or array at a nesting level beyond {MAX_DEPTH}; it is dropped whole, with everything below it"
            ),
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every [`DropReason::as_str`] value: the bounded `reason` label set of the drop metric.
pub const DROP_REASONS: &[&str] = &["non_finite_number", "invalid_string", "too_deep"];

/// One value left out of a mapped event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DroppedValue {
    /// Where it was: `properties.a.b`, `properties.list[2]`, `user.device_id` (cut to
    /// [`MAX_PATH_CHARS`] characters, ending in `…` when cut).
    pub path: String,
    pub reason: DropReason,
}

/// Longest [`DroppedValue::path`], in characters: keys can be long, and the path only helps a
/// human find the value.
pub const MAX_PATH_CHARS: usize = 200;

/// Reads values, remembering what it left out.
#[derive(Debug, Default)]
pub struct Reader {
    pub dropped: Vec<DroppedValue>,
}

impl Reader {
    /// `raw` as an object without its unreadable values; `None` when `raw` is not an object
    /// (or its keys cannot be read, which is recorded under `path`).
    pub fn object(&mut self, raw: &RawValue, path: &str) -> Option<Map<String, Value>> {
        if !raw.get().starts_with('{') {
            return None;
        }
        // Nearly every event holds nothing unreadable: one serde_json pass reads it, giving the
        // very map the walk below would build (same order, a repeated key keeps its last value).
        if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(raw.get())
            && map.values().all(|v| nests_within(v, MAX_DEPTH - 1))
        {
            return Some(map);
        }
        self.walk_object(raw, path)
    }

    /// [`Reader::object`] without its shortcut: the level-by-level walk.
    fn walk_object(&mut self, raw: &RawValue, path: &str) -> Option<Map<String, Value>> {
        match self.value(raw, 0, &mut path.to_owned())? {
            Value::Object(map) => Some(map),
            _ => None,
        }
    }

    /// Only the fields `keys` of the object `raw`, each read like [`Reader::object`] reads a
    /// value; other fields are not looked at (so nothing in them is counted as dropped).
    pub fn fields(
        &mut self,
        raw: &RawValue,
        keys: &[&str],
        path: &str,
    ) -> Option<Map<String, Value>> {
        if !raw.get().starts_with('{') {
            return None;
        }
        let Ok(entries) = object_entries(raw.get()) else {
            self.drop(path, DropReason::InvalidString);
            return None;
        };
        let mut map = Map::new();
        let mut path = path.to_owned();
        for (key, value) in entries {
            if !keys.contains(&key.as_ref()) {
                continue;
            }
            let len = push_key(&mut path, &key);
            if let Some(v) = self.value(value, 1, &mut path) {
                map.insert(key.into_owned(), v);
            }
            path.truncate(len);
        }
        Some(map)
    }

    /// `raw`, nested in `depth` objects and arrays, with every unreadable part left out;
    /// `None` when `raw` itself is left out, or is an object or array that only held values
    /// left out (`[1e999]`, or the shell above a too-deep value: `[[[…]]]` must not become
    /// `"[[[]]]"`).
    ///
    /// `path` names `raw` (for [`DroppedValue::path`]); it is extended in place for the children
    /// and restored, so reading allocates no path per value.
    fn value(&mut self, raw: &RawValue, depth: usize, path: &mut String) -> Option<Value> {
        let text = raw.get();
        match text.as_bytes().first() {
            Some(b'{' | b'[') if depth >= MAX_DEPTH => {
                self.drop(path, DropReason::TooDeep);
                None
            }
            Some(b'{') => {
                let Ok(entries) = object_entries(text) else {
                    self.drop(path, DropReason::InvalidString);
                    return None;
                };
                let mut map = Map::new();
                let mut lost = false;
                for (key, value) in entries {
                    let len = push_key(path, &key);
                    let read = self.value(value, depth + 1, path);
                    path.truncate(len);
                    // Like serde_json's own `Value`: a repeated key keeps its last value.
                    match read {
                        Some(v) => {
                            map.insert(key.into_owned(), v);
                        }
                        None => {
                            map.remove(key.as_ref());
                            lost = true;
                        }
                    }
                }
                // Emptied by what was left out: an empty shell would only mislead.
                (!(lost && map.is_empty())).then_some(Value::Object(map))
            }
            Some(b'[') => {
                // Elements are values, never keys: this cannot fail on well-formed JSON.
                let items: Vec<&RawValue> = serde_json::from_str(text).ok()?;
                let mut out = Vec::with_capacity(items.len());
                let mut lost = false;
                for (i, item) in items.into_iter().enumerate() {
                    let len = path.len();
                    if len <= MAX_PATH_BYTES {
                        path.push_str(&format!("[{i}]"));
                    }
                    let read = self.value(item, depth + 1, path);
                    path.truncate(len);
                    match read {
                        Some(v) => out.push(v),
                        None => lost = true,
                    }
                }
                (!(lost && out.is_empty())).then_some(Value::Array(out))
            }
            // A scalar: only a number out of range or a string with a lone surrogate fails.
            first => match serde_json::from_str::<Value>(text) {
                Ok(v) => Some(v),
                Err(_) => {
                    let reason = if first == Some(&b'"') {
                        DropReason::InvalidString
                    } else {
                        DropReason::NonFiniteNumber
                    };
                    self.drop(path, reason);
                    None
                }
            },
        }
    }

    fn drop(&mut self, path: &str, reason: DropReason) {
        let path = if path.chars().count() > MAX_PATH_CHARS {
            format!("{}…", truncate_chars(path, MAX_PATH_CHARS - 1))
        } else {
            path.to_owned()
        };
        self.dropped.push(DroppedValue { path, reason });
    }
}

/// Whether `value` has at most `levels` levels of objects and arrays (a scalar has none).
/// Recurses at most `levels` deep.
fn nests_within(value: &Value, levels: usize) -> bool {
    match value {
        Value::Object(map) => levels > 0 && map.values().all(|v| nests_within(v, levels - 1)),
        Value::Array(items) => levels > 0 && items.iter().all(|v| nests_within(v, levels - 1)),
        _ => true,
    }
}

/// Past this many bytes a path is not extended: it is for humans, cut to [`MAX_PATH_CHARS`]
/// anyway, and keys nested 32 deep could be megabytes long together.
const MAX_PATH_BYTES: usize = 4 * MAX_PATH_CHARS;

/// Appends `.key` to `path` (unless it is long enough already); returns the length to truncate
/// back to.
fn push_key(path: &mut String, key: &str) -> usize {
    let len = path.len();
    if len <= MAX_PATH_BYTES {
        path.push('.');
        path.push_str(truncate_chars(key, MAX_PATH_CHARS));
    }
    len
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    type Dropped = Vec<(String, DropReason)>;

    fn read(text: &str) -> (Option<Map<String, Value>>, Dropped) {
        let raw: &RawValue = serde_json::from_str(text).unwrap();
        let mut reader = Reader::default();
        let map = reader.object(raw, "properties");
        let dropped = reader
            .dropped
            .into_iter()
            .map(|d| (d.path, d.reason))
            .collect();
        (map, dropped)
    }

    fn nested(open: &str, leaf: &str, close: &str, levels: usize) -> String {
        format!("{}{leaf}{}", open.repeat(levels), close.repeat(levels))
    }

    #[test]
    fn readable_values_read_as_serde_json_reads_them() {
        let deepest = nested(r#"{"a":"#, "1", "}", MAX_DEPTH);
        for text in [
            r#"{"a":1,"b":{"c":[1,"x",null,true,{"d":2.5}]},"e":"\u00e9","a":3,"n":1e-999}"#,
            r#"{"z":1,"a":{"y":[],"x":{}},"m":[[],[[]]],"k":"\"q\"","a":null}"#,
            &deepest,
        ] {
            let expected: Value = serde_json::from_str(text).unwrap();
            let (map, dropped) = read(text);
            assert_eq!(Value::Object(map.unwrap()), expected, "{text}");
            assert!(dropped.is_empty());
            // The walk, without the one-pass shortcut, gives the same map.
            let raw: &RawValue = serde_json::from_str(text).unwrap();
            let walked = Reader::default().walk_object(raw, "properties").unwrap();
            assert_eq!(Value::Object(walked), expected, "{text}");
        }
    }

    #[test]
    fn only_the_unreadable_values_go() {
        let (map, dropped) = read(
            r#"{"ok":1,"big":1e999,"neg":-1e400,"s":"\ud800","t":"fine",
                "nested":{"bad":1e999,"good":"g"},"list":[1,1e999,"\udc00",2]}"#,
        );
        assert_eq!(
            Value::Object(map.unwrap()),
            json!({"ok": 1, "t": "fine", "nested": {"good": "g"}, "list": [1, 2]})
        );
        let expected: Vec<(String, DropReason)> = vec![
            ("properties.big".into(), DropReason::NonFiniteNumber),
            ("properties.neg".into(), DropReason::NonFiniteNumber),
            ("properties.s".into(), DropReason::InvalidString),
            ("properties.nested.bad".into(), DropReason::NonFiniteNumber),
            ("properties.list[1]".into(), DropReason::NonFiniteNumber),
            ("properties.list[2]".into(), DropReason::InvalidString),
        ];
        assert_eq!(dropped, expected);
    }

    #[test]
    fn a_key_that_is_not_text_drops_its_object() {
        let (map, dropped) = read(r#"{"ok":1,"o":{"\ud800":1,"x":2}}"#);
        assert_eq!(Value::Object(map.unwrap()), json!({"ok": 1}));
        assert_eq!(
            dropped,
            vec![("properties.o".to_string(), DropReason::InvalidString)]
        );
        // The whole `properties` object: nothing of it can be read.
        let (map, dropped) = read(r#"{"\ud800":1}"#);
        assert_eq!(map, None);
        assert_eq!(
            dropped,
            vec![("properties".to_string(), DropReason::InvalidString)]
        );
    }

    #[test]
    fn depth_is_limited_and_never_exhausts_the_stack() {
        // `properties` is the first of the 32 levels a value may be nested in: 31 more objects
        // are fine, a 32nd is not.
        let fits = nested(r#"{"a":"#, "1", "}", MAX_DEPTH);
        let (map, dropped) = read(&fits);
        assert!(dropped.is_empty(), "{dropped:?}");
        assert_eq!(
            Value::Object(map.unwrap()),
            serde_json::from_str::<Value>(&fits).unwrap()
        );
        let too_deep = nested(r#"{"a":"#, "1", "}", MAX_DEPTH + 1);
        let (map, dropped) = read(&too_deep);
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].1, DropReason::TooDeep);
        // The shell above the limit, emptied, goes with it.
        assert_eq!(map, None);

        for deep in [
            nested("[", "", "]", 100_000),
            nested(r#"{"a":"#, "1", "}", 100_000),
            nested(r#"[{"a":"#, "1", "}]", 50_000),
        ] {
            let (map, dropped) = read(&format!(r#"{{"ok":true,"deep":{deep}}}"#));
            assert_eq!(map.unwrap()["ok"], json!(true));
            assert_eq!(dropped.len(), 1);
            assert_eq!(dropped[0].1, DropReason::TooDeep);
        }
    }

    #[test]
    fn fields_reads_only_the_named_keys() {
        let raw: &RawValue =
            serde_json::from_str(r#"{"a":1e999,"b":"x","c":1e999,"d":{"\ud800":1}}"#).unwrap();
        let mut reader = Reader::default();
        let map = reader.fields(raw, &["b", "c"], "user").unwrap();
        assert_eq!(Value::Object(map), json!({"b": "x"}));
        assert_eq!(
            reader.dropped,
            vec![DroppedValue {
                path: "user.c".into(),
                reason: DropReason::NonFiniteNumber
            }]
        );
    }

    #[test]
    fn paths_are_bounded() {
        let key = "k".repeat(5000);
        let (_, dropped) = read(&format!(r#"{{"{key}":{{"{key}":1e999}}}}"#));
        assert_eq!(dropped[0].0.chars().count(), MAX_PATH_CHARS);
        assert!(dropped[0].0.ends_with('…'));
    }

    #[test]
    fn reasons_are_listed() {
        let listed: Vec<&str> = DropReason::ALL.iter().map(DropReason::as_str).collect();
        assert_eq!(listed, DROP_REASONS);
        assert_eq!(
            serde_json::to_value(DropReason::TooDeep).unwrap(),
            json!("too_deep")
        );
    }
}
