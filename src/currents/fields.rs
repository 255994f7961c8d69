//! Reading one event's top-level fields in one pass, without parsing what lies below them:
//! the structural check ([`super::parse_batch`]) and the mapping both read events here, so
//! ingest and delivery agree on every field.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

/// Longest accepted event `id`, in bytes. A Braze id is a 36-character UUID; a longer one is
/// not a Braze id, and an unbounded one would be stored, remembered by the dedup window and sent
/// to Heap at any size. (Ids over `transform::MAX_VERBATIM_ID_BYTES` are sent to
/// Heap as a hash.)
pub const MAX_ID_BYTES: usize = 1024;

/// Why one event fails the structural check. Braze drops an event that gets a second 400, so
/// each reason names exactly what is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventError {
    NotAnObject,
    /// One of the keys the check reads (`id`, `event_type`, `time`, `user`, `properties`)
    /// appears twice: which value counts would be a guess.
    DuplicateKey(&'static str),
    MissingId,
    IdNotString,
    EmptyId,
    /// Longer than [`MAX_ID_BYTES`].
    IdTooLong,
    MissingEventType,
    EventTypeNotString,
    /// A string field (`id`, `event_type`) with a `\u` escape of a lone UTF-16 surrogate: valid
    /// JSON syntax, but no Unicode text.
    InvalidEscape(&'static str),
    MissingTime,
    TimeNotInteger,
    /// An integer, but outside `i64`.
    TimeOutOfRange,
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventError::NotAnObject => f.write_str("event is not a JSON object"),
            EventError::DuplicateKey(key) => write!(
                f,
                "duplicate key `{key}`: the event names it more than once, so its value is ambiguous"
            ),
            EventError::MissingId => f.write_str("missing `id`"),
            EventError::IdNotString => f.write_str("`id` is not a string"),
            EventError::EmptyId => f.write_str("`id` is empty"),
            EventError::IdTooLong => write!(
                f,
                "`id` is longer than {MAX_ID_BYTES} bytes (a Braze event id is a 36-character UUID)"
            ),
            EventError::MissingEventType => f.write_str("missing `event_type`"),
            EventError::EventTypeNotString => f.write_str("`event_type` is not a string"),
            EventError::InvalidEscape(key) => write!(
                f,
                "`{key}` contains a \\u escape of a lone UTF-16 surrogate, which is not text"
            ),
            EventError::MissingTime => f.write_str("missing `time`"),
            EventError::TimeNotInteger => f.write_str("`time` is not an integer (UNIX seconds)"),
            EventError::TimeOutOfRange => f.write_str(
                "`time` is out of range: UNIX seconds must fit in a signed 64-bit integer \
                 (-9223372036854775808 to 9223372036854775807)",
            ),
        }
    }
}

/// The top-level fields of one event, as the structural check reads them.
#[derive(Debug)]
pub struct EventFields<'a> {
    pub id: Cow<'a, str>,
    pub event_type: Cow<'a, str>,
    pub time: i64,
    /// `user`, unparsed (any JSON value, `null` included).
    pub user: Option<&'a RawValue>,
    /// `properties`, unparsed (any JSON value, `null` included).
    pub properties: Option<&'a RawValue>,
}

/// Reads the top-level fields of one event (the JSON text of one element of `events`): the
/// structural check without the length limit of `id` (the mapping reads stored events with it,
/// so that ingest and delivery agree on every field).
///
/// Every key is looked at once and nothing below the top level is parsed, so the cost is one
/// pass over the event and never depends on how deeply its values nest.
pub fn read_event(text: &str) -> Result<EventFields<'_>, EventError> {
    if !text.trim_start().starts_with('{') {
        return Err(EventError::NotAnObject);
    }
    // Well-formed JSON (the envelope was parsed already, or the store holds what ingest took),
    // so this fails only on text no JSON parser would take, which is not an event either.
    let [mut id, mut event_type, mut time, mut user, mut properties] = [None; 5];
    let mut duplicate = None;
    visit_entries(text, |key, value| {
        let (slot, name) = match key.as_ref() {
            "id" => (&mut id, "id"),
            "event_type" => (&mut event_type, "event_type"),
            "time" => (&mut time, "time"),
            "user" => (&mut user, "user"),
            "properties" => (&mut properties, "properties"),
            _ => return,
        };
        if slot.replace(value).is_some() {
            duplicate.get_or_insert(name);
        }
    })
    .map_err(|_| EventError::NotAnObject)?;
    if let Some(name) = duplicate {
        return Err(EventError::DuplicateKey(name));
    }
    let id = string_field(id, "id", EventError::MissingId, EventError::IdNotString)?;
    if id.is_empty() {
        return Err(EventError::EmptyId);
    }
    let event_type = string_field(
        event_type,
        "event_type",
        EventError::MissingEventType,
        EventError::EventTypeNotString,
    )?;
    let time = match time {
        None => return Err(EventError::MissingTime),
        Some(t) if t.get() == "null" => return Err(EventError::MissingTime),
        Some(t) => match serde_json::from_str::<i64>(t.get()) {
            Ok(time) => time,
            // An integer literal serde_json does not read as an `i64`: `-0` (which it reads as
            // a float) or beyond the range.
            Err(_) if is_integer_literal(t.get()) => t
                .get()
                .parse::<i128>()
                .ok()
                .and_then(|n| i64::try_from(n).ok())
                .ok_or(EventError::TimeOutOfRange)?,
            Err(_) => return Err(EventError::TimeNotInteger),
        },
    };
    Ok(EventFields {
        id,
        event_type,
        time,
        user,
        properties,
    })
}

/// A JSON integer literal: an optional minus sign and digits only (no fraction, no exponent).
fn is_integer_literal(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// The entries of a JSON object, in document order, duplicates included, values unparsed.
///
/// serde_json skips a value it does not parse without recursion, so this never exhausts the
/// stack however deep the values nest. `Err` when `text` is not an object, or when a key is a
/// string with a lone UTF-16 surrogate escape (`"\ud800"`), which no Rust string can hold.
pub fn object_entries(text: &str) -> Result<Vec<(Cow<'_, str>, &RawValue)>, serde_json::Error> {
    let mut out = Vec::new();
    visit_entries(text, |key, value| out.push((key, value)))?;
    Ok(out)
}

/// [`object_entries`] without collecting them: `f` sees each key and unparsed value in order
/// (the accept path reads every event this way, so it allocates nothing per event).
pub(super) fn visit_entries<'a>(
    text: &'a str,
    f: impl FnMut(Cow<'a, str>, &'a RawValue),
) -> Result<(), serde_json::Error> {
    struct Entries<F>(F);
    impl<'de, F: FnMut(Cow<'de, str>, &'de RawValue)> Visitor<'de> for Entries<F> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
            while let Some(Key(key)) = map.next_key()? {
                let value = map.next_value::<&RawValue>()?;
                (self.0)(key, value);
            }
            Ok(())
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_map(Entries(f))?;
    de.end()
}

/// An object key, borrowed from the input unless it holds escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

fn string_field<'a>(
    raw: Option<&'a RawValue>,
    name: &'static str,
    missing: EventError,
    wrong_type: EventError,
) -> Result<Cow<'a, str>, EventError> {
    match raw {
        None => Err(missing),
        Some(r) if r.get() == "null" => Err(missing),
        Some(r) if !r.get().starts_with('"') => Err(wrong_type),
        Some(r) => {
            let mut de = serde_json::Deserializer::from_str(r.get());
            // A string that does not parse is one with a lone surrogate escape.
            Key::deserialize(&mut de)
                .map(|k| k.0)
                .map_err(|_| EventError::InvalidEscape(name))
        }
    }
}

/// The ids of a `user` object: `external_user_id` and `user_id` (the Braze id), each when it
/// is a string.
///
/// A user object that is not an object, or an id that is not a string, means "anonymous":
/// tolerated here, accounted for by the mapping. A repeated key counts with its last value, as
/// in the mapping (and in serde_json's own `Value`).
pub fn user_ids(user: &RawValue) -> (Option<Cow<'_, str>>, Option<Cow<'_, str>>) {
    if !user.get().starts_with('{') {
        return (None, None);
    }
    let (mut external, mut braze) = (None, None);
    if visit_entries(user.get(), |key, value| match key.as_ref() {
        "external_user_id" => external = Some(value),
        "user_id" => braze = Some(value),
        _ => {}
    })
    .is_err()
    {
        return (None, None);
    }
    (string_value(external), string_value(braze))
}

fn string_value(raw: Option<&RawValue>) -> Option<Cow<'_, str>> {
    let mut de = serde_json::Deserializer::from_str(raw?.get());
    Key::deserialize(&mut de).ok().map(|k| k.0)
}
