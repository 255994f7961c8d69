//! The mapping from one stored Currents event to Heap items: pure and deterministic.
//!
//! Why pure (no I/O, no clock, no configuration reloading): the queue stores events exactly as
//! Braze sent them and the mapping runs when they are delivered, maybe hours later, maybe again
//! after a dead-letter replay. The same bytes and the same [`MappingOptions`] must always give
//! the same Heap items (and so the same `idempotency_key`), whether in `serve`, in the
//! `transform` dry-run subcommand or in a test. Everything the mapping decides is documented in
//! `docs/MAPPING.md`, whose tables are generated from this module (see [`docs`]).
//!
//! | piece | module |
//! |---|---|
//! | settings (naming, prefix, anonymous handling, include/exclude, drop list) | [`options`] |
//! | event names: table, fallback, custom events, prefix | [`names`] |
//! | identity / synthetic `user_id`, timestamp | [`target`] |
//! | event properties: flattening, coercion, limits | [`properties`] |
//! | user properties (subscriptions, install source, profile) | [`user_properties`] |
//! | the `transform` subcommand (whole payload → request bodies) | [`payload`] |
//!
//! Every item this module returns satisfies [`crate::heap::model::validate_track_item`] /
//! [`crate::heap::model::validate_user_properties_item`] for any input (property-tested).

use std::fmt;

use serde::Serialize;
use serde_json::Value;

pub mod docs;
pub mod names;
pub mod options;
pub mod payload;
pub mod properties;
pub mod target;
pub mod user_properties;

pub use names::{EVENT_NAMES, event_name, event_name_for, friendly_name};
pub use options::{AnonymousMode, MappingOptions, Naming};
pub use payload::{TransformOutput, transform_payload};

use crate::heap::model::{TrackItem, UserPropertiesItem};
use target::Target;

/// Why an event that passed ingest's structural check is not sent to Heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// No `user.external_user_id` (and no synthetic `user_id` possible or configured).
    Anonymous,
    /// A placeholder or over-long `user.external_user_id`.
    InvalidIdentity,
    /// The event type is not included, or is excluded, by the settings.
    Excluded,
    /// Not a JSON object with a non-empty string `id`, a non-empty string `event_type` and an
    /// integer `time`.
    Unparseable,
}

impl SkipReason {
    /// Every reason, in [`SKIP_REASONS`] order.
    pub const ALL: [SkipReason; 4] = [
        SkipReason::Anonymous,
        SkipReason::InvalidIdentity,
        SkipReason::Excluded,
        SkipReason::Unparseable,
    ];

    /// The metric label / log value.
    pub fn as_str(&self) -> &'static str {
        match self {
            SkipReason::Anonymous => "anonymous",
            SkipReason::InvalidIdentity => "invalid_identity",
            SkipReason::Excluded => "excluded",
            SkipReason::Unparseable => "unparseable",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every [`SkipReason::as_str`] value: the bounded `reason` label set of the skip metric.
pub const SKIP_REASONS: &[&str] = &["anonymous", "invalid_identity", "excluded", "unparseable"];

/// The Heap items of one event: always one track item, sometimes user properties.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mapped {
    pub track: TrackItem,
    /// Set only for identified events of the types in
    /// [`user_properties::USER_PROPERTY_EVENTS`] that carried something to set.
    pub user_properties: Option<UserPropertiesItem>,
}

/// Maps one stored Currents event (its raw JSON bytes) to Heap items, or says why it is skipped.
///
/// Checks run in this order: [`SkipReason::Unparseable`] (not an object with a non-empty string
/// `id`, a string `event_type` and an `i64` `time` — ingest's rules — or an empty `event_type`),
/// then
/// [`SkipReason::Excluded`], then the identity ([`target::resolve`]). Never panics.
pub fn map_event(raw: &[u8], opts: &MappingOptions) -> Result<Mapped, SkipReason> {
    let Ok(Value::Object(event)) = serde_json::from_slice::<Value>(raw) else {
        return Err(SkipReason::Unparseable);
    };
    let id = match event.get("id") {
        Some(Value::String(id)) if !id.is_empty() => id,
        _ => return Err(SkipReason::Unparseable),
    };
    // Ingest accepts an empty `event_type`; with no type there is nothing to name the event.
    let event_type = match event.get("event_type") {
        Some(Value::String(t)) if !t.is_empty() => t,
        _ => return Err(SkipReason::Unparseable),
    };
    let time = event
        .get("time")
        .and_then(Value::as_i64)
        .ok_or(SkipReason::Unparseable)?;
    if !opts.includes(event_type) {
        return Err(SkipReason::Excluded);
    }
    let user = event.get("user").and_then(Value::as_object);
    let target = target::resolve(user, opts.anonymous())?;
    let properties = event.get("properties").and_then(Value::as_object);

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
        timestamp: target::heap_timestamp(time),
        idempotency_key: id.clone(),
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
}
