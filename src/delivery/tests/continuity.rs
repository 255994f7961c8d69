//! Continuity across restarts (product.md §9), on paused time: a lane of the "next process"
//! is a new [`Delivery`] on the same store, which reads what the last one saved. Saved times
//! are wall-clock, and tokio's paused clock does not move the wall clock, so a restart here
//! happens "at once" after the last process's last step; what the wall clock moved meanwhile
//! (a busy machine) is measured and allowed for.

use super::*;
use crate::queue::{QueueError, unix_micros};

/// Wall-clock time since `since` (UNIX µs).
fn wall_since(since: i64) -> Duration {
    Duration::from_micros((unix_micros() - since).max(0) as u64)
}

impl Lane {
    /// The lane of the next process on this store: a new `Delivery` (fresh budgets, no
    /// pause, nothing in memory) that has read what this one saved.
    async fn restarted(self) -> Lane {
        let mut next = self.fresh_delivery();
        next.restore_saved().await.unwrap();
        Lane {
            delivery: next,
            ..self
        }
    }

    fn fresh_delivery(&self) -> Delivery {
        Delivery::new(
            self.delivery.cfg.clone(),
            Arc::clone(&self.heap) as Arc<dyn Sender>,
            Arc::clone(&self.queue),
            self.metrics.clone(),
            Arc::clone(&self.bell),
        )
    }

    /// Steps until a batch is sent, waiting out what the lane asks to wait for.
    async fn next_sent(&mut self) -> SendReport {
        loop {
            match self.step().await {
                Step::Idle { wait } => tokio::time::advance(wait).await,
                Step::Paused { until } => tokio::time::advance(until - Instant::now()).await,
                Step::Sent(r) if r.requests > 0 => return r,
                Step::Sent(_) => {}
                other => panic!("{other:?}"),
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_restart_continues_a_retry_after_pause() {
    let mut lane = lane(config(15_000, 1_000)).await;
    lane.queue_events(&[("a", "u1")]).await;
    lane.heap.then([Answer::RetryAfter(429, "30")]);
    let wall = unix_micros();
    assert_eq!(lane.sent().await.retried, 1);
    let mut next = lane.restarted().await;
    let gap = wall_since(wall);
    let Step::Paused { until } = next.step().await else {
        panic!("the next process sends into Heap's Retry-After pause");
    };
    let left = until - Instant::now();
    assert!(
        left <= Duration::from_secs(30) && left + gap >= Duration::from_secs(30),
        "{left:?} left after a restart of {gap:?}"
    );
    tokio::time::advance(left).await;
    assert_eq!(next.sent().await.delivered, 1);
}

#[tokio::test(start_paused = true)]
async fn a_restart_owes_the_app_budget_what_the_last_process_spent() {
    // 6,000 a minute: bursts of 100, then one cell every 60 s / (5,940 - 100).
    let mut lane = lane(config(6_000, 6_000)).await;
    let period = Duration::from_secs(60) / (5_940 - 100);
    let ids = ids("e", 300);
    lane.queue_each_for_its_own_user(&ids).await;
    let wall = unix_micros();
    assert_eq!(lane.sent().await.delivered, 100, "the burst");
    assert!(
        lane.queue.saved_lane(APP_ID).await.unwrap().is_some(),
        "a spent burst is saved before it is sent"
    );
    let mut next = lane.restarted().await;
    let gap = wall_since(wall);
    let started = Instant::now();
    assert_eq!(next.sent().await.delivered, 100);
    let waited = started.elapsed();
    // What continuing would have waited, less the wall-clock time the restart took.
    assert!(
        waited + gap >= period * 100,
        "the next process sent its burst after {waited:?} (restart {gap:?}), want {:?}",
        period * 100
    );
}

#[tokio::test(start_paused = true)]
async fn a_crash_loop_cannot_forgive_what_was_not_saved() {
    // 6,000 a minute: bursts of 100; the shape leaves 60 cells of slack below the budget.
    let mut lane = lane(config(6_000, 6_000)).await;
    let period = Duration::from_secs(60) / (5_940 - 100);
    let ids = ids("e", 210);
    lane.queue_each_for_its_own_user(&ids[..10]).await;
    let wall = unix_micros();
    assert_eq!(lane.sent().await.delivered, 10);
    assert_eq!(
        lane.queue.saved_lane(APP_ID).await.unwrap(),
        None,
        "10 cells owed are within the slack: not saved"
    );
    lane.queue_each_for_its_own_user(&ids[10..]).await;
    let mut next = lane.restarted().await;
    let gap = wall_since(wall);
    let started = Instant::now();
    assert_eq!(next.sent().await.delivered, 100);
    // Were the start not charged the slack, each restart of a crash loop could add a burst.
    assert!(
        started.elapsed() + gap >= period * 60,
        "a full burst {:?} after a restart",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_lane_far_below_its_budgets_saves_nothing() {
    let mut lane = lane(config(15_000, 1_000)).await;
    lane.queue_events(&[("a", "u1"), ("b", "u2")]).await;
    assert_eq!(lane.sent().await.delivered, 2);
    assert_eq!(lane.queue.saved_lane(APP_ID).await.unwrap(), None);
}

#[tokio::test(start_paused = true)]
async fn a_deferred_identity_stays_deferred_across_a_restart() {
    // 120 a minute per identity: a burst of 2, then one every 60 s / 116.
    let mut lane = lane(config(15_000, 120)).await;
    let cell = Duration::from_secs(60) / (118 - 2);
    let hot = ids("hot", 6);
    let events: Vec<(&str, &str)> = hot.iter().map(|id| (id.as_str(), "hot")).collect();
    lane.queue_events(&events).await;
    let wall = unix_micros();
    assert_eq!(lane.sent().await.delivered, 2, "the identity's burst");
    let saved = lane.queue.saved_lane(APP_ID).await.unwrap().unwrap();
    assert_eq!(saved.identities.len(), 1);
    assert_eq!(saved.identities[0].identity, "hot");
    let mut next = lane.restarted().await;
    let gap = wall_since(wall);
    let started = Instant::now();
    assert!(next.next_sent().await.delivered >= 1);
    assert!(
        started.elapsed() + gap >= cell,
        "the deferred identity was sent again after {:?} (restart {gap:?})",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_lane_that_cannot_read_its_saved_state_sends_nothing() {
    let lane = lane(config(15_000, 1_000)).await;
    lane.queue_events(&[("a", "u1")]).await;
    lane.queue.close().await.unwrap();
    let mut next = lane.fresh_delivery();
    assert_eq!(next.restore_saved().await, Err(QueueError::Closed));
    assert!(!next.continued, "the lane keeps trying before it sends");
}

/// A subscription change of `user` at `time`: sets `braze_email_subscription_status`.
fn subscription(id: &str, user: &str, time: i64, status: &str) -> NewEvent {
    let event = json!({
        "event_type": "users.behaviors.subscription.GlobalStateChange",
        "id": id,
        "time": time,
        "user": { "user_id": "639a35d192b0df004d06514c", "external_user_id": user },
        "properties": { "channel": "email", "subscription_status": status }
    });
    NewEvent {
        route: Arc::from("default"),
        app_id: Arc::from(APP_ID),
        workspace: None,
        dead_letter: None,
        event_id: id.into(),
        event_type: "users.behaviors.subscription.GlobalStateChange".into(),
        identity: Some(user.into()),
        event_time: time,
        payload: Bytes::from(serde_json::to_vec(&event).unwrap()),
        braze_user_id: None,
        heap_user: None,
        deletion: false,
    }
}

fn stale_skips(metrics: &Metrics) -> f64 {
    let series =
        "currents_heap_events_skipped_total{reason=\"stale_user_property\",route=\"default\"} ";
    metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
}

#[tokio::test(start_paused = true)]
async fn an_older_user_property_update_never_overwrites_a_newer_one() {
    let mut lane = lane(config(15_000, 1_000)).await;
    assert_eq!(stale_skips(&lane.metrics), 0.0);
    let status = |lane: &Lane| -> Vec<String> {
        lane.heap
            .user_property_items()
            .iter()
            .map(|u| u["properties"]["braze_email_subscription_status"].to_string())
            .collect()
    };
    lane.queue
        .append(vec![subscription(
            "new",
            "u1",
            1_780_000_200,
            "Unsubscribed",
        )])
        .await
        .unwrap();
    assert_eq!(lane.sent().await.delivered, 1);
    // Braze delivers an older change late, in a later batch.
    lane.queue
        .append(vec![
            subscription("old", "u1", 1_780_000_100, "Subscribed"),
            subscription("other", "u2", 1_780_000_100, "Subscribed"),
        ])
        .await
        .unwrap();
    assert_eq!(lane.sent().await.delivered, 2, "both are finished");
    assert_eq!(
        status(&lane),
        [r#""Unsubscribed""#, r#""Subscribed""#],
        "u1's older value is not sent; u2 has none yet"
    );
    assert_eq!(
        lane.heap.accepted_keys().len(),
        3,
        "the late event's track item is delivered"
    );
    assert_eq!(stale_skips(&lane.metrics), 1.0);
    assert_eq!(lane.queue.totals().events, 0);

    // The next process remembers what Heap has.
    let mut next = lane.restarted().await;
    next.queue
        .append(vec![
            subscription("older", "u1", 1_780_000_150, "Subscribed"),
            subscription("newer", "u1", 1_780_000_300, "Subscribed"),
        ])
        .await
        .unwrap();
    assert_eq!(next.sent().await.delivered, 2);
    assert_eq!(
        status(&next),
        [r#""Unsubscribed""#, r#""Subscribed""#, r#""Subscribed""#],
        "the newer change is sent after the restart, the older one is not"
    );
    next.queue
        .append(vec![subscription(
            "late",
            "u1",
            1_780_000_250,
            "Unsubscribed",
        )])
        .await
        .unwrap();
    assert_eq!(next.sent().await.delivered, 1);
    assert_eq!(
        status(&next).len(),
        3,
        "older than the newest sent: withheld"
    );
    assert_eq!(stale_skips(&next.metrics), 3.0);
}
