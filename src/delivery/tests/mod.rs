//! The delivery steps on paused time: one [`Delivery`] over a real SQLite queue in a temporary
//! directory and a scripted Heap behind the [`Sender`] trait. No socket, no wall-clock sleep:
//! every wait is tokio's, advanced by the test runtime.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::metrics::Metrics;
use crate::queue::sqlite::{SqliteQueue, WriterConfig};
use crate::queue::{
    DeadLetterQuery, NewEvent, Queue, QueueOp, QueuedEvent, ReadyRequest, unix_millis,
};

const APP_ID: &str = "4242";

mod continuity;
mod pacing;
mod scripted;

use scripted::{Answer, ScriptedHeap};

struct Lane {
    delivery: Delivery,
    bell: Arc<LaneBell>,
    queue: Arc<dyn Queue>,
    heap: Arc<ScriptedHeap>,
    metrics: Metrics,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

fn config(per_minute: u32, identity_per_minute: u32) -> DeliveryConfig {
    let mapping = RouteMapping {
        mapping: crate::transform::MappingOptions::default(),
        dead_letter_skipped: false,
    };
    DeliveryConfig {
        lane: Arc::from("default"),
        app_id: APP_ID.into(),
        routes: HashMap::new(),
        fallback: mapping,
        batch_size: 1000,
        linger: Duration::ZERO,
        max_request_bytes: 4 << 20,
        window_bytes: 32 << 20,
        events_per_window: NonZeroU32::new(per_minute).unwrap(),
        identity_events_per_window: NonZeroU32::new(identity_per_minute).unwrap(),
        window: Duration::from_secs(60),
        backoff: Backoff::try_new(Duration::from_secs(1), Duration::from_secs(60)).unwrap(),
        max_event_age: Duration::from_secs(86_400),
    }
}

async fn lane(cfg: DeliveryConfig) -> Lane {
    let dir = tempfile::tempdir().unwrap();
    let writer = WriterConfig {
        max_queue_bytes: 1 << 30,
        min_free_disk_bytes: 0,
        dedup_window: Duration::from_secs(3600),
        dedup_capacity: 10_000,
        identity_map_retention: std::time::Duration::from_secs(400 * 86_400),
    };
    let queue: Arc<dyn Queue> = Arc::new(SqliteQueue::open(dir.path(), writer).unwrap());
    let heap = Arc::new(ScriptedHeap::default());
    let bell: Arc<LaneBell> = Arc::default();
    let metrics = Metrics::new().unwrap();
    let delivery = Delivery::new(
        cfg,
        Arc::clone(&heap) as Arc<dyn Sender>,
        Arc::clone(&queue),
        metrics.clone(),
        Arc::clone(&bell),
    );
    Lane {
        delivery,
        bell,
        queue,
        heap,
        metrics,
        stop: CancellationToken::new(),
        _dir: dir,
    }
}

/// A Braze email send of `user`, as Currents posts it.
fn email_send(id: &str, user: &str) -> Bytes {
    let event = json!({
        "event_type": "users.messages.email.Send",
        "id": id,
        "time": 1_780_000_000,
        "user": { "user_id": "639a35d192b0df004d06514c", "external_user_id": user },
        "properties": { "campaign_name": "spring sale", "email_address": "a@example.com" }
    });
    Bytes::from(serde_json::to_vec(&event).unwrap())
}

impl Lane {
    /// Queues events `(id, user)` as ingest would.
    async fn queue_events(&self, events: &[(&str, &str)]) {
        let events = events
            .iter()
            .map(|(id, user)| NewEvent {
                route: Arc::from("default"),
                app_id: Arc::from(APP_ID),
                workspace: None,
                dead_letter: None,
                event_id: (*id).into(),
                event_type: "users.messages.email.Send".into(),
                identity: Some((*user).into()),
                event_time: 1_780_000_000,
                payload: email_send(id, user),
                braze_user_id: None,
                heap_user: None,
                deletion: false,
            })
            .collect();
        self.queue.append(events).await.unwrap();
    }

    /// Queues one event per id, each for a user of the same name.
    async fn queue_each_for_its_own_user(&self, ids: &[String]) {
        let events: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), id.as_str())).collect();
        self.queue_events(&events).await;
    }

    async fn step(&mut self) -> Step {
        self.delivery.step(&self.stop).await
    }

    async fn sent(&mut self) -> SendReport {
        match self.step().await {
            Step::Sent(report) => report,
            other => panic!("expected a batch to be sent, got {other:?}"),
        }
    }

    async fn queued(&self) -> Vec<QueuedEvent> {
        let all = ReadyRequest {
            app_id: APP_ID.into(),
            after: 0,
            now: unix_millis(),
            max_events: usize::MAX,
            max_bytes: usize::MAX,
            held: Default::default(),
        };
        self.queue.ready(all).await.unwrap().fresh
    }
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test(start_paused = true)]
async fn one_step_sends_a_batch_and_acknowledges_it() {
    let mut lane = lane(config(15_000, 1_000)).await;
    lane.queue_events(&[("a", "u1"), ("b", "u2"), ("c", "u1")])
        .await;
    let report = lane.sent().await;
    assert_eq!(
        report,
        SendReport {
            requests: 1,
            delivered: 3,
            ..SendReport::default()
        }
    );
    assert_eq!(
        lane.queue.totals().events,
        0,
        "acknowledged events leave the queue"
    );
    let keys = lane.heap.accepted_keys();
    assert_eq!(keys.len(), 3);
    // Nothing left: the next step waits for new events.
    assert!(matches!(lane.step().await, Step::Idle { .. }));
}

#[tokio::test(start_paused = true)]
async fn events_a_deletion_purged_are_dropped_from_the_window_unsent() {
    // 120 events a minute: two per request, so the rest waits in the window.
    let mut lane = lane(config(120, 1_000)).await;
    lane.queue_events(&[
        ("a", "u1"),
        ("b", "u2"),
        ("c", "u3"),
        ("d", "u3"),
        ("e", "u4"),
    ])
    .await;
    assert_eq!(lane.sent().await.delivered, 2);
    let held: Vec<i64> = lane
        .queued()
        .await
        .iter()
        .filter(|e| e.event.identity.as_deref() == Some("u3"))
        .map(|e| e.seq)
        .collect();
    assert_eq!(held.len(), 2);
    // What ingest does after a deletion purged u3's rows from the queue.
    lane.queue.apply(QueueOp::ack(held.clone())).await.unwrap();
    lane.bell.purged(held);
    while lane.queue.totals().events > 0 {
        lane.sent().await;
    }
    let keys = lane.heap.accepted_keys();
    let mut sent: Vec<&str> = keys.keys().map(String::as_str).collect();
    sent.sort();
    assert_eq!(sent, ["a", "b", "e"], "c and d were held, and never sent");
    assert!(matches!(lane.step().await, Step::Idle { .. }));
}

#[tokio::test(start_paused = true)]
async fn retry_after_pauses_the_lane_for_exactly_that_long() {
    let mut lane = lane(config(15_000, 1_000)).await;
    lane.queue_events(&[("a", "u1"), ("b", "u2")]).await;
    lane.heap.then([Answer::RetryAfter(429, "7")]);
    let report = lane.sent().await;
    assert_eq!(
        (report.requests, report.retried, report.delivered),
        (1, 2, 0)
    );
    let attempts: Vec<i64> = lane
        .queued()
        .await
        .iter()
        .map(|e| e.event.attempts)
        .collect();
    assert_eq!(
        attempts,
        [1, 1],
        "the failed attempt is counted in the queue"
    );
    let Step::Paused { until } = lane.step().await else {
        panic!("the lane must pause after a 429");
    };
    assert_eq!(until - Instant::now(), Duration::from_secs(7));
    tokio::time::advance(Duration::from_millis(6_999)).await;
    assert!(
        matches!(lane.step().await, Step::Paused { .. }),
        "not a moment early"
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(lane.sent().await.delivered, 2);
    assert_eq!(lane.heap.accepted_keys().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn without_retry_after_the_backoff_grows_and_resets_after_a_success() {
    let mut lane = lane(config(15_000, 1_000)).await;
    lane.queue_events(&[("a", "u1")]).await;
    // The ceiling of attempt k is 1 s · 2^k (full jitter: anywhere up to it).
    let mut ceilings = Vec::new();
    for answer in [
        Answer::Status(503),
        Answer::Unreachable,
        Answer::Status(500),
    ] {
        lane.heap.then([answer]);
        match lane.step().await {
            Step::Sent(r) => assert_eq!(r.retried, 1),
            other => panic!("{other:?}"),
        }
        let Step::Paused { until } = lane.step().await else {
            panic!("no pause after a failure");
        };
        let pause = until - Instant::now();
        ceilings.push(pause);
        tokio::time::advance(pause).await;
    }
    for (k, pause) in ceilings.iter().enumerate() {
        assert!(
            *pause <= Duration::from_secs(1 << k),
            "attempt {k}: paused {pause:?}"
        );
    }
    assert_eq!(lane.sent().await.delivered, 1);
    // After a success the next failure starts from the base again.
    lane.queue_events(&[("b", "u1")]).await;
    lane.heap.then([Answer::Status(503)]);
    assert_eq!(lane.sent().await.retried, 1);
    let Step::Paused { until } = lane.step().await else {
        panic!("no pause after a failure");
    };
    assert!(until - Instant::now() <= Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn the_app_budget_paces_batches_on_tokio_time() {
    // 600 a minute: bursts of 10, then one event every 60 s / (594 - 10).
    let mut lane = lane(config(600, 600)).await;
    let period = Duration::from_secs(60) / (594 - 10);
    let ids = ids("e", 30);
    lane.queue_each_for_its_own_user(&ids).await;
    let started = Instant::now();
    assert_eq!(lane.sent().await.delivered, 10, "the burst goes at once");
    assert_eq!(started.elapsed(), Duration::ZERO);
    for round in 1..=2u32 {
        let before = Instant::now();
        assert_eq!(lane.sent().await.delivered, 10);
        let waited = before.elapsed();
        // Ten cells, on tokio's millisecond timer.
        assert!(
            waited >= period * 10 && waited <= period * 10 + Duration::from_millis(1),
            "round {round} waited {waited:?}"
        );
    }
    assert_eq!(lane.heap.accepted_keys().len(), 30);
}

#[tokio::test(start_paused = true)]
async fn an_identity_over_its_budget_is_parked_while_the_others_flow() {
    // 120 a minute per identity: a burst of 2; the lane keeps 2 bursts of it in memory.
    let mut lane = lane(config(15_000, 120)).await;
    let hot = ids("hot", 20);
    let cold = ids("cold", 5);
    let mut events: Vec<(&str, &str)> = hot.iter().map(|id| (id.as_str(), "hot")).collect();
    events.extend(cold.iter().map(|id| (id.as_str(), id.as_str())));
    lane.queue_events(&events).await;
    let report = lane.sent().await;
    assert_eq!(
        report.delivered,
        2 + 5,
        "the identity's burst and every other identity"
    );
    let queued = lane.queued().await;
    assert_eq!(queued.len(), 18);
    assert!(
        queued
            .iter()
            .all(|e| e.event.identity.as_deref() == Some("hot"))
    );
    let mut parked: Vec<i64> = queued
        .iter()
        .map(|e| e.not_before)
        .filter(|t| *t > 0)
        .collect();
    assert_eq!(
        parked.len(),
        18 - 4,
        "all but a reserve of two bursts is parked"
    );
    parked.sort_unstable();
    let identity_period = (Duration::from_secs(60) / (118 - 2)).as_millis() as i64;
    assert!(
        parked.windows(2).all(|w| w[1] - w[0] == identity_period),
        "parked events come due one budget period apart: {parked:?}"
    );
    // The reserve in memory goes as the identity's budget refills, not before.
    let started = Instant::now();
    let report = loop {
        match lane.step().await {
            Step::Idle { wait } => tokio::time::advance(wait).await,
            Step::Sent(r) => break r,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(report.delivered, 1);
    let waited = started.elapsed();
    let cell = Duration::from_secs(60) / (118 - 2);
    assert!(
        waited >= cell - Duration::from_millis(1),
        "sent after {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rejected_request_is_bisected_until_the_poisoned_event_is_dead_lettered_alone() {
    let mut lane = lane(config(15_000, 1_000)).await;
    let ids = ids("e", 8);
    lane.queue_each_for_its_own_user(&ids).await;
    *lane.heap.poison.lock().unwrap() = Some("\"e-5\"".into());
    let mut total = SendReport::default();
    while lane.queue.totals().events > 0 {
        let r = lane.sent().await;
        total.requests += r.requests;
        total.delivered += r.delivered;
        total.dead_lettered += r.dead_lettered;
        total.halved += r.halved;
        assert!(total.requests <= 7, "more requests than a bisection needs");
    }
    // 8 → 4 + 4 → 2 + 2 → 1 + 1: seven requests, three halvings.
    assert_eq!(
        total,
        SendReport {
            requests: 7,
            delivered: 7,
            retried: 0,
            dead_lettered: 1,
            halved: 3,
        }
    );
    let keys = lane.heap.accepted_keys();
    assert_eq!(keys.len(), 7);
    assert!(
        keys.values().all(|n| *n == 1),
        "each good event accepted once"
    );
    let dead = lane
        .queue
        .dead_letters(DeadLetterQuery {
            reason: None,
            after: 0,
            limit: 10,
            max_bytes: usize::MAX,
        })
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].event.event_id.as_str(), dead[0].reason.as_str()),
        ("e-5", "rejected")
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_too_large_is_split_in_two() {
    let mut lane = lane(config(15_000, 1_000)).await;
    lane.queue_events(&[("a", "u1"), ("b", "u2")]).await;
    lane.heap.then([Answer::Status(413)]);
    let first = lane.sent().await;
    assert_eq!((first.requests, first.halved, first.delivered), (1, 1, 0));
    assert_eq!(lane.sent().await.delivered, 1);
    assert_eq!(lane.sent().await.delivered, 1);
    assert_eq!(lane.queue.totals().events, 0);
}

#[tokio::test(start_paused = true)]
async fn stop_ends_a_budget_wait_without_sending() {
    let mut lane = lane(config(600, 600)).await;
    let ids = ids("e", 20);
    lane.queue_each_for_its_own_user(&ids).await;
    assert_eq!(lane.sent().await.delivered, 10);
    let stop = lane.stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.cancel();
    });
    assert_eq!(lane.step().await, Step::Stopped);
    assert_eq!(
        lane.heap.accepted_keys().len(),
        10,
        "nothing sent after the stop"
    );
    assert_eq!(lane.queue.totals().events, 10, "the rest stays queued");
}

#[tokio::test(start_paused = true)]
async fn values_the_mapping_leaves_out_are_counted() {
    let mut lane = lane(config(15_000, 1_000)).await;
    let series = "currents_heap_properties_dropped_total{reason=\"non_finite_number\"} ";
    let count = || {
        Metrics::new()
            .unwrap()
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap()
    };
    let before = count();
    let raw = br#"{"event_type":"users.behaviors.CustomEvent","id":"nan","time":1780000000,
        "user":{"external_user_id":"u1"},"properties":{"name":"x","big":1e999,"ok":1}}"#;
    let event = NewEvent {
        route: Arc::from("default"),
        app_id: Arc::from(APP_ID),
        workspace: None,
        dead_letter: None,
        event_id: "nan".into(),
        event_type: "users.behaviors.CustomEvent".into(),
        identity: Some("u1".into()),
        event_time: 1_780_000_000,
        payload: Bytes::from_static(raw),
        braze_user_id: None,
        heap_user: None,
        deletion: false,
    };
    lane.queue.append(vec![event]).await.unwrap();
    assert_eq!(
        lane.sent().await.delivered,
        1,
        "the rest of the event is sent"
    );
    // Process-wide: other tests map events at the same time, so at least this one.
    assert!(count() >= before + 1.0);
}
