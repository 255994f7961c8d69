//! What Heap refuses for good (product.md §5): a `400` is bisected down to the offending
//! events, which alone are dead-lettered with Heap's answer; a `413` splits the batch; events
//! older than `max_event_age` are dead-lettered as `expired`.

use std::time::Duration;

use currents_heap::config::SettingsArgs;
use currents_heap_testkit::standin::Fault;

use crate::common::*;

fn dead_lettered(text: &str, reason: &str) -> f64 {
    metric_value(
        text,
        &format!(
            "currents_heap_events_dead_lettered_total{{reason=\"{reason}\",route=\"default\"}}"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_isolated_by_bisection_and_dead_lettered_alone() {
    let h = TestApp::start(heap_budgets(), base_args()).await;
    let (events, ids) = sends("bis", 100, 100);
    let poison = ids[37].clone();
    h.heap().poison(poison.clone());
    // One request of 100 events.
    h.post_events(&events).await;
    let good: Vec<String> = ids.iter().filter(|k| **k != poison).cloned().collect();
    let report = h.delivered_once(&good).await;
    // Bisection, not one request per event: 100 → 50 → 25 → 13 → 7 → 4 → 2 → 1.
    assert!(
        report.poison_rejections <= 8,
        "{} rejected requests to isolate one event among 100",
        report.poison_rejections
    );
    assert!(report.poison_rejections >= 2);

    let dead = h.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let d = &dead[0];
    assert_eq!(d.event.event_id, poison);
    assert_eq!(d.reason, "rejected");
    assert_eq!(d.event.identity.as_deref(), Some("bis-user-37"));
    let detail = d.detail.as_deref().expect("Heap's answer is kept");
    assert!(detail.contains("400"), "{detail}");
    assert!(
        detail.contains(&format!("poisoned idempotency_key \"{poison}\"")),
        "Heap's response body is missing from the detail: {detail}"
    );
    // The same through the operator's view (`currents-heap dlq list`).
    let queue = currents_heap::queue::sqlite::SqliteQueue::open_maintenance(h.data_dir()).unwrap();
    let (mut out, mut summary) = (Vec::new(), Vec::new());
    let listed = currents_heap::dlq::list(
        &queue,
        &currents_heap::dlq::Selection::default(),
        100,
        false,
        &mut out,
        &mut summary,
    )
    .await
    .unwrap();
    assert_eq!(listed, 1);
    let line = &json_lines(&out)[0];
    assert_eq!(line["event_id"], poison.as_str());
    assert_eq!(line["reason"], "rejected");
    assert_eq!(line["detail"], detail);
    assert!(
        String::from_utf8_lossy(&summary).contains("rejected=1"),
        "{}",
        String::from_utf8_lossy(&summary)
    );
    // The dead letter keeps the event as Braze sent it, for a replay.
    let payload: serde_json::Value = serde_json::from_slice(&d.event.payload).unwrap();
    assert_eq!(payload, events[37]);

    let text = h.metrics().await;
    assert_eq!(dead_lettered(&text, "rejected"), 1.0);
    assert_eq!(
        metric_value(
            &text,
            r#"currents_heap_dead_letter_events{reason="rejected"}"#
        ),
        1.0
    );
    assert_eq!(metric_value(&text, "currents_heap_queue_events"), 0.0);
    assert_eq!(
        metric_value(
            &text,
            r#"currents_heap_events_delivered_total{route="default"}"#
        ),
        99.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_poison_events_in_one_batch_are_each_dead_lettered_and_the_rest_delivered() {
    let h = TestApp::start(heap_budgets(), base_args()).await;
    let (events, ids) = sends("bis2", 64, 64);
    let poisoned = [ids[0].clone(), ids[1].clone(), ids[40].clone()];
    for p in &poisoned {
        h.heap().poison(p.clone());
    }
    h.post_events(&events).await;
    let good: Vec<String> = ids
        .iter()
        .filter(|k| !poisoned.contains(k))
        .cloned()
        .collect();
    h.delivered_once(&good).await;
    let mut dead: Vec<(String, String)> = h
        .dead_letters()
        .into_iter()
        .map(|d| (d.event.event_id, d.reason))
        .collect();
    dead.sort_unstable();
    let mut expected: Vec<(String, String)> = poisoned
        .iter()
        .map(|p| (p.clone(), "rejected".to_owned()))
        .collect();
    expected.sort_unstable();
    assert_eq!(dead, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_splits_the_batch_and_every_half_is_delivered() {
    let h = TestApp::start(heap_budgets(), base_args()).await;
    h.heap().push_fault(Fault::status(413));
    let (events, ids) = sends("split", 100, 100);
    let report = h.post_and_deliver(&events, &ids).await;
    assert_eq!(report.requests_with(TRACK, 413), 1);
    let sizes: Vec<usize> = report
        .track_batches
        .iter()
        .map(|b| b.events.len())
        .collect();
    assert_eq!(
        sizes,
        [50, 50],
        "the refused batch of 100 is sent as two halves"
    );
    assert!(h.dead_letters().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_413s_split_down_to_single_events_and_only_those_are_dead_lettered() {
    let h = TestApp::start(heap_budgets(), base_args()).await;
    // 8 → 4 + 4; 4 → 2 + 2; 2 → 1 + 1; the first single event is refused too.
    h.heap().push_faults([
        Fault::status(413),
        Fault::status(413),
        Fault::status(413),
        Fault::status(413),
    ]);
    let (events, ids) = sends("split1", 8, 8);
    h.post_events(&events).await;
    let rest: Vec<String> = ids[1..].to_vec();
    h.delivered_once(&rest).await;
    let dead = h.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].event.event_id, ids[0]);
    assert_eq!(dead[0].reason, "too_large");
    assert!(dead[0].detail.as_deref().unwrap_or("").contains("413"));
    assert_eq!(dead_lettered(&h.metrics().await, "too_large"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_not_delivered_within_max_event_age_are_dead_lettered_as_expired() {
    let h = TestApp::start(
        heap_budgets(),
        SettingsArgs {
            max_event_age: Some("1s".into()),
            ..base_args()
        },
    )
    .await;
    h.heap().set_down(true);
    let (events, ids) = sends("old", 20, 20);
    h.post_events(&events).await;
    wait_until("all 20 events expired", Duration::from_secs(20), || {
        h.dead_letters().len() == 20
    })
    .await;
    let dead = h.dead_letters();
    assert!(dead.iter().all(|d| d.reason == "expired"), "{dead:?}");
    let mut dead_ids: Vec<String> = dead.into_iter().map(|d| d.event.event_id).collect();
    dead_ids.sort_unstable();
    let mut expected = ids.clone();
    expected.sort_unstable();
    assert_eq!(dead_ids, expected);
    assert_eq!(h.queued_count(), 0);
    assert_eq!(h.heap().report().events_accepted, 0);
    let text = h.metrics().await;
    assert_eq!(dead_lettered(&text, "expired"), 20.0);
    assert_eq!(metric_value(&text, "currents_heap_queue_events"), 0.0);

    // Delivery goes on once Heap is back.
    h.heap().set_down(false);
    let (events, ids) = sends("fresh", 5, 5);
    h.post_and_deliver(&events, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_on_user_properties_is_bisected_without_resending_the_track_events() {
    let h = TestApp::start(heap_budgets(), base_args()).await;
    // Track passes; the 4 users get one 400, then pass in halves. A lone event whose user
    // properties are refused is dead-lettered.
    let (report, _) = h.deliver_past_a_user_properties_fault("upb", 400).await;
    let sizes: Vec<usize> = report
        .user_property_batches
        .iter()
        .map(|b| b.users.len())
        .collect();
    assert_eq!(sizes, [2, 2]);
    assert!(h.dead_letters().is_empty());

    h.heap()
        .push_faults([Fault::Delay(Duration::ZERO), Fault::status(400)]);
    h.post_events(&[subscription_change("upb-lone", "upb-user-9")])
        .await;
    wait_until(
        "the lone event is dead-lettered",
        Duration::from_secs(20),
        || !h.dead_letters().is_empty(),
    )
    .await;
    let dead = h.dead_letters();
    assert_eq!(dead[0].event.event_id, "upb-lone");
    assert_eq!(dead[0].reason, "rejected_user_properties");
    let report = h.heap().report();
    assert_eq!(
        report.key_count("upb-lone"),
        1,
        "its track event went through once"
    );
    assert_eq!(h.queued_count(), 0);
}
