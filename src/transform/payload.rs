//! The `transform` subcommand's logic: a whole Currents payload → the Heap request bodies.
//!
//! Why here and not in `main.rs`: the dry run is only trustworthy if it runs the very code
//! `serve` runs. The structural check is [`crate::currents::parse_batch`] (so the subcommand
//! fails exactly when ingest would answer 400), each event goes through [`super::map_event`],
//! and the bodies come from the batch builder delivery uses ([`crate::heap::bulk`]): the same
//! cuts by count and bytes, and the same merge of user-property updates per identity.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

use serde::de::IgnoredAny;
use serde_json::Value;

use super::{DroppedValue, MappingOptions, SkipReason, map_event};
use crate::currents::{BatchError, parse_batch};
use crate::heap::bulk;
use crate::heap::model::{TRACK_PATH, TrackItem, USER_PROPERTIES_PATH, UserPropertiesItem};

/// What `serve` would do with a payload.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TransformOutput {
    /// `{"endpoint": "/api/track", "body": {...}}` objects in sending order: per batch, its
    /// track body, then its add-user-properties bodies.
    pub requests: Vec<Value>,
    /// `(event index, event id, reason)` of every event not sent.
    pub skipped: Vec<(usize, String, SkipReason)>,
    /// `(event index, event id)` of events whose id repeats an earlier event of the payload:
    /// ingest acknowledges them as duplicates and never queues them.
    pub duplicates: Vec<(usize, String)>,
    /// `(event index, value)` of every value a mapped event left out (see [`super::read`]).
    pub dropped: Vec<(usize, DroppedValue)>,
}

/// Maps a Currents payload — `{"events":[...]}`, a single event object, or a JSON array of
/// events — to the Heap request bodies `serve` would send for it under `app_id`, in the order
/// it sends them when the payload's events are all queued at once and no identity is over its
/// budget: per batch of at most `batch_size` events (serve's effective batch: see
/// `delivery::Budgets::max_batch`) and `max_request_bytes` of track body, the track body, then
/// the user properties of those events merged per identity.
///
/// `Err` holds one line per reason (naming event indexes) when the payload fails the
/// structural check that makes ingest answer 400.
pub fn transform_payload(
    payload: &[u8],
    opts: &MappingOptions,
    app_id: &str,
    batch_size: usize,
    max_request_bytes: usize,
) -> Result<TransformOutput, String> {
    let body = as_batch(payload);
    let batch = parse_batch(&body).map_err(|e| describe(&e))?;
    let mut out = TransformOutput::default();
    let mut seen = HashSet::new();
    let mut mapped = Vec::new();
    for (index, event) in batch.events.iter().enumerate() {
        if !seen.insert(event.id.as_ref()) {
            out.duplicates.push((index, event.id.to_string()));
            continue;
        }
        match map_event(event.raw.get().as_bytes(), opts) {
            Ok(mut m) => {
                out.dropped.extend(m.dropped.drain(..).map(|d| (index, d)));
                mapped.push(m);
            }
            Err(reason) => out.skipped.push((index, event.id.to_string(), reason)),
        }
    }
    let track: Vec<&TrackItem> = mapped.iter().map(|m| &m.track).collect();
    for (batch, body) in bulk::track_requests(app_id, &track, batch_size, max_request_bytes) {
        out.requests.push(request(TRACK_PATH, &body));
        let updates: Vec<(&str, &UserPropertiesItem)> = mapped[batch]
            .iter()
            .filter_map(|m| Some((m.track.timestamp.as_str(), m.user_properties.as_ref()?)))
            .collect();
        if !updates.is_empty() {
            for users in bulk::users_requests(app_id, &updates, max_request_bytes) {
                out.requests
                    .push(request(USER_PROPERTIES_PATH, &users.body));
            }
        }
    }
    Ok(out)
}

fn request(endpoint: &str, body: &[u8]) -> Value {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    serde_json::json!({ "endpoint": endpoint, "body": body })
}

/// The payload in the `{"events":[...]}` form `parse_batch` expects: arrays and single event
/// objects are wrapped; anything else (a batch, `{}`, empty, not JSON) is passed through so
/// `parse_batch` judges it.
fn as_batch(payload: &[u8]) -> Cow<'_, [u8]> {
    let wrap = |open: &[u8], close: &[u8]| {
        let mut v = Vec::with_capacity(payload.len() + 16);
        v.extend_from_slice(open);
        v.extend_from_slice(payload);
        v.extend_from_slice(close);
        Cow::Owned(v)
    };
    match payload.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => wrap(b"{\"events\":", b"}"),
        Some(b'{') if is_single_event(payload) => wrap(b"{\"events\":[", b"]}"),
        _ => Cow::Borrowed(payload),
    }
}

/// A non-empty object without an `events` key is one event posted bare.
fn is_single_event(payload: &[u8]) -> bool {
    serde_json::from_slice::<BTreeMap<String, IgnoredAny>>(payload)
        .is_ok_and(|m| !m.is_empty() && !m.contains_key("events"))
}

fn describe(err: &BatchError) -> String {
    match err {
        BatchError::Malformed(why) => format!("payload is not a Currents batch: {why}"),
        BatchError::Invalid { total, errors } => {
            let mut lines = vec![format!(
                "{} of {total} events failed validation",
                errors.len()
            )];
            lines.extend(errors.iter().map(|(i, e)| format!("event {i}: {e}")));
            lines.join("\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(id: &str, external: Option<&str>) -> Value {
        let mut user = json!({"user_id": "b"});
        if let Some(x) = external {
            user["external_user_id"] = json!(x);
        }
        json!({"event_type": "users.behaviors.InstallAttribution", "id": id, "time": 1,
               "user": user, "properties": {"source": "ads"}})
    }

    fn run(payload: &Value) -> Result<TransformOutput, String> {
        transform_payload(
            payload.to_string().as_bytes(),
            &MappingOptions::default(),
            "11",
            1000,
            4 << 20,
        )
    }

    #[test]
    fn three_payload_forms_give_the_same_requests() {
        let e = event("a", Some("alice"));
        let batch = run(&json!({"events": [e.clone()]})).unwrap();
        assert_eq!(run(&e).unwrap(), batch);
        assert_eq!(run(&json!([e])).unwrap(), batch);
        assert_eq!(batch.requests.len(), 2);
        assert_eq!(batch.requests[0]["endpoint"], "/api/track");
        assert_eq!(batch.requests[0]["body"]["app_id"], "11");
        assert_eq!(
            batch.requests[0]["body"]["events"][0]["event"],
            "Install Attributed"
        );
        assert_eq!(batch.requests[1]["endpoint"], "/api/add_user_properties");
        assert_eq!(
            batch.requests[1]["body"]["users"],
            json!([{"identity": "alice", "properties": {"braze_install_source": "ads"}}])
        );
    }

    #[test]
    fn empty_payloads_send_nothing() {
        for p in [&b""[..], b"{}", b"[]", b" {\"events\":[]} "] {
            let out =
                transform_payload(p, &MappingOptions::default(), "11", 1000, 4 << 20).unwrap();
            assert!(out.requests.is_empty() && out.skipped.is_empty(), "{p:?}");
        }
    }

    #[test]
    fn skipped_and_duplicate_events_are_reported() {
        let out = run(&json!([
            event("a", None),
            event("b", Some("null")),
            event("c", Some("x")),
            event("c", Some("x"))
        ]))
        .unwrap();
        assert_eq!(
            out.skipped,
            vec![
                (0, "a".into(), SkipReason::Anonymous),
                (1, "b".into(), SkipReason::InvalidIdentity)
            ]
        );
        assert_eq!(out.duplicates, vec![(3, "c".into())]);
        assert_eq!(
            out.requests[0]["body"]["events"].as_array().unwrap().len(),
            1
        );
    }

    #[test]
    fn requests_are_chunked_and_user_properties_merged_per_identity() {
        let events: Vec<Value> = (0..2001)
            .map(|i| event(&format!("e{i}"), Some(&format!("u{}", i % 500))))
            .collect();
        let out = run(&json!({"events": events})).unwrap();
        let sizes: Vec<(String, usize)> = out
            .requests
            .iter()
            .map(|r| {
                let body = &r["body"];
                let items = body.get("events").or(body.get("users")).unwrap();
                (
                    r["endpoint"].as_str().unwrap().to_string(),
                    items.as_array().unwrap().len(),
                )
            })
            .collect();
        let t = "/api/track".to_string();
        let u = "/api/add_user_properties".to_string();
        assert_eq!(
            sizes,
            vec![
                (t.clone(), 1000),
                (u.clone(), 500),
                (t.clone(), 1000),
                (u.clone(), 500),
                (t, 1),
                (u, 1)
            ]
        );
    }

    #[test]
    fn structural_errors_name_indexes() {
        let err = run(&json!([event("a", None), {"id": 1, "event_type": "t", "time": 1}, "x"]))
            .unwrap_err();
        assert!(err.contains("event 1: `id` is not a string"), "{err}");
        assert!(err.contains("event 2: event is not a JSON object"), "{err}");
        let err = run(&json!({"id": "a", "event_type": "t"})).unwrap_err();
        assert!(err.contains("event 0: missing `time`"), "{err}");
        for bad in [&b"nope"[..], b"[1,", b"{\"events\":{}}", b"[] x", b"3"] {
            assert!(
                transform_payload(bad, &MappingOptions::default(), "11", 1000, 4 << 20).is_err(),
                "{bad:?}"
            );
        }
    }
}
