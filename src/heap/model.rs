//! Heap's server-side request shapes and their documented limits.
//!
//! Why a separate model with its own validators: Heap answers a malformed bulk request with a
//! bare `400` (body format undocumented, `heap-api.md` §(d)), and the delivery path then has to
//! bisect the batch to find the culprit. Checking every item against Heap's documented limits
//! before it is queued turns those 400s into bugs caught by our own tests instead. The same
//! validators back the property tests of the mapping, so they are deliberately strict and exact
//! (the Heap stand-in of the black-box tests, in the dev-only `testkit/` crate, checks items
//! with its own rules written separately from `heap-api.md`, so a mistake here shows there):
//!
//! | field | rule (source: `heap-api.md` §(b), (c)) |
//! |---|---|
//! | `event` | 1..=1024 characters |
//! | `identity` | 1..=255 characters, case-sensitive |
//! | `user_id` | decimal integer in `[0, 2^53)`, canonical (no sign, no leading zero) |
//! | identity / user_id | exactly one of the two on a track item; user properties need an identity |
//! | `timestamp` | ISO 8601 / RFC 3339 date-time with `Z` or a `±HH:MM` offset |
//! | `idempotency_key` | non-empty |
//! | property key | non-empty, fewer than 1024 characters, not `id` in any letter case; for user properties also not `user_id`, and `email` only in lowercase |
//! | property value | a string of fewer than 1024 characters, or a finite number |
//!
//! "Characters" are Unicode scalar values (`str::chars`), the unit Heap's docs and its official
//! clients count in.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Path of the (bulk) track endpoint.
pub const TRACK_PATH: &str = "/api/track";
/// Path of the (bulk) add-user-properties endpoint.
pub const USER_PROPERTIES_PATH: &str = "/api/add_user_properties";
/// Most items Heap accepts in one bulk request (track events or users).
pub const MAX_BULK_ITEMS: usize = 1000;

/// Longest event name, in characters.
pub const MAX_EVENT_CHARS: usize = 1024;
/// Longest identity, in characters.
pub const MAX_IDENTITY_CHARS: usize = 255;
/// Longest property key, in characters ("fewer than 1024").
pub const MAX_KEY_CHARS: usize = 1023;
/// Longest string property value, in characters ("fewer than 1024").
pub const MAX_VALUE_CHARS: usize = 1023;
/// Heap `user_id`s are below this bound (2^53).
pub const USER_ID_BOUND: u64 = 1 << 53;

/// A property value Heap accepts: a string or a finite number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PropertyValue {
    Str(String),
    Num(serde_json::Number),
}

/// Event or user properties, sorted by key so request bodies are deterministic.
pub type Properties = BTreeMap<String, PropertyValue>;

/// One item of a bulk track request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackItem {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    pub event: String,
    pub timestamp: String,
    pub idempotency_key: String,
    #[serde(default)]
    pub properties: Properties,
}

impl TrackItem {
    /// The per-identity rate-limit key: the identity, else the `user_id`.
    pub fn budget_key(&self) -> &str {
        self.identity
            .as_deref()
            .or(self.user_id.as_deref())
            .unwrap_or("")
    }
}

/// Body of a bulk `POST /api/track`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BulkTrack<'a> {
    pub app_id: &'a str,
    pub events: &'a [TrackItem],
}

/// One item of a bulk add-user-properties request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserPropertiesItem {
    pub identity: String,
    #[serde(default)]
    pub properties: Properties,
}

/// Body of a bulk `POST /api/add_user_properties`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BulkUserProperties<'a> {
    pub app_id: &'a str,
    pub users: &'a [UserPropertiesItem],
}

/// Checks a track item against Heap's documented limits; `Err` says which rule failed.
pub fn validate_track_item(item: &TrackItem) -> Result<(), String> {
    match (&item.identity, &item.user_id) {
        (Some(identity), None) => validate_identity(identity)?,
        (None, Some(user_id)) => validate_user_id(user_id)?,
        (Some(_), Some(_)) => return Err("both `identity` and `user_id` are set".into()),
        (None, None) => return Err("neither `identity` nor `user_id` is set".into()),
    }
    let event_chars = item.event.chars().count();
    if event_chars == 0 || event_chars > MAX_EVENT_CHARS {
        return Err(format!(
            "`event` has {event_chars} characters; must be 1..={MAX_EVENT_CHARS}"
        ));
    }
    validate_timestamp(&item.timestamp)?;
    if item.idempotency_key.is_empty() {
        return Err("`idempotency_key` is empty".into());
    }
    validate_properties(&item.properties, PropertyTarget::Event)
}

/// Checks a user-properties item against Heap's documented limits.
pub fn validate_user_properties_item(item: &UserPropertiesItem) -> Result<(), String> {
    validate_identity(&item.identity)?;
    validate_properties(&item.properties, PropertyTarget::User)
}

/// An identity Heap must never receive although it is within its limits: blank, or a
/// stringified "no value" (`null`, `undefined`, `none` in any letter case, surrounding
/// whitespace ignored). Heap would merge every such user into one profile, irreversibly
/// (`heap-api.md`, "Identity vs user_id").
pub fn is_placeholder_identity(identity: &str) -> bool {
    let trimmed = identity.trim();
    trimmed.is_empty()
        || ["null", "undefined", "none"]
            .iter()
            .any(|p| trimmed.eq_ignore_ascii_case(p))
}

fn validate_identity(identity: &str) -> Result<(), String> {
    let chars = identity.chars().count();
    if chars == 0 || chars > MAX_IDENTITY_CHARS {
        return Err(format!(
            "`identity` has {chars} characters; must be 1..={MAX_IDENTITY_CHARS}"
        ));
    }
    Ok(())
}

fn validate_user_id(user_id: &str) -> Result<(), String> {
    let canonical = !user_id.is_empty()
        && user_id.len() <= 16
        && user_id.bytes().all(|b| b.is_ascii_digit())
        && (user_id == "0" || !user_id.starts_with('0'));
    match user_id.parse::<u64>() {
        Ok(n) if canonical && n < USER_ID_BOUND => Ok(()),
        _ => Err(format!(
            "`user_id` {user_id:?} is not a canonical decimal integer in [0, 2^53)"
        )),
    }
}

/// ISO 8601 / RFC 3339 date-time: `YYYY-MM-DDTHH:MM:SS`, optional fraction, then `Z` or
/// `±HH:MM`. Calendar-checked (month lengths, leap years); leap seconds are refused.
fn validate_timestamp(ts: &str) -> Result<(), String> {
    parse_timestamp(ts.as_bytes()).ok_or_else(|| {
        format!("`timestamp` {ts:?} is not an RFC 3339 date-time (e.g. 2026-11-28T10:00:00Z)")
    })
}

fn parse_timestamp(b: &[u8]) -> Option<()> {
    let num = |range: std::ops::Range<usize>| digits(b.get(range)?);
    let sep = |i: usize, c: u8| (b.get(i) == Some(&c)).then_some(());
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    sep(4, b'-')?;
    sep(7, b'-')?;
    sep(10, b'T')?;
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    sep(13, b':')?;
    sep(16, b':')?;
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day == 0 || day > days_in_month || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut rest = &b[19..];
    if let Some(fraction) = rest.strip_prefix(b".") {
        let digits = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        rest = &fraction[digits..];
    }
    match rest {
        b"Z" => Some(()),
        [b'+' | b'-', _, _, b':', _, _] => {
            let (hours, minutes) = (digits(&rest[1..3])?, digits(&rest[4..6])?);
            (hours <= 23 && minutes <= 59).then_some(())
        }
        _ => None,
    }
}

/// The value of a run of ASCII digits; `None` if any byte is not one.
fn digits(s: &[u8]) -> Option<u32> {
    s.iter().try_fold(0u32, |acc, d| {
        d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
    })
}

#[derive(Clone, Copy, PartialEq)]
enum PropertyTarget {
    Event,
    User,
}

fn validate_properties(properties: &Properties, target: PropertyTarget) -> Result<(), String> {
    for (key, value) in properties {
        let chars = key.chars().count();
        if chars == 0 || chars > MAX_KEY_CHARS {
            return Err(format!(
                "property key {:?} has {chars} characters; must be 1..={MAX_KEY_CHARS}",
                preview(key)
            ));
        }
        if key.eq_ignore_ascii_case("id") {
            return Err(format!("property key {key:?} is reserved by Heap"));
        }
        if target == PropertyTarget::User {
            if key == "user_id" {
                return Err("user property key \"user_id\" is reserved by Heap".into());
            }
            if key.eq_ignore_ascii_case("email") && key != "email" {
                return Err(format!(
                    "user property key {key:?}: Heap's Email property is the lowercase `email`"
                ));
            }
        }
        match value {
            PropertyValue::Str(s) => {
                let chars = s.chars().count();
                if chars > MAX_VALUE_CHARS {
                    return Err(format!(
                        "value of property {:?} has {chars} characters; must be at most {MAX_VALUE_CHARS}",
                        preview(key)
                    ));
                }
            }
            PropertyValue::Num(n) => {
                if !n.as_f64().is_some_and(f64::is_finite) {
                    return Err(format!(
                        "value of property {:?} is not a finite number",
                        preview(key)
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The first characters of a key, for error messages about very long keys.
fn preview(key: &str) -> String {
    key.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item() -> TrackItem {
        TrackItem {
            identity: Some("alice".into()),
            user_id: None,
            event: "Email Sent".into(),
            timestamp: "2026-11-28T10:00:00Z".into(),
            idempotency_key: "k".into(),
            properties: Properties::from([
                ("a".into(), PropertyValue::Str("x".into())),
                ("n".into(), PropertyValue::Num(1.into())),
            ]),
        }
    }

    fn with(f: impl FnOnce(&mut TrackItem)) -> Result<(), String> {
        let mut it = item();
        f(&mut it);
        validate_track_item(&it)
    }

    fn str_prop(key: &str, value: &str) -> Properties {
        Properties::from([(key.to_string(), PropertyValue::Str(value.to_string()))])
    }

    #[test]
    fn a_well_formed_item_passes() {
        assert_eq!(validate_track_item(&item()), Ok(()));
    }

    #[test]
    fn identity_and_user_id_are_exclusive_and_bounded() {
        assert!(with(|i| i.user_id = Some("1".into())).is_err());
        assert!(with(|i| i.identity = None).is_err());
        assert!(with(|i| i.identity = Some(String::new())).is_err());
        assert!(with(|i| i.identity = Some("é".repeat(255))).is_ok());
        assert!(with(|i| i.identity = Some("é".repeat(256))).is_err());
    }

    #[test]
    fn user_id_must_be_canonical_and_below_2_pow_53() {
        let check = |u: &str| {
            with(|i| {
                i.identity = None;
                i.user_id = Some(u.into());
            })
        };
        for ok in ["0", "1", "9007199254740991"] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "9007199254740992",
            "-1",
            "+1",
            "01",
            "1.0",
            " 1",
            "1e3",
            "99999999999999999999",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn event_name_is_1_to_1024_chars() {
        assert!(with(|i| i.event = String::new()).is_err());
        assert!(with(|i| i.event = "ü".repeat(1024)).is_ok());
        assert!(with(|i| i.event = "ü".repeat(1025)).is_err());
    }

    #[test]
    fn timestamps_are_rfc3339() {
        for ok in [
            "2026-11-28T10:00:00Z",
            "2024-02-29T23:59:59Z",
            "2017-03-10T22:21:56+00:00",
            "2017-03-10T22:21:56.123-05:30",
            "9999-12-31T23:59:59Z",
        ] {
            assert_eq!(with(|i| i.timestamp = ok.into()), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "2026-11-28",
            "2026-11-28 10:00:00Z",
            "2026-11-28T10:00:00",
            "2023-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-28T24:00:00Z",
            "2026-11-28T10:00:60Z",
            "2026-11-28T10:00:00.Z",
            "2026-11-28T10:00:00+0100",
            "2026-11-28T10:00:00Zjunk",
            "1479-11-28T10:00:00+1:00",
            "١٢٣٤-11-28T10:00:00Z",
        ] {
            assert!(with(|i| i.timestamp = bad.into()).is_err(), "{bad}");
        }
    }

    #[test]
    fn idempotency_key_is_required() {
        assert!(with(|i| i.idempotency_key.clear()).is_err());
    }

    #[test]
    fn property_rules() {
        for key in ["id", "ID", "Id", "iD", ""] {
            assert!(
                with(|i| i.properties = str_prop(key, "v")).is_err(),
                "{key:?}"
            );
        }
        assert!(with(|i| i.properties = str_prop(&"k".repeat(1023), "v")).is_ok());
        assert!(with(|i| i.properties = str_prop(&"k".repeat(1024), "v")).is_err());
        assert!(with(|i| i.properties = str_prop("k", &"€".repeat(1023))).is_ok());
        assert!(with(|i| i.properties = str_prop("k", &"€".repeat(1024))).is_err());
        // Track events may carry `user_id` and `Email` keys; user properties may not.
        assert!(with(|i| i.properties = str_prop("user_id", "v")).is_ok());
        assert!(with(|i| i.properties = str_prop("Email", "v")).is_ok());
    }

    #[test]
    fn user_property_rules() {
        let check = |key: &str| {
            validate_user_properties_item(&UserPropertiesItem {
                identity: "alice".into(),
                properties: str_prop(key, "v"),
            })
        };
        assert_eq!(check("email"), Ok(()));
        assert_eq!(check("first_name"), Ok(()));
        for bad in ["user_id", "id", "Id", "Email", "EMAIL", ""] {
            assert!(check(bad).is_err(), "{bad:?}");
        }
        let no_identity = UserPropertiesItem {
            identity: String::new(),
            properties: Properties::new(),
        };
        assert!(validate_user_properties_item(&no_identity).is_err());
    }

    #[test]
    fn placeholders() {
        for p in ["", "  ", "null", "NULL", " Undefined ", "nOnE", "\t"] {
            assert!(is_placeholder_identity(p), "{p:?}");
        }
        for ok in ["alice", "nullable", "0", "none-of-the-above"] {
            assert!(!is_placeholder_identity(ok), "{ok:?}");
        }
    }

    #[test]
    fn wire_shapes() {
        let it = item();
        let body = serde_json::to_value(BulkTrack {
            app_id: "11",
            events: std::slice::from_ref(&it),
        })
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"app_id": "11", "events": [{
                "identity": "alice", "event": "Email Sent", "timestamp": "2026-11-28T10:00:00Z",
                "idempotency_key": "k", "properties": {"a": "x", "n": 1}}]})
        );
        let back: TrackItem = serde_json::from_value(body["events"][0].clone()).unwrap();
        assert_eq!(back, it);
        assert_eq!(it.budget_key(), "alice");
        // Booleans are not a Heap property type.
        assert!(serde_json::from_str::<PropertyValue>("true").is_err());
        let users = [UserPropertiesItem {
            identity: "bob".into(),
            properties: str_prop("email", "b@x"),
        }];
        assert_eq!(
            serde_json::to_value(BulkUserProperties {
                app_id: "11",
                users: &users
            })
            .unwrap(),
            serde_json::json!({"app_id": "11", "users": [{"identity": "bob", "properties": {"email": "b@x"}}]})
        );
    }
}
