//! Retry rules (product.md §5): transient failures are retried until Heap accepts, nothing is
//! lost, `Retry-After` pauses the whole app id, and duplicates arise only where Heap had
//! already processed a request whose answer was lost.

use std::time::Duration;

use currents_heap::config::SettingsArgs;
use currents_heap_testkit::standin::{Fault, Mode};

use crate::common::*;

fn retries(text: &str, reason: &str) -> f64 {
    metric_value(
        text,
        &format!("currents_heap_delivery_retries_total{{reason=\"{reason}\",route=\"default\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_until_heap_accepts() {
    let h = TestApp::start(heap_budgets(), base_args()).await;
    h.heap()
        .push_faults([Fault::status(500), Fault::status(503), Fault::status(502)]);
    let (events, ids) = sends("5xx", 30, 30);
    let report = h.post_and_deliver(&events, &ids).await;
    assert_eq!(h.heap().pending_faults(), 0);
    for code in [500, 502, 503] {
        assert_eq!(report.requests_with(TRACK, code), 1, "{code}");
    }
    let text = h.metrics().await;
    assert_eq!(retries(&text, "status_5xx"), 3.0);
    assert_eq!(
        metric_value(
            &text,
            r#"currents_heap_heap_requests_total{endpoint="/api/track",route="default",status_class="5xx"}"#
        ),
        3.0
    );
    assert_eq!(
        metric_value(&text, r#"currents_heap_delivery_paused{route="default"}"#),
        0.0
    );
    assert!(h.dead_letters().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_pauses_all_delivery_for_that_long() {
    // Batches of 10 events: request A passes (a zero delay is a no-op fault), request B gets
    // the 429, and four more batches are ready at once, so any request sent during the pause
    // would show up. B's 429 came after A's arrival, so every later arrival must be at
    // least 1 s after A's, on the stand-in's own clock: no tolerance needed.
    let h = TestApp::start(
        heap_budgets(),
        SettingsArgs {
            heap_batch_size: Some("10".into()),
            ..base_args()
        },
    )
    .await;
    h.heap().push_faults([
        Fault::Delay(Duration::ZERO),
        Fault::Status {
            code: 429,
            retry_after: Some("1".into()),
            body: "slow down".into(),
        },
    ]);
    let (events, ids) = sends("ra", 60, 60);
    let report = h.post_and_deliver(&events, &ids).await;
    assert_eq!(report.requests_with(TRACK, 429), 1);
    assert_eq!(report.track_batches.len(), 6);
    let a = report.track_batches[0].at;
    let next = report.track_batches[1].at;
    println!(
        "first request after the 429 arrived {:?} after the one before it",
        next - a
    );
    assert!(
        next - a >= Duration::from_secs(1),
        "a request reached Heap {:?} after the request preceding a 429 with Retry-After: 1",
        next - a
    );
    assert_eq!(retries(&h.metrics().await, "status_429"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_after_processing_is_resent_after_retry_after_and_only_its_events_double() {
    let h = TestApp::start(
        heap_budgets(),
        SettingsArgs {
            heap_batch_size: Some("10".into()),
            ..base_args()
        },
    )
    .await;
    h.heap().push_fault(Fault::StatusAfterProcessing {
        code: 429,
        retry_after: Some("1".into()),
        body: "committed, but slow down".into(),
    });
    let (events, ids) = sends("rap", 50, 50);
    h.post_events(&events).await;
    let report = h.wait_delivered(&ids, Duration::from_secs(20)).await;
    // Same clock for both: the stand-in's arrival times.
    let throttled = &report.track_batches[0];
    let next = &report.track_batches[1];
    let gap = next.at - throttled.at;
    println!("first request after the 429 arrived {gap:?} after the throttled one");
    // The throttled request was recorded before its 429 was sent: strict.
    assert!(
        gap >= Duration::from_secs(1),
        "a request reached Heap {gap:?} after a 429 with Retry-After: 1"
    );
    let mut doubled: Vec<String> = duplicates(&report).into_keys().collect();
    doubled.sort_unstable();
    let mut expected = batch_keys(&report, 0);
    expected.sort_unstable();
    assert_eq!(doubled, expected, "only the throttled batch is re-sent");
    assert!(duplicates(&report).values().all(|n| *n == 2));
    assert_eq!(report.received_keys().len(), ids.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_without_retry_after_is_retried_with_backoff() {
    let h = TestApp::start(heap_budgets(), base_args()).await;
    h.heap()
        .push_faults([Fault::status(429), Fault::status(429), Fault::status(408)]);
    let (events, ids) = sends("429", 40, 40);
    let report = h.post_and_deliver(&events, &ids).await;
    assert_eq!(report.requests_with(TRACK, 429), 2);
    let text = h.metrics().await;
    assert_eq!(retries(&text, "status_429"), 2.0);
    assert_eq!(retries(&text, "status_408"), 1.0);
    assert!(h.dead_letters().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_acknowledgements_are_resent_and_only_the_dropped_batch_doubles() {
    let h = TestApp::start(heap_budgets(), base_args()).await;
    h.heap().push_fault(Fault::DropAfterProcessing);
    let (events, ids) = sends("drop", 30, 30);
    h.post_events(&events).await;
    let report = h.wait_delivered(&ids, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let report = {
        let later = h.heap().report();
        assert_eq!(later.events_accepted, report.events_accepted);
        later
    };
    assert_eq!(report.dropped_connections.get(TRACK), Some(&1));
    // No loss, and every duplicate is an event of the batch whose answer was lost.
    assert_eq!(report.received_keys().len(), ids.len());
    let mut doubled: Vec<String> = duplicates(&report).into_keys().collect();
    doubled.sort_unstable();
    let mut dropped = batch_keys(&report, 0);
    dropped.sort_unstable();
    assert_eq!(doubled, dropped);
    assert!(duplicates(&report).values().all(|n| *n == 2));
    assert_eq!(report.duplicate_deliveries(), dropped.len() as u64);
    let text = h.metrics().await;
    assert_eq!(retries(&text, "connect") + retries(&text, "timeout"), 1.0);
    assert!(h.dead_letters().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_dropped_before_processing_are_retried_without_duplicates() {
    let h = TestApp::start(heap_budgets(), base_args()).await;
    h.heap()
        .push_faults([Fault::DropBeforeProcessing, Fault::DropBeforeProcessing]);
    let (events, ids) = sends("dropb", 30, 30);
    let report = h.post_and_deliver(&events, &ids).await;
    assert_eq!(report.dropped_connections.get(TRACK), Some(&2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_slower_than_heap_timeout_are_retried_without_loss() {
    let h = TestApp::start(
        heap_budgets(),
        SettingsArgs {
            heap_timeout: Some("200ms".into()),
            ..base_args()
        },
    )
    .await;
    h.heap().push_fault(Fault::Delay(Duration::from_secs(1)));
    let (events, ids) = sends("slow", 30, 30);
    h.post_events(&events).await;
    let report = h.wait_delivered(&ids, Duration::from_secs(20)).await;
    // The slow request was processed by Heap (the stand-in records at once): its events may
    // arrive twice, no other event may.
    assert_eq!(report.received_keys().len(), ids.len());
    let slow = batch_keys(&report, 0);
    for (key, n) in duplicates(&report) {
        assert!(
            slow.contains(&key),
            "{key} doubled but was not in the slow batch"
        );
        assert_eq!(n, 2, "{key}");
    }
    let text = h.metrics().await;
    assert_eq!(retries(&text, "timeout"), 1.0);
    assert!(h.dead_letters().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_queued_while_heap_is_down_arrives_after_it_recovers() {
    let h = TestApp::start(heap_budgets(), base_args()).await;
    h.heap().set_down(true);
    let (events, ids) = sends("down", 90, 45);
    h.post_in_batches(&events[..60], 20).await;
    // Several failed attempts, and nothing accepted meanwhile.
    wait_until(
        "Heap refused three requests",
        Duration::from_secs(20),
        || h.heap().report().requests_with(TRACK, 503) >= 3,
    )
    .await;
    h.post_in_batches(&events[60..], 15).await;
    wait_until_async(
        "the backoff is visible",
        Duration::from_secs(10),
        || async {
            h.metric(r#"currents_heap_delivery_retries_total{reason="status_5xx",route="default"}"#)
                .await
                >= 5.0
        },
    )
    .await;
    let report = h.heap().report();
    assert_eq!(report.events_accepted, 0);
    assert_eq!(h.queued_count(), 90);
    assert_eq!(h.metric("currents_heap_queue_events").await, 90.0);
    // The backoff is capped (200 ms): well under a hundred attempts in this time.
    assert!(report.requests_with(TRACK, 503) < 200);

    h.heap().set_mode(Mode::Normal);
    h.delivered_once(&ids).await;
    assert!(h.dead_letters().is_empty());
    assert_eq!(h.metric("currents_heap_queue_events").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_of_user_properties_retries_them_without_resending_the_track_events() {
    let h = TestApp::start(heap_budgets(), base_args()).await;
    // The track request passes, the user properties request that follows gets a 503.
    let (report, _) = h.deliver_past_a_user_properties_fault("sub", 503).await;
    let mut users: Vec<&str> = report
        .user_property_items()
        .map(|(_, u)| u.identity.as_str())
        .collect();
    users.sort_unstable();
    assert_eq!(
        users,
        ["sub-user-0", "sub-user-1", "sub-user-2", "sub-user-3"]
    );
}
