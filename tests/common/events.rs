//! Braze-shaped events, batches and fixtures.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::{Value, json};

/// A structurally valid Currents event of `event_type`, shaped like the spec's example, of
/// user `user-<id>`.
pub fn event(id: &str, event_type: &str) -> Value {
    json!({
        "event_type": event_type,
        "id": id,
        "time": 1_780_000_000,
        "user": {
            "user_id": "639a35d192b0df004d06514c",
            "external_user_id": format!("user-{id}"),
            "timezone": "Europe/Paris"
        },
        "properties": {
            "app_group_id": "3e2e0f7c-5f0a-4d57-9c7b-1f3f4a5b6c7d",
            "campaign_name": "spring sale",
            "send_id": "send-1"
        }
    })
}

/// `{"events":[...]}` as bytes.
pub fn batch(events: &[Value]) -> Vec<u8> {
    serde_json::to_vec(&json!({ "events": events })).expect("serialisable")
}

/// `n` email-send events ([`event`]) with ids `<prefix>-0`, `<prefix>-1`, ...
pub fn email_sends(prefix: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| event(&format!("{prefix}-{i}"), "users.messages.email.Send"))
        .collect()
}

/// A Braze `users.messages.email.Send` event of `external_user_id` `user`.
pub fn email_send(id: &str, user: &str) -> Value {
    json!({
        "event_type": "users.messages.email.Send",
        "id": id,
        "time": 1_780_000_000,
        "user": {
            "user_id": "639a35d192b0df004d06514c",
            "external_user_id": user,
            "timezone": "Europe/Paris"
        },
        "properties": {
            "app_group_id": "3e2e0f7c-5f0a-4d57-9c7b-1f3f4a5b6c7d",
            "campaign_id": "c-1",
            "campaign_name": "spring sale",
            "dispatch_id": "d-1",
            "email_address": "someone@example.com",
            "send_id": "send-1"
        }
    })
}

/// A Braze custom event (`users.behaviors.CustomEvent`) named `name`.
pub fn custom_event(id: &str, user: &str, name: &str) -> Value {
    json!({
        "event_type": "users.behaviors.CustomEvent",
        "id": id,
        "time": 1_780_000_100,
        "user": {
            "user_id": "639a35d192b0df004d06514d",
            "external_user_id": user,
            "device_id": "dev-1"
        },
        "properties": {
            "app_id": "a-1",
            "name": name,
            "platform": "ios",
            "custom_properties": { "plan": "pro", "seats": 3, "beta": true }
        }
    })
}

/// A global subscription change: a track event plus user properties.
pub fn subscription_change(id: &str, user: &str) -> Value {
    json!({
        "event_type": "users.behaviors.subscription.GlobalStateChange",
        "id": id,
        "time": 1_780_000_200,
        "user": {
            "user_id": "639a35d192b0df004d06514e",
            "external_user_id": user,
            "timezone": "America/New_York"
        },
        "properties": {
            "app_group_id": "3e2e0f7c-5f0a-4d57-9c7b-1f3f4a5b6c7d",
            "channel": "email",
            "email_address": "someone@example.com",
            "state_change_source": "REST API",
            "subscription_status": "Subscribed"
        }
    })
}

/// `n` subscription changes with ids `<prefix>-<i>` of users `<prefix>-user-<i>`. Returns the
/// events and their ids.
pub fn subscription_changes(prefix: &str, n: usize) -> (Vec<Value>, Vec<String>) {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let events = ids
        .iter()
        .enumerate()
        .map(|(i, id)| subscription_change(id, &format!("{prefix}-user-{i}")))
        .collect();
    (events, ids)
}

/// An email send without `external_user_id`: anonymous, skipped by default.
pub fn anonymous_send(id: &str) -> Value {
    json!({
        "event_type": "users.messages.email.Send",
        "id": id,
        "time": 1_780_000_000,
        "user": { "user_id": "639a35d192b0df004d0651ff" },
        "properties": { "campaign_name": "spring sale", "send_id": "send-1" }
    })
}

/// `n` identified email sends with ids `<prefix>-<i>`, spread over `identities` users
/// (`<prefix>-user-<i % identities>`). Returns the events and their ids.
pub fn sends(prefix: &str, n: usize, identities: usize) -> (Vec<Value>, Vec<String>) {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let events = ids
        .iter()
        .enumerate()
        .map(|(i, id)| email_send(id, &format!("{prefix}-user-{}", i % identities)))
        .collect();
    (events, ids)
}

/// A set of ids, to compare with `TestApp::stored_ids`.
pub fn id_set<S: AsRef<str>>(ids: impl IntoIterator<Item = S>) -> BTreeSet<String> {
    ids.into_iter().map(|s| s.as_ref().to_owned()).collect()
}

/// A file under `fixtures/currents/`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/currents")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The `events` of a fixture, parsed.
pub fn fixture_events(name: &str) -> Vec<Value> {
    let v: Value = serde_json::from_slice(&fixture(name)).expect("fixture is JSON");
    v["events"].as_array().expect("fixture has events").clone()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}
