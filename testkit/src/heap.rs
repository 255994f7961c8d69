//! The stand-in's own reading of Heap's ingestion contract: item types and their checks,
//! written from `heap-api.md` (the project's Heap API note) and **independent of the product's
//! validators** (`currents_heap::heap::model`). Both encode the same documentation; because they
//! are written separately, a rule the product's validator gets wrong is still refused here, and
//! the delivery tests that run against the stand-in catch it.
//!
//! Everything works on the JSON value Heap would receive, not on the product's types: an item is
//! checked field by field (kinds, lengths, ranges) and only then turned into a [`TrackItem`] or a
//! [`UserPropertiesItem`] for the report.
//!
//! | rule | `heap-api.md` |
//! |---|---|
//! | at most 1000 items per bulk request, and at least one | §(a) rows 2 and 4, §(c) |
//! | `event`: a string of 1 to 1024 characters | §(b) 1 "Limited to 1024 characters", §(c) (clients reject empty names) |
//! | `identity`: a string of 1 to 255 characters | §(b) 1, §(c) "limited to 255 characters" |
//! | `user_id`: digits only, at most 2^53 − 1 | §(b) 1, §(c), §(d) 1 |
//! | identity and user_id: one of them, not both (track); identity required (user properties) | §(b) 1 "Use either identity or user_id, but not both", §(b) 3 |
//! | property key: non-empty, fewer than 1024 characters, not `id` in any casing | §(b) 1 and 3, §(c), §(d) 1 |
//! | user property key: also not `user_id`; Heap's Email property is only the lowercase `email` | §(b) 3 |
//! | property value: a string of fewer than 1024 characters, or a number | §(b) 1, §(c) |
//! | `timestamp`: ISO 8601 date-time with `Z` or a `±HH:MM` offset | §(b) 1 |
//!
//! "Characters" are Unicode scalar values, as Heap's official clients count them (§(e)).
//! `heap-api.md` states no maximum number of properties per event or user, no request size
//! limit and no idempotency-key format (§(c)), so the stand-in enforces none of these.
//!
//! Stricter than Heap, on purpose (see the module docs of [`crate::standin`]): `timestamp` and
//! `idempotency_key` are required on track items, arrays, booleans, nulls and nested objects
//! are refused as property values, unknown fields are refused, and placeholder identities
//! ([`is_placeholder_identity`]) are refused.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Number, Value};

/// Path of the (bulk) track endpoint (§(a) rows 1–2).
pub const TRACK_PATH: &str = "/api/track";
/// Path of the (bulk) add-user-properties endpoint (§(a) rows 3–4).
pub const USER_PROPERTIES_PATH: &str = "/api/add_user_properties";
/// Items per bulk request (§(c): 1000 events per bulk track, 1000 users per bulk
/// add-user-properties).
pub const MAX_BULK_ITEMS: usize = 1000;
/// Longest event name (§(b) 1: "Limited to 1024 characters").
pub const EVENT_MAX_CHARS: usize = 1024;
/// Longest identity (§(b) 1: "limited to 255 characters").
pub const IDENTITY_MAX_CHARS: usize = 255;
/// Property keys and string values have *fewer than* this many characters (§(b) 1).
pub const PROPERTY_CHARS_BELOW: usize = 1024;
/// The largest `user_id`: 2^53 − 1 (§(b) 1).
pub const USER_ID_MAX: u64 = (1 << 53) - 1;

/// A property value as Heap received it: a string or a number.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum PropertyValue {
    Str(String),
    Num(Number),
}

/// Properties of an accepted item, by key.
pub type Properties = BTreeMap<String, PropertyValue>;

/// One accepted item of a bulk track request. Serializes back to the fields it was sent with
/// (in this order), so a test can measure the body a batch was sent in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrackItem {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    pub event: String,
    pub timestamp: String,
    pub idempotency_key: String,
    pub properties: Properties,
}

impl TrackItem {
    /// The per-identity budget key (§(c): 1000 events/min per identity): the identity, else the
    /// `user_id`.
    pub fn budget_key(&self) -> &str {
        self.identity
            .as_deref()
            .or(self.user_id.as_deref())
            .unwrap_or_default()
    }
}

/// One accepted item of a bulk add-user-properties request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserPropertiesItem {
    pub identity: String,
    pub properties: Properties,
}

/// The JSON body `{"app_id": ..., "events": [...]}` of a bulk track request, as sent.
pub fn bulk_track_body(app_id: &str, events: &[TrackItem]) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        app_id: &'a str,
        events: &'a [TrackItem],
    }
    serde_json::to_vec(&Body { app_id, events }).expect("serializable")
}

/// The JSON body `{"app_id": ..., "users": [...]}` of a bulk add-user-properties request.
pub fn bulk_user_properties_body(app_id: &str, users: &[UserPropertiesItem]) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        app_id: &'a str,
        users: &'a [UserPropertiesItem],
    }
    serde_json::to_vec(&Body { app_id, users }).expect("serializable")
}

/// A "no value" identity: blank, or `null` / `undefined` / `none` in any letter case around
/// optional whitespace. Heap would take it and merge every such user into one profile, which
/// cannot be undone (`heap-api.md`, "Identity vs user_id"); the stand-in refuses it.
pub fn is_placeholder_identity(identity: &str) -> bool {
    let trimmed = identity.trim();
    trimmed.is_empty()
        || ["null", "undefined", "none"]
            .iter()
            .any(|p| trimmed.eq_ignore_ascii_case(p))
}

const TRACK_FIELDS: [&str; 6] = [
    "identity",
    "user_id",
    "event",
    "timestamp",
    "idempotency_key",
    "properties",
];
const USER_FIELDS: [&str; 2] = ["identity", "properties"];

/// Checks one item of a bulk track body and returns it; `Err` says which rule it breaks.
pub fn check_track_item(item: &Value) -> Result<TrackItem, String> {
    let fields = object_with_only(item, &TRACK_FIELDS)?;
    let identity = optional_string(fields, "identity")?;
    let user_id = optional_string(fields, "user_id")?;
    match (&identity, &user_id) {
        (Some(_), Some(_)) => {
            return Err("both `identity` and `user_id`: Heap takes one or the other".into());
        }
        (None, None) => return Err("no `identity` and no `user_id`".into()),
        (Some(identity), None) => check_identity(identity)?,
        (None, Some(user_id)) => check_user_id(user_id)?,
    }
    let event = required_string(fields, "event")?;
    let event_chars = event.chars().count();
    if !(1..=EVENT_MAX_CHARS).contains(&event_chars) {
        return Err(format!(
            "`event` is {event_chars} characters long; Heap takes 1 to {EVENT_MAX_CHARS}"
        ));
    }
    let timestamp = required_string(fields, "timestamp")?;
    if !is_iso8601_date_time(&timestamp) {
        return Err(format!(
            "`timestamp` {timestamp:?} is not an ISO 8601 date-time with an offset"
        ));
    }
    let idempotency_key = required_string(fields, "idempotency_key")?;
    if idempotency_key.is_empty() {
        return Err("`idempotency_key` is empty".into());
    }
    let properties = check_properties(fields, false)?;
    Ok(TrackItem {
        identity,
        user_id,
        event,
        timestamp,
        idempotency_key,
        properties,
    })
}

/// Checks one item of a bulk add-user-properties body and returns it.
pub fn check_user_properties_item(item: &Value) -> Result<UserPropertiesItem, String> {
    let fields = object_with_only(item, &USER_FIELDS)?;
    let identity =
        optional_string(fields, "identity")?.ok_or("no `identity`: user properties need one")?;
    check_identity(&identity)?;
    let properties = check_properties(fields, true)?;
    Ok(UserPropertiesItem {
        identity,
        properties,
    })
}

fn object_with_only<'a>(
    item: &'a Value,
    allowed: &[&str],
) -> Result<&'a Map<String, Value>, String> {
    let Value::Object(fields) = item else {
        return Err("item is not a JSON object".into());
    };
    match fields.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(format!("unknown field `{unknown}`")),
        None => Ok(fields),
    }
}

fn optional_string(fields: &Map<String, Value>, name: &str) -> Result<Option<String>, String> {
    match fields.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("`{name}` must be a string, got {}", kind(other))),
    }
}

fn required_string(fields: &Map<String, Value>, name: &str) -> Result<String, String> {
    optional_string(fields, name)?.ok_or_else(|| format!("`{name}` is missing"))
}

fn check_identity(identity: &str) -> Result<(), String> {
    let chars = identity.chars().count();
    if !(1..=IDENTITY_MAX_CHARS).contains(&chars) {
        return Err(format!(
            "`identity` is {chars} characters long; Heap takes 1 to {IDENTITY_MAX_CHARS}"
        ));
    }
    if is_placeholder_identity(identity) {
        return Err(format!(
            "placeholder identity {identity:?}: Heap would merge all such users irreversibly"
        ));
    }
    Ok(())
}

fn check_user_id(user_id: &str) -> Result<(), String> {
    let in_range = !user_id.is_empty()
        && user_id.bytes().all(|b| b.is_ascii_digit())
        && user_id
            .trim_start_matches('0')
            .parse::<u128>()
            .map_or(user_id.trim_start_matches('0').is_empty(), |n| {
                n <= u128::from(USER_ID_MAX)
            });
    if in_range {
        Ok(())
    } else {
        Err(format!(
            "`user_id` {user_id:?} is not the decimal form of an integer from 0 to 2^53 - 1"
        ))
    }
}

fn check_properties(fields: &Map<String, Value>, user: bool) -> Result<Properties, String> {
    let properties = match fields.get("properties") {
        None => return Ok(Properties::new()),
        Some(Value::Object(properties)) => properties,
        Some(other) => {
            return Err(format!(
                "`properties` must be an object, got {}",
                kind(other)
            ));
        }
    };
    let mut out = Properties::new();
    for (key, value) in properties {
        let shown = || key.chars().take(64).collect::<String>();
        let key_chars = key.chars().count();
        if key_chars == 0 || key_chars >= PROPERTY_CHARS_BELOW {
            return Err(format!(
                "property key {:?} is {key_chars} characters long; Heap takes 1 to {}",
                shown(),
                PROPERTY_CHARS_BELOW - 1
            ));
        }
        if key.eq_ignore_ascii_case("id") {
            return Err(format!(
                "property key {key:?} clashes with Heap's internal `id`"
            ));
        }
        if user && key == "user_id" {
            return Err("user property key \"user_id\" is reserved by Heap".into());
        }
        if user && key != "email" && key.eq_ignore_ascii_case("email") {
            return Err(format!(
                "user property key {key:?}: Heap's Email property is written as lowercase `email`"
            ));
        }
        let value = match value {
            Value::String(s) => {
                let chars = s.chars().count();
                if chars >= PROPERTY_CHARS_BELOW {
                    return Err(format!(
                        "property {:?} has a value of {chars} characters; Heap takes fewer than {PROPERTY_CHARS_BELOW}",
                        shown()
                    ));
                }
                PropertyValue::Str(s.clone())
            }
            Value::Number(n) => PropertyValue::Num(n.clone()),
            other => {
                return Err(format!(
                    "property {:?} is {}; Heap takes strings and numbers",
                    shown(),
                    kind(other)
                ));
            }
        };
        out.insert(key.clone(), value);
    }
    Ok(out)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array (Heap joins arrays with `||`; the forwarder never sends them)",
        Value::Object(_) => "a nested object",
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, with a real calendar date (leap years
/// included) and a real time of day (no leap second).
pub fn is_iso8601_date_time(ts: &str) -> bool {
    let Some((date, time)) = ts.split_once('T') else {
        return false;
    };
    let number = |s: &str, len: usize| -> Option<u32> {
        (s.len() == len && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let mut date_parts = date.split('-');
    let (Some(y), Some(m), Some(d), None) = (
        date_parts.next().and_then(|s| number(s, 4)),
        date_parts.next().and_then(|s| number(s, 2)),
        date_parts.next().and_then(|s| number(s, 2)),
        date_parts.next(),
    ) else {
        return false;
    };
    let february = if y % 400 == 0 || (y % 4 == 0 && y % 100 != 0) {
        29
    } else {
        28
    };
    let month_days = [31, february, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&m) || d == 0 || d > month_days[m as usize - 1] {
        return false;
    }
    let (clock, offset) = if let Some(clock) = time.strip_suffix('Z') {
        (clock, None)
    } else if let Some(at) = time.rfind(['+', '-']) {
        (&time[..at], Some(&time[at + 1..]))
    } else {
        return false;
    };
    if let Some(offset) = offset {
        let Some((oh, om)) = offset.split_once(':') else {
            return false;
        };
        match (number(oh, 2), number(om, 2)) {
            (Some(oh), Some(om)) if oh < 24 && om < 60 => {}
            _ => return false,
        }
    }
    let (hms, fraction) = match clock.split_once('.') {
        Some((hms, fraction)) => (hms, Some(fraction)),
        None => (clock, None),
    };
    if fraction.is_some_and(|f| f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit())) {
        return false;
    }
    let mut clock_parts = hms.split(':');
    matches!(
        (
            clock_parts.next().and_then(|s| number(s, 2)),
            clock_parts.next().and_then(|s| number(s, 2)),
            clock_parts.next().and_then(|s| number(s, 2)),
            clock_parts.next(),
        ),
        (Some(h), Some(min), Some(s), None) if h < 24 && min < 60 && s < 60
    )
}

/// One test per rule of `heap-api.md` the stand-in enforces: the largest value Heap takes
/// passes, the next one is refused. These are the stand-in's own rules; a product validator
/// that let through what is refused here would be caught by the delivery tests.
#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A track item within every limit.
    fn track() -> Value {
        json!({
            "identity": "alice@example.com",
            "event": "Email Sent",
            "timestamp": "2017-03-10T22:21:56+00:00",
            "idempotency_key": "f47ac10b-58cc-4372-a567-0e02b2c3d479",
            "properties": {"subject": "Welcome", "variation": "A", "count": 3, "ratio": 0.5}
        })
    }

    fn track_with(change: impl FnOnce(&mut Map<String, Value>)) -> Result<TrackItem, String> {
        let mut item = track();
        change(item.as_object_mut().unwrap());
        check_track_item(&item)
    }

    fn track_property(key: &str, value: Value) -> Result<TrackItem, String> {
        track_with(|i| {
            i.insert("properties".into(), json!({ key: value }));
        })
    }

    fn user_property(key: &str, value: Value) -> Result<UserPropertiesItem, String> {
        check_user_properties_item(&json!({"identity": "bob", "properties": { key: value }}))
    }

    fn refused<T: std::fmt::Debug>(result: Result<T, String>, mentions: &str) {
        match result {
            Ok(item) => panic!("accepted {item:?}; should be refused for {mentions:?}"),
            Err(e) => assert!(e.contains(mentions), "{e:?} should mention {mentions:?}"),
        }
    }

    #[test]
    fn the_documented_examples_pass() {
        let item = check_track_item(&track()).unwrap();
        assert_eq!(item.identity.as_deref(), Some("alice@example.com"));
        assert_eq!(item.budget_key(), "alice@example.com");
        assert_eq!(item.properties.len(), 4);
        // §(b) 3 and 4.
        let user = check_user_properties_item(&json!({"identity": "bob@example.com",
            "properties": {"age": "25", "language": "English", "email": "bob2@example2.com"}}))
        .unwrap();
        assert_eq!(user.identity, "bob@example.com");
        // Properties are optional.
        assert!(track_with(|i| drop(i.remove("properties"))).is_ok());
        assert!(check_user_properties_item(&json!({"identity": "bob"})).is_ok());
    }

    #[test]
    fn event_names_have_1_to_1024_characters() {
        // Characters, not bytes: 1024 three-byte characters pass.
        assert!(track_with(|i| drop(i.insert("event".into(), json!("€".repeat(1024))))).is_ok());
        refused(
            track_with(|i| drop(i.insert("event".into(), json!("e".repeat(1025))))),
            "`event` is 1025 characters",
        );
        refused(
            track_with(|i| drop(i.insert("event".into(), json!("")))),
            "`event` is 0 characters",
        );
        refused(
            track_with(|i| drop(i.remove("event"))),
            "`event` is missing",
        );
        refused(
            track_with(|i| drop(i.insert("event".into(), json!(7)))),
            "`event` must be a string",
        );
    }

    #[test]
    fn identities_have_1_to_255_characters_and_are_not_placeholders() {
        let with_identity =
            |identity: &str| track_with(|i| drop(i.insert("identity".into(), json!(identity))));
        assert!(with_identity(&"ü".repeat(255)).is_ok());
        refused(
            with_identity(&"ü".repeat(256)),
            "`identity` is 256 characters",
        );
        refused(with_identity(""), "`identity` is 0 characters");
        for placeholder in ["null", "NULL", " undefined ", "None", "  "] {
            refused(with_identity(placeholder), "placeholder identity");
        }
        for fine in ["0", "nullable", "none-of-the-above", "Alice"] {
            assert!(with_identity(fine).is_ok(), "{fine:?}");
        }
        refused(
            check_user_properties_item(&json!({"identity": "x".repeat(256)})),
            "`identity` is 256 characters",
        );
        refused(
            check_user_properties_item(&json!({"identity": "null"})),
            "placeholder identity",
        );
    }

    #[test]
    fn a_track_item_names_its_user_exactly_once() {
        refused(
            track_with(|i| drop(i.remove("identity"))),
            "no `identity` and no `user_id`",
        );
        refused(
            track_with(|i| drop(i.insert("user_id".into(), json!("42")))),
            "both `identity` and `user_id`",
        );
        let anonymous = track_with(|i| {
            i.remove("identity");
            i.insert("user_id".into(), json!("42"));
        })
        .unwrap();
        assert_eq!(anonymous.budget_key(), "42");
        // User properties target an identity only (§(b) 3).
        refused(
            check_user_properties_item(&json!({"properties": {"plan": "pro"}})),
            "no `identity`",
        );
        refused(
            check_user_properties_item(&json!({"user_id": "42", "properties": {}})),
            "unknown field `user_id`",
        );
    }

    #[test]
    fn user_ids_are_decimal_integers_up_to_2_pow_53_minus_1() {
        let with_user_id = |user_id: Value| {
            track_with(|i| {
                i.remove("identity");
                i.insert("user_id".into(), user_id);
            })
        };
        for ok in ["0", "1", "9007199254740991"] {
            assert!(with_user_id(json!(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "9007199254740992",
            "",
            "-1",
            "+1",
            "1.0",
            " 1",
            "1e3",
            "abc",
        ] {
            refused(with_user_id(json!(bad)), "`user_id`");
        }
        refused(with_user_id(json!("9".repeat(60))), "`user_id`");
        refused(with_user_id(json!(42)), "`user_id` must be a string");
    }

    #[test]
    fn property_keys_have_1_to_1023_characters_and_are_not_id() {
        assert!(track_property(&"k".repeat(1023), json!("v")).is_ok());
        refused(
            track_property(&"k".repeat(1024), json!("v")),
            "is 1024 characters long",
        );
        refused(track_property("", json!("v")), "is 0 characters long");
        for id in ["id", "ID", "Id", "iD"] {
            refused(track_property(id, json!("v")), "internal `id`");
            refused(user_property(id, json!("v")), "internal `id`");
        }
        assert!(track_property("identifier", json!("v")).is_ok());
    }

    #[test]
    fn user_property_keys_also_avoid_user_id_and_miscased_email() {
        assert!(user_property("email", json!("b@x")).is_ok());
        refused(user_property("user_id", json!("1")), "reserved");
        for email in ["Email", "EMAIL", "eMail"] {
            refused(user_property(email, json!("b@x")), "lowercase `email`");
        }
        // Track events may carry these keys.
        assert!(track_property("user_id", json!("1")).is_ok());
        assert!(track_property("Email", json!("b@x")).is_ok());
    }

    #[test]
    fn string_values_have_fewer_than_1024_characters() {
        assert!(track_property("k", json!("é".repeat(1023))).is_ok());
        refused(
            track_property("k", json!("é".repeat(1024))),
            "a value of 1024 characters",
        );
        assert!(user_property("k", json!("x".repeat(1023))).is_ok());
        refused(
            user_property("k", json!("x".repeat(1024))),
            "a value of 1024 characters",
        );
    }

    #[test]
    fn values_are_strings_or_numbers() {
        for number in [
            json!(0),
            json!(-3),
            json!(1.5),
            json!(9_007_199_254_740_993_u64),
        ] {
            assert!(track_property("n", number.clone()).is_ok(), "{number}");
        }
        for (value, kind) in [
            (json!(true), "a boolean"),
            (Value::Null, "null"),
            (json!(["a", "b"]), "an array"),
            (json!({"plan": "pro"}), "a nested object"),
        ] {
            refused(track_property("k", value.clone()), kind);
            refused(user_property("k", value), kind);
        }
        refused(
            track_with(|i| drop(i.insert("properties".into(), json!(["a"])))),
            "`properties` must be an object",
        );
    }

    /// `heap-api.md` §(c): "Max properties per event/user: not documented". The stand-in has
    /// no such limit, so the forwarder must not be held to an invented one.
    #[test]
    fn no_property_count_limit_is_documented() {
        let many: Map<String, Value> = (0..5000).map(|i| (format!("p{i}"), json!(i))).collect();
        let item = track_with(|i| drop(i.insert("properties".into(), Value::Object(many))));
        assert_eq!(item.unwrap().properties.len(), 5000);
    }

    #[test]
    fn timestamps_are_iso8601_date_times_with_an_offset() {
        for ok in [
            "2017-03-10T22:21:56+00:00",
            "2016-05-10T22:21:56+00:00",
            "2026-11-28T10:00:00Z",
            "2024-02-29T23:59:59Z",
            "2000-02-29T00:00:00Z",
            "2017-03-10T22:21:56.123-05:30",
        ] {
            assert!(is_iso8601_date_time(ok), "{ok}");
        }
        for bad in [
            "",
            "2026-11-28",
            "2026-11-28T10:00:00",
            "2026-11-28 10:00:00Z",
            "2023-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-00-10T00:00:00Z",
            "2026-11-28T24:00:00Z",
            "2026-11-28T10:60:00Z",
            "2026-11-28T10:00:60Z",
            "2026-11-28T10:00:00.Z",
            "2026-11-28T10:00:00+0100",
            "2026-11-28T10:00:00+24:00",
            "2026-11-28T10:00:00Zjunk",
            "26-11-28T10:00:00Z",
            "1780000000",
        ] {
            assert!(!is_iso8601_date_time(bad), "{bad}");
        }
        refused(
            track_with(|i| drop(i.insert("timestamp".into(), json!("yesterday")))),
            "`timestamp`",
        );
        refused(
            track_with(|i| drop(i.remove("timestamp"))),
            "`timestamp` is missing",
        );
    }

    #[test]
    fn idempotency_keys_are_required_strings() {
        refused(
            track_with(|i| drop(i.insert("idempotency_key".into(), json!("")))),
            "`idempotency_key` is empty",
        );
        refused(
            track_with(|i| drop(i.remove("idempotency_key"))),
            "`idempotency_key` is missing",
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        refused(
            track_with(|i| drop(i.insert("session_id".into(), json!("s")))),
            "unknown field `session_id`",
        );
        refused(check_track_item(&json!("an item")), "not a JSON object");
    }

    #[test]
    fn accepted_items_serialize_back_to_what_was_sent() {
        let sent = track();
        let item = check_track_item(&sent).unwrap();
        assert_eq!(serde_json::to_value(&item).unwrap(), sent);
        let body = bulk_track_body("11", std::slice::from_ref(&item));
        let back: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(back, json!({"app_id": "11", "events": [sent]}));
        let user = check_user_properties_item(&json!({"identity": "bob"})).unwrap();
        assert_eq!(
            bulk_user_properties_body("11", &[user]),
            br#"{"app_id":"11","users":[{"identity":"bob","properties":{}}]}"#
        );
    }
}
