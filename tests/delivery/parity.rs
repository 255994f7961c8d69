//! `transform` prints what `serve` sends (issue: one batch builder): a payload goes through the
//! running server to the stand-in, and the bodies the stand-in accepted equal, request by
//! request, what `currents-heap transform` prints for the same payload and settings — user
//! properties merged per identity included.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

/// A global subscription change of `user` at `time`: a track event and user properties.
fn subscription(id: &str, user: &str, time: i64, status: &str) -> Value {
    json!({
        "event_type": "users.behaviors.subscription.GlobalStateChange",
        "id": id,
        "time": time,
        "user": { "user_id": "639a35d192b0df004d06514e", "external_user_id": user },
        "properties": {
            "channel": "email",
            "email_address": format!("{user}@example.com"),
            "state_change_source": "REST API",
            "subscription_status": status
        }
    })
}

#[tokio::test]
async fn serve_sends_exactly_the_bodies_transform_prints() {
    let app = TestApp::start(heap_budgets(), base_args()).await;
    // Two updates of one profile, the later one first in the payload (the later event wins);
    // other identities, track-only events, a skipped anonymous event and a repeated id.
    let mut events = vec![
        subscription("par-1", "alice", 1_780_000_300, "Unsubscribed"),
        subscription("par-2", "alice", 1_780_000_100, "Subscribed"),
        subscription("par-3", "bob", 1_780_000_200, "Subscribed"),
        custom_event("par-4", "alice", "Plan Upgraded"),
        email_send("par-5", "carol"),
        anonymous_send("par-6"),
    ];
    events.push(events[4].clone());
    events.extend((7..20).map(|i| {
        subscription(
            &format!("par-{i}"),
            &format!("u{}", i % 4),
            1_780_000_000 + i,
            "Subscribed",
        )
    }));
    let tracked: Vec<String> = (1..20)
        .filter(|i| *i != 6)
        .map(|i| format!("par-{i}"))
        .collect();
    let reply = app.post_events(&events).await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("payload.json");
    std::fs::write(&file, batch(&events)).unwrap();
    let out = run_binary(vec![
        "transform".into(),
        file.display().to_string(),
        "--heap-app-id".into(),
        APP_ID.into(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Vec<Value> = json_lines(&out.stdout);
    let endpoint_bodies = |endpoint: &str| -> Vec<Value> {
        printed
            .iter()
            .filter(|r| r["endpoint"] == endpoint)
            .map(|r| r["body"].clone())
            .collect()
    };
    let (track, users) = (
        endpoint_bodies("/api/track"),
        endpoint_bodies("/api/add_user_properties"),
    );
    assert_eq!(track.len(), 1, "one batch: {printed:?}");
    assert_eq!(users.len(), 1);
    let alice = users[0]["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["identity"] == "alice")
        .count();
    assert_eq!(alice, 1, "two updates of alice are merged into one item");

    app.wait_delivered(&tracked, Duration::from_secs(20)).await;
    wait_until(
        "the user properties are delivered",
        Duration::from_secs(20),
        || !app.heap().report().user_property_batches.is_empty(),
    )
    .await;
    let report = app.heap().report();
    let sent_track: Vec<Value> = report
        .track_batches
        .iter()
        .map(|b| json!({ "app_id": b.app_id, "events": b.events }))
        .collect();
    let sent_users: Vec<Value> = report
        .user_property_batches
        .iter()
        .map(|b| json!({ "app_id": b.app_id, "users": b.users }))
        .collect();
    assert_eq!(
        sent_track, track,
        "track bodies differ between serve and transform"
    );
    assert_eq!(
        sent_users, users,
        "user-properties bodies differ between serve and transform"
    );
    app.stop().await;
}
