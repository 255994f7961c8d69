//! `parse_batch`: body bytes → [`ValidBatch`] or a [`BatchError`] naming every bad event.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;

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

/// Why one event fails the structural check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventError {
    NotAnObject,
    MissingId,
    IdNotString,
    EmptyId,
    MissingEventType,
    EventTypeNotString,
    MissingTime,
    TimeNotInteger,
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EventError::NotAnObject => "event is not a JSON object",
            EventError::MissingId => "missing `id`",
            EventError::IdNotString => "`id` is not a string",
            EventError::EmptyId => "`id` is empty",
            EventError::MissingEventType => "missing `event_type`",
            EventError::EventTypeNotString => "`event_type` is not a string",
            EventError::MissingTime => "missing `time`",
            EventError::TimeNotInteger => "`time` is not an integer (UNIX seconds)",
        })
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    events: Option<Vec<&'a RawValue>>,
}

/// The fields the structural check needs; everything else stays in the raw bytes.
#[derive(Deserialize)]
struct EventHead<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    event_type: Option<&'a RawValue>,
    #[serde(borrow, default)]
    time: Option<&'a RawValue>,
    #[serde(borrow, default)]
    user: Option<&'a RawValue>,
    #[serde(borrow, default)]
    properties: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct UserHead<'a> {
    #[serde(borrow, default)]
    external_user_id: Option<&'a RawValue>,
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
    if !raw.get().starts_with('{') {
        return Err(EventError::NotAnObject);
    }
    // The envelope already proved `raw` is well-formed JSON; this cannot fail on an object
    // except through duplicate keys, which we treat as malformed.
    let head: EventHead<'_> =
        serde_json::from_str(raw.get()).map_err(|_| EventError::NotAnObject)?;
    let id = string_field(head.id, EventError::MissingId, EventError::IdNotString)?;
    if id.is_empty() {
        return Err(EventError::EmptyId);
    }
    let event_type = string_field(
        head.event_type,
        EventError::MissingEventType,
        EventError::EventTypeNotString,
    )?;
    let time = match head.time {
        None => return Err(EventError::MissingTime),
        Some(t) if t.get() == "null" => return Err(EventError::MissingTime),
        Some(t) => serde_json::from_str::<i64>(t.get()).map_err(|_| EventError::TimeNotInteger)?,
    };
    Ok(ValidEvent {
        id,
        event_type,
        time,
        external_user_id: head.user.and_then(external_user_id),
        raw,
        properties: head.properties,
    })
}

fn string_field<'a>(
    raw: Option<&'a RawValue>,
    missing: EventError,
    wrong_type: EventError,
) -> Result<Cow<'a, str>, EventError> {
    match raw {
        None => Err(missing),
        Some(r) if r.get() == "null" => Err(missing),
        Some(r) => {
            let mut de = serde_json::Deserializer::from_str(r.get());
            Cow::<'a, str>::deserialize(&mut de).map_err(|_| wrong_type)
        }
    }
}

/// A user object that is not an object, or an id that is not a string, means "anonymous":
/// tolerated here, accounted for by the mapping.
fn external_user_id(user: &RawValue) -> Option<Cow<'_, str>> {
    if !user.get().starts_with('{') {
        return None;
    }
    let head: UserHead<'_> = serde_json::from_str(user.get()).ok()?;
    let raw = head.external_user_id?;
    let mut de = serde_json::Deserializer::from_str(raw.get());
    Cow::<str>::deserialize(&mut de).ok()
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
}
