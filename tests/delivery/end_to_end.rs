//! Braze batches in over HTTP, Heap requests out: every identified event reaches the stand-in
//! exactly once per idempotency key, anonymous ones are skipped and counted, and the queue
//! ends empty.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn braze_batches_reach_heap_exactly_once_and_anonymous_events_are_skipped() {
    let h = TestApp::start(heap_budgets(), base_args()).await;

    // 5 batches of 40: email sends, custom events, subscription changes (track + user
    // properties) and anonymous sends, over 50 identities (≤ 16 events each: the identity
    // budget's burst, so pacing does not slow this test down).
    let mut batches = Vec::new();
    let mut identified: Vec<String> = Vec::new();
    let mut identity_of: HashMap<String, String> = HashMap::new();
    let mut subscriptions: Vec<String> = Vec::new();
    let mut anonymous = 0usize;
    for b in 0..5 {
        let mut events = Vec::new();
        for i in 0..40 {
            let id = format!("e2e-{b}-{i}");
            let user = format!("user-{}", (b * 40 + i) % 50);
            let event = match i % 8 {
                0..=2 => email_send(&id, &user),
                3 | 4 => custom_event(&id, &user, "Added To Cart"),
                5 => {
                    subscriptions.push(id.clone());
                    subscription_change(&id, &user)
                }
                _ => {
                    anonymous += 1;
                    events.push(anonymous_send(&id));
                    continue;
                }
            };
            identified.push(id.clone());
            identity_of.insert(id, user);
            events.push(event);
        }
        batches.push(events);
    }
    for events in &batches {
        let reply = h.post_events(events).await;
        assert_eq!(reply.json()["accepted"], 40);
    }
    // Braze is at-least-once: a re-sent batch is acknowledged and not delivered again.
    let reply = h.post_events(&batches[2]).await;
    assert_eq!(reply.json()["duplicates"], 40);

    let report = h.wait_delivered(&identified, Duration::from_secs(30)).await;
    // Let a stray duplicate (none expected) arrive before judging.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = {
        let later = h.heap().report();
        assert_eq!(later.events_accepted, report.events_accepted);
        later
    };
    report
        .check_exactly_once(identified.iter().map(String::as_str))
        .unwrap();
    assert_eq!(report.events_accepted, identified.len() as u64);
    assert_eq!(
        report.shape_violation_count, 0,
        "{:?}",
        report.shape_violations
    );
    assert_eq!(report.limit_rejections, 0);

    // Each item carries the Braze identity and the mapped name.
    for (_, item) in report.track_items() {
        let expected = &identity_of[&item.idempotency_key];
        assert_eq!(item.identity.as_deref(), Some(expected.as_str()));
        assert!(item.user_id.is_none());
        assert!(!item.event.is_empty());
        assert_eq!(item.timestamp.len(), "2026-05-28T20:26:40Z".len());
    }
    let names: std::collections::BTreeSet<&str> = report
        .track_items()
        .map(|(_, i)| i.event.as_str())
        .collect();
    assert!(names.contains("Added To Cart"), "{names:?}");
    assert!(names.contains("Email Sent"), "{names:?}");

    // The subscription changes also set user properties, once each, for the right identity.
    let mut users: Vec<&str> = report
        .user_property_items()
        .map(|(_, u)| u.identity.as_str())
        .collect();
    users.sort_unstable();
    let mut expected_users: Vec<&str> = subscriptions
        .iter()
        .map(|id| identity_of[id].as_str())
        .collect();
    expected_users.sort_unstable();
    assert_eq!(users, expected_users);
    assert!(
        report
            .user_property_items()
            .all(|(_, u)| u.properties.contains_key("braze_email_subscription_status")),
        "{:?}",
        report.user_property_batches
    );

    let text = h.metrics().await;
    assert_eq!(
        metric_value(
            &text,
            r#"currents_heap_events_skipped_total{reason="anonymous",route="default"}"#
        ),
        anonymous as f64
    );
    assert_eq!(metric_value(&text, "currents_heap_queue_events"), 0.0);
    assert_eq!(
        metric_value(
            &text,
            r#"currents_heap_events_delivered_total{route="default"}"#
        ),
        identified.len() as f64
    );
    for reason in ["rejected", "expired", "anonymous", "too_large"] {
        assert_eq!(
            metric_value(
                &text,
                &format!(
                    "currents_heap_events_dead_lettered_total{{reason=\"{reason}\",route=\"default\"}}"
                )
            ),
            0.0,
            "{reason}"
        );
    }
    assert_eq!(
        metric_value(
            &text,
            r#"currents_heap_heap_requests_total{endpoint="/api/track",route="default",status_class="2xx"}"#
        ),
        report.requests_with(TRACK, 200) as f64
    );
    assert_eq!(h.queued_count(), 0);
    assert!(h.dead_letters().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_events_are_dead_lettered_when_dead_letter_skipped_is_set() {
    let h = TestApp::start(
        heap_budgets(),
        currents_heap::config::SettingsArgs {
            dead_letter_skipped: Some(true),
            ..base_args()
        },
    )
    .await;
    let (mut events, ids) = sends("dls", 10, 10);
    events.push(anonymous_send("dls-anon-1"));
    events.push(anonymous_send("dls-anon-2"));
    h.post_and_deliver(&events, &ids).await;
    let dead = h.dead_letters();
    let mut dead_ids: Vec<(&str, &str)> = dead
        .iter()
        .map(|d| (d.event.event_id.as_str(), d.reason.as_str()))
        .collect();
    dead_ids.sort_unstable();
    assert_eq!(
        dead_ids,
        [("dls-anon-1", "anonymous"), ("dls-anon-2", "anonymous")]
    );
    let text = h.metrics().await;
    assert_eq!(
        metric_value(
            &text,
            r#"currents_heap_events_skipped_total{reason="anonymous",route="default"}"#
        ),
        2.0
    );
    assert_eq!(
        metric_value(
            &text,
            r#"currents_heap_dead_letter_events{reason="anonymous"}"#
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_events_get_a_synthetic_user_id_when_configured() {
    let h = TestApp::start(
        heap_budgets(),
        currents_heap::config::SettingsArgs {
            anonymous: Some("synthetic_user_id".into()),
            ..base_args()
        },
    )
    .await;
    h.post_events(&[anonymous_send("syn-1"), anonymous_send("syn-2")])
        .await;
    let keys = vec!["syn-1".to_owned(), "syn-2".to_owned()];
    let report = h.delivered_once(&keys).await;
    for (_, item) in report.track_items() {
        assert!(item.identity.is_none(), "{item:?}");
        let user_id: u64 = item
            .user_id
            .as_deref()
            .expect("a synthetic user_id")
            .parse()
            .expect("a decimal user_id");
        assert!(user_id < 1 << 53);
    }
    // Same Braze user, same synthetic id.
    let ids: Vec<&str> = report
        .track_items()
        .map(|(_, i)| i.user_id.as_deref().unwrap())
        .collect();
    assert_eq!(ids[0], ids[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placeholder_identities_never_reach_heap() {
    let h = TestApp::start(heap_budgets(), base_args()).await;
    let (mut events, ids) = sends("ph", 5, 5);
    for (i, placeholder) in ["null", "UNDEFINED", " None ", "", &"x".repeat(256)]
        .iter()
        .enumerate()
    {
        events.push(email_send(&format!("ph-bad-{i}"), placeholder));
    }
    let report = h.post_and_deliver(&events, &ids).await;
    assert_eq!(
        report.shape_violation_count, 0,
        "{:?}",
        report.shape_violations
    );
    assert_eq!(
        h.metric(
            r#"currents_heap_events_skipped_total{reason="invalid_identity",route="default"}"#
        )
        .await,
        5.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_event_types_are_skipped_and_counted() {
    let h = TestApp::start(
        heap_budgets(),
        currents_heap::config::SettingsArgs {
            exclude_event_types: Some("users.behaviors.*".into()),
            ..base_args()
        },
    )
    .await;
    let (mut events, ids) = sends("exc", 6, 6);
    events.push(custom_event("exc-custom", "exc-user-1", "Ignored"));
    events.push(subscription_change("exc-sub", "exc-user-2"));
    let report = h.post_and_deliver(&events, &ids).await;
    assert_eq!(report.user_property_items_accepted, 0);
    assert_eq!(
        h.metric(r#"currents_heap_events_skipped_total{reason="excluded",route="default"}"#)
            .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_carries_more_than_heap_batch_size_or_heaps_1000_items() {
    // A budget large enough that only the bulk limit bounds a request.
    let h = TestApp::start(
        currents_heap_testkit::standin::StandInConfig {
            events_per_window: 1_000_000,
            ..heap_budgets()
        },
        currents_heap::config::SettingsArgs {
            heap_events_per_minute: Some("600000".into()),
            ..base_args()
        },
    )
    .await;
    let (events, ids) = sends("bulk", 2_500, 2_500);
    h.post_events(&events).await;
    let report = h.wait_delivered(&ids, Duration::from_secs(30)).await;
    report
        .check_exactly_once(ids.iter().map(String::as_str))
        .unwrap();
    assert_eq!(
        report.shape_violation_count, 0,
        "{:?}",
        report.shape_violations
    );
    let largest = report.track_batches.iter().map(|b| b.events.len()).max();
    assert_eq!(largest, Some(1000), "bulk requests should be full");

    let h = TestApp::start(
        heap_budgets(),
        currents_heap::config::SettingsArgs {
            heap_batch_size: Some("40".into()),
            ..base_args()
        },
    )
    .await;
    let (events, ids) = sends("small", 100, 100);
    h.post_events(&events).await;
    let report = h.wait_delivered(&ids, Duration::from_secs(20)).await;
    let sizes: Vec<usize> = report
        .track_batches
        .iter()
        .map(|b| b.events.len())
        .collect();
    assert_eq!(sizes, [40, 40, 20]);
}
