//! product.md §3, acknowledged rows: valid batches (known and unknown types), the empty
//! credential checks, tolerated event shapes, and the dedup window.

use serde_json::Value;

use crate::common::*;

fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_valid_batch_of_known_types_is_acknowledged_after_it_is_stored() {
    let app = spawn_app().await;
    let body = fixture("email_send_batch.json");

    let reply = app.post_authed(body).await;

    reply.assert_accepted(3, 0);
    assert_eq!(
        reply.headers["content-type"], "application/json",
        "the 200 body is JSON"
    );
    assert_eq!(
        app.stored_ids(),
        id_set(ids(&fixture_events("email_send_batch.json")))
    );
}

#[tokio::test]
async fn a_batch_mixing_known_and_unknown_event_types_is_accepted_whole() {
    let app = spawn_app().await;
    let events = fixture_events("mixed_known_unknown.json");

    let reply = app.post_authed(fixture("mixed_known_unknown.json")).await;

    reply.assert_accepted(events.len(), 0);
    for sent in &events {
        let stored = app.stored_event(sent["id"].as_str().unwrap());
        assert_eq!(stored.event_type, sent["event_type"].as_str().unwrap());
    }
    assert_eq!(app.stored_count(), events.len() as u64);
    assert_eq!(
        app.stored_event("fx-mixed-0003").event_type,
        "users.messages.carrierpigeon.Send"
    );
}

#[tokio::test]
async fn each_event_is_stored_exactly_as_braze_sent_it() {
    let app = spawn_app().await;
    let body = fixture("mixed_known_unknown.json");

    app.post_authed(body.clone()).await.assert_accepted(5, 0);

    // Unknown fields, nested custom properties and key order survive: the store keeps the raw
    // bytes of each event, so a later mapping change or a replay sees the original.
    let text = String::from_utf8(body).unwrap();
    for sent in fixture_events("mixed_known_unknown.json") {
        let stored = app.stored_event(sent["id"].as_str().unwrap());
        let payload = std::str::from_utf8(&stored.payload).expect("UTF-8 payload");
        assert!(
            text.contains(payload),
            "payload is not a slice of the request body"
        );
        assert_eq!(serde_json::from_str::<Value>(payload).unwrap(), sent);
        assert_eq!(stored.event_time, sent["time"].as_i64().unwrap());
        assert_eq!(
            stored.identity.as_deref(),
            sent["user"]["external_user_id"].as_str()
        );
    }
}

#[tokio::test]
async fn unknown_event_types_are_counted_under_other() {
    let app = spawn_app().await;

    app.post_authed(fixture("mixed_known_unknown.json"))
        .await
        .assert_accepted(5, 0);

    let metrics = app.metrics().await;
    let accepted = |t: &str| {
        metric_value(
            &metrics,
            &format!("currents_heap_events_accepted_total{{event_type=\"{t}\",route=\"default\"}}"),
        )
    };
    assert_eq!(accepted("other"), 2.0);
    assert_eq!(accepted("users.messages.email.Open"), 1.0);
    assert_eq!(accepted("users.behaviors.CustomEvent"), 1.0);
    assert_eq!(accepted("users.behaviors.Purchase"), 1.0);
    assert!(
        !metrics.contains("carrierpigeon") && !metrics.contains("brandnew"),
        "an unknown event type must never become a label value"
    );
    assert_eq!(
        metric_value(&metrics, "currents_heap_events_received_total"),
        5.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            r#"currents_heap_ingest_requests_total{outcome="accepted"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn an_empty_body_is_a_credential_check_that_stores_nothing() {
    let app = spawn_app().await;

    let reply = app.post_authed("").await;

    reply.assert_accepted(0, 0);
    assert_eq!(app.stored_count(), 0);
    assert_eq!(
        app.metric(r#"currents_heap_ingest_requests_total{outcome="empty"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn an_empty_object_is_a_credential_check_that_stores_nothing() {
    let app = spawn_app().await;

    app.post_authed("{}").await.assert_accepted(0, 0);
    app.post_authed(" { }\n").await.assert_accepted(0, 0);

    assert_eq!(app.stored_count(), 0);
}

#[tokio::test]
async fn an_empty_events_array_is_a_credential_check_that_stores_nothing() {
    let app = spawn_app().await;

    app.post_authed(r#"{"events":[]}"#)
        .await
        .assert_accepted(0, 0);

    assert_eq!(app.stored_count(), 0);
}

#[tokio::test]
async fn sixty_four_bit_times_null_or_missing_optional_fields_and_an_empty_user_are_accepted() {
    let app = spawn_app().await;
    let events = fixture_events("tolerated_shapes.json");

    app.post_authed(fixture("tolerated_shapes.json"))
        .await
        .assert_accepted(events.len(), 0);

    let stored = app.stored();
    assert_eq!(app.stored_ids(), id_set(ids(&events)));
    let big = stored
        .iter()
        .find(|e| e.event_id == "fx-shape-64-bit-time")
        .unwrap();
    assert_eq!(
        big.event_time, 9_007_199_254_740_993,
        "time beyond 2^53 keeps every digit"
    );
    let empty_user = stored
        .iter()
        .find(|e| e.event_id == "fx-shape-empty-user")
        .unwrap();
    assert_eq!(empty_user.event_time, 4_102_444_800, "time beyond 2^31");
    assert!(
        stored
            .iter()
            .all(|e| e.event_id == "fx-shape-unknown-extras" || e.identity.is_none()),
        "a null, missing or empty user is anonymous"
    );
}

#[tokio::test]
async fn query_parameters_and_content_type_do_not_change_the_answer() {
    let app = spawn_app().await;

    let reply = app
        .post_to(
            "/currents?workspace=brand-a&your_app_group_key=Brand%20A",
            batch(&email_sends("query", 2)),
            &[
                ("authorization", "Bearer tok-a"),
                ("content-type", "application/json; charset=utf-8"),
                ("braze-currents-version", "1"),
            ],
        )
        .await;
    reply.assert_accepted(2, 0);

    let reply = app
        .post(
            batch(&email_sends("no-content-type", 1)),
            &[
                ("authorization", "Bearer tok-a"),
                ("content-type", "text/plain"),
            ],
        )
        .await;
    reply.assert_accepted(1, 0);

    assert_eq!(app.stored_count(), 3);
}

/// The load generator (`currents_heap_testkit::loadgen`, which knows nothing of the product's
/// parser) builds batches the forwarder's parser accepts, with the asked user mix.
#[test]
fn load_generator_batches_are_valid_currents_with_the_asked_user_mix() {
    use currents_heap::currents::catalogue::KNOWN_EVENT_TYPES;
    use currents_heap_testkit::loadgen::{UserMix, build_batch_with, complete_with_event_types};

    let mut templates = Vec::new();
    complete_with_event_types(&mut templates, KNOWN_EVENT_TYPES);
    assert_eq!(templates.len(), KNOWN_EVENT_TYPES.len());
    let mix = UserMix {
        users: 10,
        anonymous_share: 0.25,
        hot_share: 0.25,
    };
    let mut ids = Vec::new();
    let mut counter = 0;
    let body = build_batch_with(&templates, 400, 1, &mut counter, 7, mix, &mut ids);
    let batch = currents_heap::currents::parse_batch(&body).expect("a valid batch");
    assert_eq!(batch.events.len(), 400);
    let anonymous = batch
        .events
        .iter()
        .filter(|e| e.external_user_id.is_none())
        .count();
    let hot = batch
        .events
        .iter()
        .filter(|e| e.external_user_id.as_deref() == Some("hot-user"))
        .count();
    assert!((60..140).contains(&anonymous), "{anonymous}");
    assert!((60..140).contains(&hot), "{hot}");
    assert_eq!(
        ids.iter().filter(|(_, identified)| !identified).count(),
        anonymous
    );
    let unique: std::collections::HashSet<_> = ids.iter().map(|(id, _)| id).collect();
    assert_eq!(unique.len(), 400);
}
