//! The mapping from one stored Currents event to Heap items: pure and deterministic.
//!
//! Why pure (no I/O, no clock, no configuration reloading): the queue stores events exactly as
//! Braze sent them and the mapping runs when they are delivered, maybe hours later, maybe again
//! after a dead-letter replay. The same bytes and the same [`MappingOptions`] must always give
//! the same Heap items (and so the same `idempotency_key`), whether in `serve`, in the
//! `transform` dry-run subcommand or in a test. (Its one side effect, counting the values it
//! leaves out in a process-wide metric, never changes a result.) Everything the mapping decides
//! is documented in `docs/MAPPING.md`, whose tables are generated from this module (see
//! [`docs`]).
//!
//! | piece | module |
//! |---|---|
//! | settings (naming, prefix, anonymous handling, include/exclude, drop list) | [`options`] |
//! | event names: table, fallback, custom events, prefix | [`names`] |
//! | identity / synthetic `user_id`, timestamp | [`target`] |
//! | event properties: flattening, coercion, limits | [`properties`] |
//! | reading stored values one by one (unreadable values dropped, not the event) | [`read`] |
//! | user properties (subscriptions, install source, profile) | [`user_properties`] |
//! | the `transform` subcommand (whole payload → request bodies) | [`payload`] |
//!
//! Every item this module returns satisfies [`crate::heap::model::validate_track_item`] /
//! [`crate::heap::model::validate_user_properties_item`] for any input (property-tested).

use std::fmt;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

pub mod docs;
pub mod names;
pub mod options;
pub mod payload;
pub mod properties;
pub mod read;
pub mod target;
pub mod user_properties;

pub use names::{EVENT_NAMES, event_name, event_name_for, friendly_name};
pub use options::{AnonymousMode, MappingOptions, Naming};
pub use payload::{TransformOutput, transform_payload};
pub use read::{DROP_REASONS, DropReason, DroppedValue};

use crate::currents::catalogue::USER_DELETE_REQUEST;
use crate::currents::read_event;
use crate::heap::model::{TrackItem, UserPropertiesItem};
use target::Target;

/// Why an event that passed ingest's structural check is not sent to Heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// No `user.external_user_id` (and no synthetic `user_id` possible or configured).
    Anonymous,
    /// A placeholder or over-long `user.external_user_id`, or one holding a control or format
    /// character ([`target::is_invisible_control`]).
    InvalidIdentity,
    /// The event type is not included, or is excluded, by the settings.
    Excluded,
    /// Not a JSON object with a non-empty string `id`, a non-empty string `event_type` and an
    /// integer `time`.
    Unparseable,
    /// A `users.UserDeleteRequest`: a deletion, never a tracked event (product.md §7). Ingest
    /// handles it; the mapping meets one only without a `user.user_id`, or through `transform`.
    UserDeletion,
    /// An event of a Braze user deleted earlier (a tombstone): acknowledged, never sent.
    /// Counted by ingest; the mapping never returns it.
    DeletedUser,
    /// A user-property update older (by Braze event time) than the value Heap last accepted
    /// for that identity and property (product.md §9): the event's track item is delivered,
    /// those properties are not sent. Counted by delivery; the mapping never returns it.
    StaleUserProperty,
}

impl SkipReason {
    /// Every reason, in [`SKIP_REASONS`] order.
    pub const ALL: [SkipReason; 7] = [
        SkipReason::Anonymous,
        SkipReason::InvalidIdentity,
        SkipReason::Excluded,
        SkipReason::Unparseable,
        SkipReason::UserDeletion,
        SkipReason::DeletedUser,
        SkipReason::StaleUserProperty,
    ];

    /// The metric label / log value.
    pub fn as_str(&self) -> &'static str {
        match self {
            SkipReason::Anonymous => "anonymous",
            SkipReason::InvalidIdentity => "invalid_identity",
            SkipReason::Excluded => "excluded",
            SkipReason::Unparseable => "unparseable",
            SkipReason::UserDeletion => "user_deletion",
            SkipReason::DeletedUser => "deleted_user",
            SkipReason::StaleUserProperty => "stale_user_property",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every [`SkipReason::as_str`] value: the bounded `reason` label set of the skip metric.
pub const SKIP_REASONS: &[&str] = &[
    "anonymous",
    "invalid_identity",
    "excluded",
    "unparseable",
    "user_deletion",
    "deleted_user",
    "stale_user_property",
];

/// The Heap items of one event: always one track item, sometimes user properties.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mapped {
    pub track: TrackItem,
    /// Set only for identified events of the types in
    /// [`user_properties::USER_PROPERTY_EVENTS`] that carried something to set.
    pub user_properties: Option<UserPropertiesItem>,
    /// Values of `user` and `properties` left out because Heap (or any JSON reader) cannot take
    /// them: the rest of the event is sent. Counted by `serve` in
    /// `currents_heap_properties_dropped_total{reason}`, printed by `transform`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<DroppedValue>,
}

/// Longest event `id` sent verbatim as the Heap `idempotency_key`, in bytes. Braze ids are
/// 36-character UUIDs; ingest refuses ids over [`crate::currents::MAX_ID_BYTES`] (1024 bytes).
pub const MAX_VERBATIM_ID_BYTES: usize = 255;

/// What a hashed `idempotency_key` starts with.
pub const HASHED_KEY_PREFIX: &str = "sha256:";

/// The Heap `idempotency_key` of an event `id`: the id itself when it has at most
/// [`MAX_VERBATIM_ID_BYTES`] bytes, else `sha256:` and the 64 lowercase hex digits of the
/// SHA-256 of its UTF-8 bytes, so keys stay bounded (Heap documents no limit; every re-send of
/// an event still gets the same key). An id that itself starts with `sha256:` is hashed too, so
/// a verbatim id can never equal the key of another, long one.
pub fn idempotency_key(id: &str) -> String {
    if id.len() <= MAX_VERBATIM_ID_BYTES && !id.starts_with(HASHED_KEY_PREFIX) {
        return id.to_owned();
    }
    let digest = Sha256::digest(id.as_bytes());
    let mut key = String::with_capacity(HASHED_KEY_PREFIX.len() + 64);
    key.push_str(HASHED_KEY_PREFIX);
    for b in digest.iter() {
        key.push_str(&format!("{b:02x}"));
    }
    key
}

/// Maps one stored Currents event (its raw JSON bytes) to Heap items, or says why it is skipped.
///
/// Checks run in this order: [`SkipReason::Unparseable`] (not an object with a non-empty string
/// `id`, a string `event_type` and an `i64` `time`, each named once — ingest's rules, read by the
/// same [`crate::currents::read_event`] — or an empty `event_type`), then
/// [`SkipReason::Excluded`], then the identity ([`target::resolve`]). Values of `user` and
/// `properties` that cannot be read are left out one by one ([`read`]) and listed in
/// [`Mapped::dropped`]; they never cost the event. Never panics, and never recurses deeper than
/// [`read::MAX_DEPTH`] whatever the input.
pub fn map_event(raw: &[u8], opts: &MappingOptions) -> Result<Mapped, SkipReason> {
    let text = std::str::from_utf8(raw).map_err(|_| SkipReason::Unparseable)?;
    let head = read_event(text).map_err(|_| SkipReason::Unparseable)?;
    let (id, event_type) = (head.id.as_ref(), head.event_type.as_ref());
    // Ingest accepts an empty `event_type`; with no type there is nothing to name the event.
    if event_type.is_empty() {
        return Err(SkipReason::Unparseable);
    }
    if event_type == USER_DELETE_REQUEST {
        return Err(SkipReason::UserDeletion);
    }
    if !opts.includes(event_type) {
        return Err(SkipReason::Excluded);
    }
    let mut reader = read::Reader::default();
    let user = head
        .user
        .and_then(|u| reader.fields(u, target::USER_FIELDS, "user"));
    let target = target::resolve(user.as_ref(), opts.anonymous())?;
    let properties = head.properties.and_then(|p| reader.object(p, "properties"));
    let (user, properties) = (user.as_ref(), properties.as_ref());

    let custom_name = properties
        .and_then(|p| p.get("name"))
        .and_then(Value::as_str);
    let (identity, user_id) = match &target {
        Target::Identity(identity) => (Some(identity.clone()), None),
        Target::UserId(user_id) => (None, Some(user_id.clone())),
    };
    let track = TrackItem {
        identity,
        user_id,
        event: event_name_for(event_type, custom_name, opts),
        timestamp: target::heap_timestamp(head.time),
        idempotency_key: idempotency_key(id),
        properties: properties::event_properties(event_type, id, user, properties, opts),
    };
    let user_properties = match target {
        Target::Identity(identity) => {
            let props = user_properties::user_properties(event_type, user, properties, opts);
            (!props.is_empty()).then_some(UserPropertiesItem {
                identity,
                properties: props,
            })
        }
        Target::UserId(_) => None,
    };
    Ok(Mapped {
        track,
        user_properties,
        dropped: reader.dropped,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::heap::model::{validate_track_item, validate_user_properties_item};

    fn map(event: Value, opts: &MappingOptions) -> Result<Mapped, SkipReason> {
        map_event(event.to_string().as_bytes(), opts)
    }

    fn opts(anonymous: &str, include: &[&str], exclude: &[&str]) -> MappingOptions {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        MappingOptions::from_parts(None, None, Some(anonymous), &s(include), &s(exclude), &[])
            .unwrap()
    }

    fn email_send() -> Value {
        json!({
            "event_type": "users.messages.email.Send", "id": "ev-1", "time": 1795860000,
            "user": {"user_id": "b-1", "external_user_id": "alice", "timezone": "UTC"},
            "properties": {"campaign_name": "Welcome", "email_address": "a@x"}
        })
    }

    #[test]
    fn maps_an_identified_event() {
        let m = map(email_send(), &MappingOptions::default()).unwrap();
        assert_eq!(
            serde_json::to_value(&m.track).unwrap(),
            json!({
                "identity": "alice", "event": "Email Sent", "timestamp": "2026-11-28T10:00:00Z",
                "idempotency_key": "ev-1",
                "properties": {"braze_event_type": "users.messages.email.Send", "braze_event_id": "ev-1",
                    "braze_user_id": "b-1", "braze_timezone": "UTC", "campaign_name": "Welcome",
                    "email_address": "a@x"}
            })
        );
        assert_eq!(m.user_properties, None);
        assert_eq!(validate_track_item(&m.track), Ok(()));
        assert_eq!(m.track.budget_key(), "alice");
    }

    #[test]
    fn unparseable_inputs() {
        let o = MappingOptions::default();
        for raw in [
            &b""[..],
            b"nope",
            b"[]",
            b"\"s\"",
            b"{",
            b"\xff{}",
            b"{\"id\":\"a\"}",
        ] {
            assert_eq!(map_event(raw, &o), Err(SkipReason::Unparseable), "{raw:?}");
        }
        for (field, value) in [
            ("id", json!("")),
            ("id", json!(1)),
            ("id", json!(null)),
            ("event_type", json!(1)),
            ("event_type", json!("")),
            ("time", json!(1.5)),
            ("time", json!("1")),
            ("time", json!(u64::MAX)),
        ] {
            let mut e = email_send();
            e[field] = value;
            assert_eq!(map(e, &o), Err(SkipReason::Unparseable), "{field}");
        }
    }

    #[test]
    fn include_and_exclude() {
        let e = email_send();
        assert!(map(e.clone(), &opts("skip", &["users.messages.*"], &[])).is_ok());
        assert_eq!(
            map(e.clone(), &opts("skip", &["users.behaviors.*"], &[])),
            Err(SkipReason::Excluded)
        );
        assert_eq!(
            map(e.clone(), &opts("skip", &[], &["*.email.*"])),
            Err(SkipReason::Excluded)
        );
        // Excluded is decided before the identity: an excluded anonymous event is "excluded".
        let mut anon = e;
        anon["user"] = json!({});
        assert_eq!(
            map(anon, &opts("skip", &[], &["*"])),
            Err(SkipReason::Excluded)
        );
    }

    #[test]
    fn anonymous_handling() {
        let mut e = email_send();
        e["user"] = json!({"user_id": "b-1"});
        assert_eq!(
            map(e.clone(), &MappingOptions::default()),
            Err(SkipReason::Anonymous)
        );
        let m = map(e.clone(), &opts("synthetic_user_id", &[], &[])).unwrap();
        assert_eq!(m.track.identity, None);
        assert_eq!(
            m.track.user_id.as_deref(),
            Some(target::synthetic_user_id("b-1").as_str())
        );
        assert_eq!(validate_track_item(&m.track), Ok(()));
        e["user"] = json!({"user_id": "b-1", "external_user_id": "undefined"});
        assert_eq!(
            map(e.clone(), &MappingOptions::default()),
            Err(SkipReason::InvalidIdentity)
        );
        assert!(
            map(e, &opts("synthetic_user_id", &[], &[]))
                .unwrap()
                .track
                .user_id
                .is_some()
        );
    }

    #[test]
    fn user_properties_need_an_identity() {
        let event = json!({
            "event_type": "users.behaviors.InstallAttribution", "id": "i", "time": 1,
            "user": {"user_id": "b", "external_user_id": "alice"}, "properties": {"source": "ads"}
        });
        let m = map(event.clone(), &MappingOptions::default()).unwrap();
        let up = m.user_properties.unwrap();
        assert_eq!(
            serde_json::to_value(&up).unwrap(),
            json!({"identity": "alice", "properties": {"braze_install_source": "ads"}})
        );
        assert_eq!(validate_user_properties_item(&up), Ok(()));
        let mut anon = event;
        anon["user"] = json!({"user_id": "b"});
        let m = map(anon, &opts("synthetic_user_id", &[], &[])).unwrap();
        assert_eq!(m.user_properties, None);
    }

    #[test]
    fn custom_event_name_and_properties() {
        let event = json!({
            "event_type": "users.behaviors.CustomEvent", "id": "i", "time": 1,
            "user": {"external_user_id": "alice"},
            "properties": {"name": "Added to Cart", "custom_properties": {"sku": "s", "id": 7}}
        });
        let m = map(event, &MappingOptions::default()).unwrap();
        assert_eq!(m.track.event, "Added to Cart");
        assert_eq!(
            m.track.properties["sku"],
            crate::heap::model::PropertyValue::Str("s".into())
        );
        assert!(m.track.properties.contains_key("_id"));
        assert_eq!(validate_track_item(&m.track), Ok(()));
    }

    #[test]
    fn skip_reasons_are_listed() {
        let listed: Vec<&str> = SkipReason::ALL.iter().map(SkipReason::as_str).collect();
        assert_eq!(listed, SKIP_REASONS);
        assert_eq!(SkipReason::InvalidIdentity.to_string(), "invalid_identity");
    }

    #[test]
    fn an_unreadable_value_costs_only_itself() {
        let deep_array = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let deep_object = format!("{}1{}", r#"{"a":"#.repeat(100_000), "}".repeat(100_000));
        let raw = format!(
            r#"{{"event_type":"users.behaviors.InstallAttribution","id":"ev","time":1795860000,
                "user":{{"external_user_id":"alice","user_id":"b-1","device_id":1e999,"other":{deep_array}}},
                "properties":{{"source":"ads","big":1e999,"s":"\ud800","list":[1,-1e400,2],
                    "deep":{deep_array},"obj":{{"kept":true,"deeper":{deep_object}}}}}}}"#
        );
        let m = map_event(raw.as_bytes(), &MappingOptions::default()).expect("mapped");
        assert_eq!(
            serde_json::to_value(&m.track.properties).unwrap(),
            json!({"braze_event_type": "users.behaviors.InstallAttribution", "braze_event_id": "ev",
                   "braze_user_id": "b-1", "source": "ads", "list": "1||2", "obj.kept": "true"})
        );
        assert_eq!(m.track.identity.as_deref(), Some("alice"));
        assert_eq!(validate_track_item(&m.track), Ok(()));
        let up = m.user_properties.as_ref().unwrap();
        assert_eq!(
            serde_json::to_value(&up.properties).unwrap(),
            json!({"braze_install_source": "ads"})
        );
        let dropped: Vec<(&str, DropReason)> = m
            .dropped
            .iter()
            .map(|d| (d.path.as_str(), d.reason))
            .collect();
        assert_eq!(
            dropped,
            [
                ("user.device_id", DropReason::NonFiniteNumber),
                ("properties.big", DropReason::NonFiniteNumber),
                ("properties.s", DropReason::InvalidString),
                ("properties.list[1]", DropReason::NonFiniteNumber),
                (
                    &*format!("properties.deep{}", "[0]".repeat(31)),
                    DropReason::TooDeep
                ),
                (
                    &*format!("properties.obj.deeper{}", ".a".repeat(30)),
                    DropReason::TooDeep
                ),
            ]
        );
        // Deterministic, drops included.
        assert_eq!(map_event(raw.as_bytes(), &MappingOptions::default()), Ok(m));
    }

    #[test]
    fn long_ids_become_hashed_idempotency_keys() {
        let at_limit = "u".repeat(MAX_VERBATIM_ID_BYTES);
        assert_eq!(idempotency_key(&at_limit), at_limit);
        assert_eq!(idempotency_key("ev-1"), "ev-1");
        let long = "u".repeat(MAX_VERBATIM_ID_BYTES + 1);
        let key = idempotency_key(&long);
        // Pinned: a different derivation would let re-sent events double in Heap.
        let digest = Sha256::digest(long.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(key, format!("sha256:{hex}"));
        assert_eq!(
            idempotency_key("abc".repeat(100).as_str()),
            idempotency_key("abc".repeat(100).as_str())
        );
        assert_ne!(idempotency_key(&long), idempotency_key(&format!("{long}x")));
        // No verbatim key can pose as a hashed one.
        assert!(idempotency_key(&key).starts_with("sha256:"));
        assert_ne!(idempotency_key(&key), key);

        let mut e = email_send();
        e["id"] = json!("é".repeat(600));
        let m = map(e, &MappingOptions::default()).unwrap();
        assert_eq!(m.track.idempotency_key, idempotency_key(&"é".repeat(600)));
        assert_eq!(m.track.idempotency_key.len(), 71);
        assert_eq!(
            m.track.properties["braze_event_id"],
            crate::heap::model::PropertyValue::Str("é".repeat(600))
        );
        assert_eq!(validate_track_item(&m.track), Ok(()));
    }

    #[test]
    fn fields_are_read_as_ingest_reads_them() {
        let raw = br#"{"event_type":"users.messages.email.Send","id":"a","time":-0,"user":{"external_user_id":"u"}}"#;
        let m = map_event(raw, &MappingOptions::default()).unwrap();
        assert_eq!(m.track.timestamp, "1970-01-01T00:00:00Z");
        // A repeated `external_user_id` counts with its last value, as ingest reads it.
        let twice = br#"{"event_type":"users.messages.email.Send","id":"a","time":1,"user":{"external_user_id":"first","external_user_id":"last"}}"#;
        let m = map_event(twice, &MappingOptions::default()).unwrap();
        assert_eq!(m.track.identity.as_deref(), Some("last"));
        let dup = br#"{"event_type":"users.messages.email.Send","id":"a","id":"b","time":1,"user":{"external_user_id":"u"}}"#;
        assert_eq!(
            map_event(dup, &MappingOptions::default()),
            Err(SkipReason::Unparseable)
        );
    }
}
