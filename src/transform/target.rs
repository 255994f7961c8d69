//! Who a Heap item is about (identity or synthetic `user_id`) and when it happened.
//!
//! Why so careful: an identity sent to Heap is irreversible. Heap merges every event sent with
//! the same identity into one user, so a placeholder such as `"null"` would glue thousands of
//! unrelated users together for good (`heap-api.md`, "Identity vs user_id"). Anything doubtful is
//! skipped and counted instead.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::SkipReason;
use super::options::AnonymousMode;
use crate::heap::model::{MAX_IDENTITY_CHARS, USER_ID_BOUND, is_placeholder_identity};

/// The user a mapped event is sent for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `user.external_user_id`, verbatim.
    Identity(String),
    /// A synthetic Heap `user_id` (see [`synthetic_user_id`]).
    UserId(String),
}

/// The fields of `user` the mapping reads (identity, synthetic `user_id`, metadata properties);
/// nothing else of `user` is looked at.
pub const USER_FIELDS: &[&str] = &["external_user_id", "user_id", "device_id", "timezone"];

/// Resolves the Heap target of an event from its `user` object.
///
/// | `user.external_user_id` | skip mode | `synthetic_user_id` mode |
/// |---|---|---|
/// | usable string | identity | identity |
/// | placeholder (blank, `null`/`undefined`/`none` any case), over 255 characters, or holding an [invisible control character](is_invisible_control) | `InvalidIdentity` | synthetic `user_id` from `user.user_id`, else `InvalidIdentity` |
/// | missing, `null`, not a string | `Anonymous` | synthetic `user_id` from `user.user_id`, else `Anonymous` |
///
/// A `user.user_id` that is not a string, or is itself a placeholder, does not count (hashing
/// `"null"` would merge users just the same).
pub fn resolve(
    user: Option<&Map<String, Value>>,
    mode: AnonymousMode,
) -> Result<Target, SkipReason> {
    let id = |key| match user.and_then(|u| u.get(key)) {
        Some(Value::String(s)) => Some(s.as_str()),
        _ => None,
    };
    resolve_ids(id("external_user_id"), id("user_id"), mode)
}

/// [`resolve`] from the two ids, each when it is a string: what ingest knows of an event
/// without parsing its `user` object into a map.
pub fn resolve_ids(
    external_user_id: Option<&str>,
    braze_user_id: Option<&str>,
    mode: AnonymousMode,
) -> Result<Target, SkipReason> {
    let reason = match external_user_id {
        Some(id) if is_usable_identity(id) => return Ok(Target::Identity(id.to_owned())),
        Some(_) => SkipReason::InvalidIdentity,
        None => SkipReason::Anonymous,
    };
    match (mode, braze_user_id) {
        (AnonymousMode::SyntheticUserId, Some(braze_id)) if !is_placeholder_identity(braze_id) => {
            Ok(Target::UserId(synthetic_user_id(braze_id)))
        }
        _ => Err(reason),
    }
}

/// Whether an `external_user_id` may be sent to Heap as an identity: not a placeholder, at most
/// 255 characters, and no [invisible control character](is_invisible_control).
pub fn is_usable_identity(id: &str) -> bool {
    !is_placeholder_identity(id)
        && id.chars().count() <= MAX_IDENTITY_CHARS
        && !id.chars().any(is_invisible_control)
}

/// A character that controls text rather than being part of it: C0 and C1 controls and DEL
/// (general category Cc: NUL, ESC, ...), format characters (Cf: the bidirectional embeddings,
/// overrides and isolates such as U+202E RIGHT-TO-LEFT OVERRIDE, zero-width spaces and joiners,
/// U+FEFF, the invisible tags U+E0001..U+E007F, ...) and the line and paragraph separators
/// U+2028 / U+2029.
///
/// Why an identity with one is skipped: no app sets such an id on purpose. It comes from a
/// bug or an attack (terminal escapes, a reversed-looking id in Heap's UI, two ids that render
/// alike but are distinct users), and Heap keeps an identity for good.
pub fn is_invisible_control(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            // Cf, as of Unicode 16.
            '\u{00AD}'
                | '\u{0600}'..='\u{0605}'
                | '\u{061C}'
                | '\u{06DD}'
                | '\u{070F}'
                | '\u{0890}'..='\u{0891}'
                | '\u{08E2}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{110BD}'
                | '\u{110CD}'
                | '\u{13430}'..='\u{1343F}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0001}'
                | '\u{E0020}'..='\u{E007F}'
                // Zl, Zp.
                | '\u{2028}'
                | '\u{2029}'
        )
}

/// The synthetic Heap `user_id` of a Braze user id: the first 8 bytes of the SHA-256 of its
/// UTF-8 bytes, read big-endian, masked to the low 53 bits, in decimal. Stable across versions
/// and hosts, so one anonymous Braze user is always one Heap user.
pub fn synthetic_user_id(braze_user_id: &str) -> String {
    let digest = Sha256::digest(braze_user_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) & (USER_ID_BOUND - 1)).to_string()
}

/// Latest second Heap timestamps are written for: 9999-12-31T23:59:59Z.
pub const MAX_TIMESTAMP_SECS: i64 = 253_402_300_799;
/// A `time` at or above this is read as milliseconds: as seconds it would be after the year
/// 5138, as milliseconds it is after 1973.
pub const MILLIS_THRESHOLD: i64 = 100_000_000_000;

/// A Currents `time` in UNIX seconds, as Heap is sent it: values from [`MILLIS_THRESHOLD`] up
/// are milliseconds (truncated to the second); clamped to `0 ..= 9999-12-31T23:59:59Z`.
pub fn event_seconds(time: i64) -> i64 {
    let secs = if time >= MILLIS_THRESHOLD {
        time / 1000
    } else {
        time
    };
    secs.clamp(0, MAX_TIMESTAMP_SECS)
}

/// `time` (UNIX seconds) as RFC 3339 UTC, `YYYY-MM-DDTHH:MM:SSZ`.
///
/// Deterministic for every `i64`: values from [`MILLIS_THRESHOLD`] up are taken as
/// milliseconds (truncated to the second); the result is then clamped to
/// `1970-01-01T00:00:00Z ..= 9999-12-31T23:59:59Z` (negative times give the epoch).
pub fn heap_timestamp(time: i64) -> String {
    let secs = event_seconds(time).unsigned_abs();
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn user(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn identity_rules() {
        let skip = AnonymousMode::Skip;
        let r = |v: Value| resolve(Some(&user(v)), skip);
        assert_eq!(
            r(json!({"external_user_id": "alice", "user_id": "b"})),
            Ok(Target::Identity("alice".into()))
        );
        // Verbatim: Heap identities are case-sensitive and we do not trim.
        assert_eq!(
            r(json!({"external_user_id": " Alice "})),
            Ok(Target::Identity(" Alice ".into()))
        );
        assert_eq!(
            r(json!({"external_user_id": "é".repeat(255)})),
            Ok(Target::Identity("é".repeat(255)))
        );
        for bad in [
            json!(""),
            json!("  "),
            json!("NULL"),
            json!("Undefined"),
            json!("none"),
            json!("x".repeat(256)),
        ] {
            assert_eq!(
                r(json!({"external_user_id": bad, "user_id": "b"})),
                Err(SkipReason::InvalidIdentity)
            );
        }
        for anon in [json!(null), json!(42), json!({"a": 1})] {
            assert_eq!(
                r(json!({"external_user_id": anon, "user_id": "b"})),
                Err(SkipReason::Anonymous)
            );
        }
        assert_eq!(r(json!({"user_id": "b"})), Err(SkipReason::Anonymous));
        assert_eq!(resolve(None, skip), Err(SkipReason::Anonymous));
    }

    #[test]
    fn identities_with_control_or_format_characters_are_invalid() {
        let r = |v: Value| resolve(Some(&user(v)), AnonymousMode::Skip);
        for bad in [
            "a\u{0}b",
            "\u{1b}[31mred",
            "x\u{7f}",
            "nel\u{85}",
            "evil\u{202E}gnp.exe",
            "\u{2066}iso\u{2069}",
            "zero\u{200B}width",
            "\u{FEFF}bom",
            "tag\u{E0041}",
            "line\u{2028}sep",
            "soft\u{AD}hyphen",
            "tab\tin",
        ] {
            assert!(!is_usable_identity(bad), "{bad:?}");
            assert_eq!(
                r(json!({"external_user_id": bad, "user_id": "b"})),
                Err(SkipReason::InvalidIdentity),
                "{bad:?}"
            );
        }
        // Visible text of any script, emoji and ordinary punctuation stay usable.
        for good in [
            "José",
            "ユーザー",
            "user+tag@example.com",
            "Ω-42",
            "🙂",
            "a b",
        ] {
            assert!(is_usable_identity(good), "{good:?}");
        }
        assert!(
            !is_invisible_control('\u{200A}'),
            "HAIR SPACE is a space, not a control"
        );
    }

    #[test]
    fn synthetic_mode() {
        let synth = AnonymousMode::SyntheticUserId;
        let r = |v: Value| resolve(Some(&user(v)), synth);
        let expected = Target::UserId(synthetic_user_id("639a35d192b0df004d06514c"));
        assert_eq!(
            r(json!({"user_id": "639a35d192b0df004d06514c"})),
            Ok(expected.clone())
        );
        assert_eq!(
            r(json!({"external_user_id": "null", "user_id": "639a35d192b0df004d06514c"})),
            Ok(expected)
        );
        assert_eq!(
            r(json!({"external_user_id": "ok", "user_id": "b"})),
            Ok(Target::Identity("ok".into()))
        );
        assert_eq!(r(json!({})), Err(SkipReason::Anonymous));
        assert_eq!(
            r(json!({"user_id": "undefined"})),
            Err(SkipReason::Anonymous)
        );
        assert_eq!(r(json!({"user_id": 7})), Err(SkipReason::Anonymous));
        assert_eq!(
            r(json!({"external_user_id": ""})),
            Err(SkipReason::InvalidIdentity)
        );
    }

    #[test]
    fn synthetic_user_id_is_stable_and_in_range() {
        // Pinned: changing the derivation would split every anonymous user in Heap in two.
        let digest = Sha256::digest(b"639a35d192b0df004d06514c");
        let n = u64::from_be_bytes(digest[..8].try_into().unwrap()) & ((1 << 53) - 1);
        assert_eq!(synthetic_user_id("639a35d192b0df004d06514c"), n.to_string());
        assert_eq!(synthetic_user_id("abc"), "6780411434881002");
        assert_ne!(synthetic_user_id("a"), synthetic_user_id("b"));
        assert!(synthetic_user_id("").parse::<u64>().unwrap() < USER_ID_BOUND);
    }

    #[test]
    fn timestamps() {
        assert_eq!(heap_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(heap_timestamp(1_795_860_000), "2026-11-28T10:00:00Z");
        assert_eq!(heap_timestamp(2_033_802_504), "2034-06-13T09:08:24Z");
        assert_eq!(heap_timestamp(-1), "1970-01-01T00:00:00Z");
        assert_eq!(heap_timestamp(i64::MIN), "1970-01-01T00:00:00Z");
        assert_eq!(heap_timestamp(MILLIS_THRESHOLD - 1), "5138-11-16T09:46:39Z");
        assert_eq!(heap_timestamp(2_033_802_504_999), "2034-06-13T09:08:24Z");
        assert_eq!(heap_timestamp(i64::MAX), "9999-12-31T23:59:59Z");
    }
}
