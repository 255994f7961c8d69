//! Heap requests are capped in bytes (`--heap-max-request-bytes`), not only in items: a batch
//! whose body would be larger is cut before it is sent, for `/api/track` and for
//! `/api/add_user_properties` alike; an event larger than the cap goes alone; every event
//! still arrives exactly once, and the app budget still holds in every window.

use std::time::Duration;

use currents_heap_testkit::heap::{bulk_track_body, bulk_user_properties_body};
use currents_heap_testkit::standin::StandInConfig;
use serde_json::{Map, Value, json};

use crate::common::*;

const CAP: usize = 64 * 1024;

fn attributes(n: usize, chars: usize, seed: &str) -> Map<String, Value> {
    (0..n)
        .map(|k| {
            let v: String = format!("{seed}-{k}-")
                .chars()
                .chain(std::iter::repeat('x'))
                .take(chars)
                .collect();
            (format!("attr_{k:03}"), Value::String(v))
        })
        .collect()
}

/// A custom event with `n` custom properties of `chars` characters.
fn wide_custom_event(id: &str, user: &str, n: usize, chars: usize) -> Value {
    json!({
        "event_type": "users.behaviors.CustomEvent",
        "id": id,
        "time": 1_780_000_100,
        "user": { "user_id": "639a35d192b0df004d06514d", "external_user_id": user },
        "properties": { "name": "Wide", "custom_properties": attributes(n, chars, id) }
    })
}

/// A profile update whose custom attributes become large user properties. As Braze sends
/// them, they are a JSON string: on the track item that is one property (cut at 1023
/// characters), so the user-properties body of a batch is far larger than its track body.
fn wide_profile_update(id: &str, user: &str) -> Value {
    let custom = Value::Object(attributes(40, 400, id)).to_string();
    json!({
        "event_type": "users.profile.Update",
        "id": id,
        "time": 1_780_000_300,
        "user": { "user_id": "639a35d192b0df004d06514f", "external_user_id": user },
        "properties": { "first_name": "Ada", "custom_attributes": custom }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_cut_at_the_byte_cap_and_every_event_arrives_once_within_budget() {
    // Scaled budget (1200 events per 2 s, burst 20), enforced: size cuts must not break it.
    let heap = StandInConfig {
        events_per_window: 1200,
        identity_events_per_window: 1000,
        window: Duration::from_secs(2),
        enforce: true,
    };
    let h = TestApp::start(
        heap,
        currents_heap::config::SettingsArgs {
            heap_events_per_minute: Some("1200".into()),
            heap_budget_window: Some("2s".into()),
            heap_max_request_bytes: Some("64KiB".into()),
            heap_linger: Some("20ms".into()),
            ..base_args()
        },
    )
    .await;

    // ~5 KB custom events (20 of them, one burst, are ~100 KB), ~17 KB profile updates, and
    // one ~100 KB event, larger than the cap on its own. One identity each.
    let mut events = Vec::new();
    let mut ids = Vec::new();
    for i in 0..200 {
        let id = format!("wide-{i}");
        events.push(wide_custom_event(&id, &format!("w-{i}"), 40, 100));
        ids.push(id);
    }
    for i in 0..40 {
        let id = format!("profile-{i}");
        events.push(wide_profile_update(&id, &format!("p-{i}")));
        ids.push(id);
    }
    events.push(wide_custom_event("huge", "h-0", 200, 500));
    ids.push("huge".to_owned());
    h.post_in_batches(&events, 50).await;

    let report = h.wait_delivered(&ids, Duration::from_secs(60)).await;
    wait_until(
        "every profile update's user properties arrive",
        Duration::from_secs(30),
        || h.heap().report().user_property_items_accepted >= 40,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let report = {
        let later = h.heap().report();
        assert_eq!(later.events_accepted, report.events_accepted);
        later
    };
    report
        .check_exactly_once(ids.iter().map(String::as_str))
        .unwrap();
    assert_eq!(report.user_property_items_accepted, 40);
    assert_eq!(
        report.shape_violation_count, 0,
        "{:?}",
        report.shape_violations
    );
    // The windows over every request received, refused ones included (enforcement keeps the
    // accepted ones within the budget whatever the forwarder sends).
    assert!(
        !report.offered_over_budget(),
        "{:?}",
        report.max_offered_app_window
    );
    assert_eq!(report.limit_rejections, 0);

    // The bodies as sent (the stand-in's items serialize back to the same bytes): each within
    // the cap, unless it carries one item that alone is larger.
    let mut track_sizes = Vec::new();
    for b in &report.track_batches {
        let len = bulk_track_body(&b.app_id, &b.events).len();
        assert!(
            len <= CAP || b.events.len() == 1,
            "a track body of {len} bytes with {} events",
            b.events.len()
        );
        track_sizes.push(len);
    }
    let huge = report
        .track_batches
        .iter()
        .find(|b| b.events.iter().any(|e| e.idempotency_key == "huge"))
        .unwrap();
    assert_eq!(huge.events.len(), 1, "the oversized event went alone");
    for b in &report.user_property_batches {
        let len = bulk_user_properties_body(&b.app_id, &b.users).len();
        assert!(
            len <= CAP || b.users.len() == 1,
            "a user-properties body of {len} bytes with {} users",
            b.users.len()
        );
    }
    assert!(
        report.user_property_batches.len() >= 10,
        "40 × ~17 KB of user properties need at least 10 requests of 64 KiB, got {}",
        report.user_property_batches.len()
    );
    // The stand-in's own count of the largest bodies agrees: only the oversized event's
    // request went over the cap.
    let largest_track = report.largest_body[TRACK];
    assert_eq!(largest_track, *track_sizes.iter().max().unwrap());
    assert!(report.largest_body[USER_PROPERTIES] <= CAP);
    // Requests were full by size, not by the app burst (20 events of ~5 KB = ~100 KB).
    let wide_batches = report
        .track_batches
        .iter()
        .filter(|b| {
            b.events
                .iter()
                .all(|e| e.idempotency_key.starts_with("wide-"))
        })
        .count();
    assert!(
        wide_batches > 200 / 20,
        "{wide_batches} requests for 200 events of ~5 KB: not cut by size"
    );
}
