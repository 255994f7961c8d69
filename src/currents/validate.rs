//! `parse_batch`: body bytes → [`ValidBatch`] or a [`BatchError`] naming every bad event.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

pub use super::fields::user_ids;
pub use super::fields::{EventError, EventFields, MAX_ID_BYTES, object_entries, read_event};

/// A structurally valid batch. Borrows from the request body.
#[derive(Debug, Default)]
pub struct ValidBatch<'a> {
    pub events: Vec<ValidEvent<'a>>,
}

/// One event that passed the structural check.
#[derive(Debug)]
pub struct ValidEvent<'a> {
    pub id: Cow<'a, str>,
    pub event_type: Cow<'a, str>,
    /// UNIX seconds, UTC. `i64` because some Avro schemas declare it `long`.
    pub time: i64,
    /// `user.external_user_id` when it is a string; `None` for anonymous users.
    pub external_user_id: Option<Cow<'a, str>>,
    /// `user.user_id` (the Braze user id) when it is a string.
    pub braze_user_id: Option<Cow<'a, str>>,
    /// The event exactly as received.
    pub raw: &'a RawValue,
    /// Its `properties`, unparsed (read only when routing needs `app_group_id`).
    pub properties: Option<&'a RawValue>,
}

impl ValidEvent<'_> {
    /// `properties.app_group_id` when it is a string (the Braze workspace's API id).
    pub fn app_group_id(&self) -> Option<Cow<'_, str>> {
        #[derive(Deserialize)]
        struct Head<'a> {
            #[serde(borrow, default)]
            app_group_id: Option<&'a RawValue>,
        }
        let props = self.properties?;
        if !props.get().starts_with('{') {
            return None;
        }
        let head: Head<'_> = serde_json::from_str(props.get()).ok()?;
        let mut de = serde_json::Deserializer::from_str(head.app_group_id?.get());
        Cow::<str>::deserialize(&mut de).ok()
    }
}

/// Why a whole request is refused with 400.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("body is not a JSON object with an `events` array: {0}")]
    Malformed(String),
    #[error("{} of {total} events failed validation", .errors.len())]
    Invalid {
        total: usize,
        errors: Vec<(usize, EventError)>,
    },
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    events: Option<Vec<&'a RawValue>>,
}

/// Parses and validates a request body.
///
/// An empty (or all-whitespace) body, `{}` and `{"events":[]}` are valid empty batches: Braze
/// sends them to check credentials.
pub fn parse_batch(body: &[u8]) -> Result<ValidBatch<'_>, BatchError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(ValidBatch::default());
    }
    // serde would also build a struct from a JSON array; the envelope must be an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(BatchError::Malformed("expected a JSON object".into()));
    }
    let envelope: Envelope<'_> =
        serde_json::from_slice(body).map_err(|e| BatchError::Malformed(e.to_string()))?;
    let raws = match envelope.events {
        Some(raws) => raws,
        // `{}` is a credential check. An object with other keys but no `events` is not a
        // batch (a single event posted bare, say) and must not be acknowledged as empty.
        None if is_empty_object(body) => Vec::new(),
        None => {
            return Err(BatchError::Malformed(
                "the object has no `events` array (a Currents batch is {\"events\":[...]})".into(),
            ));
        }
    };
    let total = raws.len();
    let mut events = Vec::with_capacity(total);
    let mut errors = Vec::new();
    for (index, raw) in raws.into_iter().enumerate() {
        match validate_event(raw) {
            Ok(ev) if errors.is_empty() => events.push(ev),
            Ok(_) => {}
            Err(e) => errors.push((index, e)),
        }
    }
    if errors.is_empty() {
        Ok(ValidBatch { events })
    } else {
        Err(BatchError::Invalid { total, errors })
    }
}

fn is_empty_object(body: &[u8]) -> bool {
    serde_json::from_slice::<std::collections::BTreeMap<String, serde::de::IgnoredAny>>(body)
        .is_ok_and(|m| m.is_empty())
}

fn validate_event(raw: &RawValue) -> Result<ValidEvent<'_>, EventError> {
    let head = read_event(raw.get())?;
    if head.id.len() > MAX_ID_BYTES {
        return Err(EventError::IdTooLong);
    }
    let (external_user_id, braze_user_id) = head.user.map(user_ids).unwrap_or_default();
    Ok(ValidEvent {
        external_user_id,
        braze_user_id,
        id: head.id,
        event_type: head.event_type,
        time: head.time,
        raw,
        properties: head.properties,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> usize {
        parse_batch(body.as_bytes()).expect("valid").events.len()
    }

    fn bad(body: &str) -> Vec<(usize, EventError)> {
        match parse_batch(body.as_bytes()) {
            Err(BatchError::Invalid { errors, .. }) => errors,
            other => panic!("expected invalid events, got {other:?}"),
        }
    }

    #[test]
    fn empty_forms_are_empty_batches() {
        for body in ["", "  \n", "{}", " { } ", r#"{"events":[]}"#] {
            assert_eq!(ok(body), 0, "{body:?}");
        }
    }

    #[test]
    fn tolerant_of_unknown_types_fields_nulls_and_empty_user() {
        let body = r#"{"events":[
            {"event_type":"users.brand.NewThing","id":"a","time":1,"user":{},"properties":null,"x":[1]},
            {"event_type":"users.messages.email.Send","id":"b","time":9007199254740993,"user":null},
            {"event_type":"t","id":"c","time":-5}
        ], "extra": true}"#;
        let batch = parse_batch(body.as_bytes()).unwrap();
        assert_eq!(batch.events.len(), 3);
        assert_eq!(batch.events[1].time, 9_007_199_254_740_993);
        assert!(batch.events.iter().all(|e| e.external_user_id.is_none()));
    }

    #[test]
    fn extracts_identity_and_keeps_raw_bytes() {
        let body = r#"{"events":[{"id":"i\"d","event_type":"e","time":2,"user":{"external_user_id":"u-1"}}]}"#;
        let batch = parse_batch(body.as_bytes()).unwrap();
        let ev = &batch.events[0];
        assert_eq!(ev.id, "i\"d");
        assert_eq!(ev.external_user_id.as_deref(), Some("u-1"));
        assert_eq!(ev.app_group_id(), None);
        let with_group = r#"{"events":[{"id":"a","event_type":"e","time":2,"properties":{"x":{"app_group_id":"no"},"app_group_id":"g-1"}}]}"#;
        let batch = parse_batch(with_group.as_bytes()).unwrap();
        assert_eq!(batch.events[0].app_group_id().as_deref(), Some("g-1"));
        assert!(ev.raw.get().starts_with("{\"id\""));
    }

    #[test]
    fn envelope_errors_are_malformed() {
        for body in [
            "nope",
            "[]",
            r#"{"events":{}}"#,
            r#"{"events":[1,"#,
            "\u{0}",
        ] {
            assert!(
                matches!(parse_batch(body.as_bytes()), Err(BatchError::Malformed(_))),
                "{body:?}"
            );
        }
    }

    #[test]
    fn every_bad_event_is_named_by_index() {
        let body = r#"{"events":[
            {"id":"ok","event_type":"e","time":1},
            "string",
            {"event_type":"e","time":1},
            {"id":7,"event_type":"e","time":1},
            {"id":"x","time":1},
            {"id":"x","event_type":["e"],"time":1},
            {"id":"x","event_type":"e"},
            {"id":"x","event_type":"e","time":1.5},
            {"id":"x","event_type":"e","time":"1"},
            {"id":"","event_type":"e","time":1},
            {"id":null,"event_type":"e","time":1}
        ]}"#;
        assert_eq!(
            bad(body),
            vec![
                (1, EventError::NotAnObject),
                (2, EventError::MissingId),
                (3, EventError::IdNotString),
                (4, EventError::MissingEventType),
                (5, EventError::EventTypeNotString),
                (6, EventError::MissingTime),
                (7, EventError::TimeNotInteger),
                (8, EventError::TimeNotInteger),
                (9, EventError::EmptyId),
                (10, EventError::MissingId),
            ]
        );
    }

    #[test]
    fn duplicate_keys_that_are_read_are_named() {
        for key in ["id", "event_type", "time", "user", "properties"] {
            let body = format!(
                r#"{{"events":[{{"id":"a","event_type":"e","time":1,"user":{{}},"properties":{{}},"{key}":"x"}}]}}"#
            );
            assert_eq!(
                bad(&body),
                vec![(0, EventError::DuplicateKey(key))],
                "{key}"
            );
            let reason = EventError::DuplicateKey(key).to_string();
            assert!(
                reason.contains(&format!("duplicate key `{key}`")),
                "{reason}"
            );
        }
        // An escaped spelling of the same key is the same key.
        let body = r#"{"events":[{"id":"a","i\u0064":"b","event_type":"e","time":1}]}"#;
        assert_eq!(bad(body), vec![(0, EventError::DuplicateKey("id"))]);
        // Keys the check does not read may repeat (Braze never does it; nothing depends on them).
        assert_eq!(
            ok(r#"{"events":[{"id":"a","event_type":"e","time":1,"x":1,"x":2}]}"#),
            1
        );
    }

    #[test]
    fn time_beyond_i64_is_out_of_range_not_a_non_integer() {
        for time in [
            "18446744073709551615",
            "9223372036854775808",
            "-9223372036854775809",
        ] {
            let body = format!(r#"{{"events":[{{"id":"a","event_type":"e","time":{time}}}]}}"#);
            assert_eq!(bad(&body), vec![(0, EventError::TimeOutOfRange)], "{time}");
        }
        assert!(
            EventError::TimeOutOfRange
                .to_string()
                .contains("out of range")
        );
        for time in ["9223372036854775807", "-9223372036854775808", "-0"] {
            let body = format!(r#"{{"events":[{{"id":"a","event_type":"e","time":{time}}}]}}"#);
            assert_eq!(ok(&body), 1, "{time}");
        }
        for time in ["1e3", "1.0", "-1.5"] {
            let body = format!(r#"{{"events":[{{"id":"a","event_type":"e","time":{time}}}]}}"#);
            assert_eq!(bad(&body), vec![(0, EventError::TimeNotInteger)], "{time}");
        }
    }

    #[test]
    fn ids_are_bounded_in_length() {
        let at_limit = "é".repeat(MAX_ID_BYTES / 2);
        let body = format!(r#"{{"events":[{{"id":"{at_limit}","event_type":"e","time":1}}]}}"#);
        assert_eq!(ok(&body), 1);
        let over = "a".repeat(MAX_ID_BYTES + 1);
        let body = format!(r#"{{"events":[{{"id":"{over}","event_type":"e","time":1}}]}}"#);
        assert_eq!(bad(&body), vec![(0, EventError::IdTooLong)]);
        assert!(EventError::IdTooLong.to_string().contains("1024 bytes"));
        // The mapping reads stored events without the limit.
        assert_eq!(read_event(&body[11..body.len() - 2]).unwrap().id, over);
    }

    #[test]
    fn a_repeated_external_user_id_counts_with_its_last_value() {
        let body = r#"{"events":[{"id":"a","event_type":"e","time":1,
            "user":{"external_user_id":"first","external_user_id":"last"}}]}"#;
        let batch = parse_batch(body.as_bytes()).unwrap();
        assert_eq!(batch.events[0].external_user_id.as_deref(), Some("last"));
    }

    #[test]
    fn lone_surrogates_in_read_strings_are_named() {
        let body = r#"{"events":[{"id":"\ud800","event_type":"e","time":1},{"id":"a","event_type":"\udc00x","time":1}]}"#;
        assert_eq!(
            bad(body),
            vec![
                (0, EventError::InvalidEscape("id")),
                (1, EventError::InvalidEscape("event_type"))
            ]
        );
    }

    #[test]
    fn unrepresentable_or_deep_values_below_the_top_level_pass() {
        let deep_array = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let deep_object = format!("{}1{}", r#"{"a":"#.repeat(100_000), "}".repeat(100_000));
        let body = format!(
            r#"{{"events":[{{"id":"a","event_type":"e","time":1,"user":{{"external_user_id":"u","x":{deep_array}}},
                "properties":{{"n":1e999,"s":"\ud800","d":{deep_array},"o":{deep_object}}}}}]}}"#
        );
        let batch = parse_batch(body.as_bytes()).expect("accepted");
        assert_eq!(batch.events[0].external_user_id.as_deref(), Some("u"));
        assert!(batch.events[0].properties.unwrap().get().contains("1e999"));
    }
}
