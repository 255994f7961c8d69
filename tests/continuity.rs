//! Continuity across restarts (product.md §9), with the real binary and `kill -9`: a crash
//! loop does not put any Heap window over its budget, a `Retry-After` pause outlives the
//! process that was told it, and a user-property update Braze delivers late never overwrites
//! the newer value Heap already has.
//!
//! The crash loop runs Heap's budgets (15,000 events per app and 1,000 per identity per
//! minute: bursts of 250, then one event every 4.1 ms) and kills the forwarder right after
//! Heap counted a burst, five times within a few seconds. Heap's arrivals are then checked
//! against that budget shape: a GCRA limiter of it must have let every request through when
//! it arrived, allowing for a delay between sending and arriving that varies up to 400 ms
//! (the shape leaves 1 % of the budget, 600 ms of it, for such jitter); so no window holds
//! more than the budget, without the test waiting for a whole window to fill. A restart that
//! forgot the budget sends its next burst as soon as it is up: up to a second early, less its
//! start-up (0.1–0.5 s here). The window is Heap's minute, not a scaled one, because a scaled
//! window scales that second down to below the time a restart takes, where forgetting the
//! budget could no longer be told from remembering it.
// Test code: `unwrap` is an assertion, and helpers are `pub` for the modules that share them.
#![allow(clippy::unwrap_used, unreachable_pub, missing_debug_implementations)]

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use currents_heap::delivery::BudgetShape;
use currents_heap_testkit::process::ServerProcess;
use currents_heap_testkit::standin::{Fault, HeapStandIn, StandInConfig};
use serde_json::{Value, json};

mod common;

use common::{Braze, kill_9, spawn_delivering, wait_until, wait_until_async};

const TRACK: &str = "/api/track";

fn send(id: &str, user: &str) -> Value {
    json!({
        "event_type": "users.messages.email.Send",
        "id": id,
        "time": 1_780_000_000,
        "user": { "user_id": format!("braze-{user}"), "external_user_id": user },
        "properties": { "campaign_name": "continuity" }
    })
}

/// Waits until the server's `/metrics` has `line`.
async fn until_metric(server: &ServerProcess, what: &str, line: &str) {
    let braze = Braze::new();
    wait_until_async(what, Duration::from_secs(30), || async {
        braze
            .metrics(server.addr)
            .await
            .is_ok_and(|m| m.lines().any(|l| l == line))
    })
    .await;
}

async fn post_all(server: &ServerProcess, events: Vec<Value>) {
    let braze = Braze::new();
    for chunk in events.chunks(500) {
        let body = Bytes::from(serde_json::to_vec(&json!({ "events": chunk })).unwrap());
        let reply = braze
            .post(server.addr, body, Duration::from_secs(30))
            .await
            .unwrap();
        assert!(reply.status.is_success(), "{}", reply.text());
    }
}

fn spawn(data_dir: &Path, heap_url: &str, window: &str) -> ServerProcess {
    spawn_delivering(
        data_dir,
        heap_url,
        &[
            "--heap-events-per-minute",
            "15000",
            "--heap-identity-events-per-minute",
            "1000",
            "--heap-budget-window",
            window,
            "--heap-linger",
            "10ms",
            "--retry-initial-backoff",
            "20ms",
            "--retry-max-backoff",
            "200ms",
        ],
    )
}

/// Waits until Heap counted more track events than `seen`; returns how many it has.
async fn next_accepted(heap: &HeapStandIn, seen: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = heap.events_accepted();
        if now > seen {
            return now;
        }
        assert!(Instant::now() < deadline, "Heap received nothing more");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The first arrival a GCRA limiter of `shape` would have refused, and by how much, allowing
/// `jitter` of network delay: `arrivals` are (time, events) in arrival order.
fn first_early(
    arrivals: &[(Duration, u32)],
    shape: BudgetShape,
    jitter: Duration,
) -> (Option<(Duration, Duration)>, Duration) {
    let burst = shape.period * shape.burst;
    let mut refill = Duration::ZERO;
    let mut earliest = Duration::ZERO;
    for &(at, n) in arrivals {
        refill = refill.max(at) + shape.period * n;
        let early = refill.saturating_sub(at + burst);
        earliest = earliest.max(early);
        if early > jitter {
            return (Some((at, early)), earliest);
        }
    }
    (None, earliest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_keeps_every_window_within_the_budget() {
    let window = Duration::from_secs(60);
    let heap = HeapStandIn::start(StandInConfig {
        events_per_window: 15_000,
        identity_events_per_window: 1_000,
        window,
        enforce: true,
    });
    let data = tempfile::tempdir().unwrap();
    // A backlog, stored while Heap is down.
    heap.set_down(true);
    let mut server = spawn(data.path(), &heap.base_url(), "60s");
    let events: Vec<Value> = (0..4_000)
        .map(|i| send(&format!("loop-{i}"), &format!("user-{}", i % 2_000)))
        .collect();
    post_all(&server, events).await;
    heap.set_down(false);
    next_accepted(&heap, 0).await;
    let started = Instant::now();

    let mut restarts = Vec::new();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Right after Heap counted a burst: the budget owes the most then.
        next_accepted(&heap, heap.events_accepted()).await;
        kill_9(server).await;
        let killed = Instant::now();
        server = spawn(data.path(), &heap.base_url(), "60s");
        next_accepted(&heap, heap.events_accepted()).await;
        restarts.push(killed.elapsed());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    kill_9(server).await;
    assert!(
        started.elapsed() < window,
        "five kills within one window took {:?}",
        started.elapsed()
    );

    let report = heap.report();
    let shape = BudgetShape::new(
        std::num::NonZeroU32::new(report.config.events_per_window).unwrap(),
        window,
        1000,
    );
    assert_eq!(shape.burst, 250, "Heap's budget shape");
    let arrivals: Vec<(Duration, u32)> = report
        .track_batches
        .iter()
        .map(|b| (b.at, b.events.len() as u32))
        .collect();
    // Requests are timed where they are sent; Heap sees them after a delay that varies.
    let jitter = Duration::from_millis(400);
    let (early, earliest) = first_early(&arrivals, shape, jitter);
    eprintln!(
        "restarts (kill to the next request at Heap): {restarts:?}; {} requests, the earliest \
         {earliest:?} ahead of the budget; fullest window {} of {}; {} refused over a budget",
        arrivals.len(),
        report.max_app_window.events,
        report.config.events_per_window,
        report.limit_rejections
    );
    assert!(arrivals.len() > 10, "too few requests to judge");
    assert_eq!(early, None, "a request came ahead of the budget (at, by)");
    assert_eq!(
        report.limit_rejections, 0,
        "Heap refused requests over a budget (429) during the crash loop"
    );
    assert!(!report.over_budget());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_pause_outlives_the_process() {
    let heap = HeapStandIn::start(StandInConfig::heap());
    let data = tempfile::tempdir().unwrap();
    heap.push_fault(Fault::Status {
        code: 429,
        retry_after: Some("6".into()),
        body: "slow down".into(),
    });
    let server = spawn(data.path(), &heap.base_url(), "60s");
    post_all(&server, vec![send("paused-1", "u1")]).await;
    wait_until("Heap answered 429", Duration::from_secs(30), || {
        heap.report().requests_with(TRACK, 429) == 1
    })
    .await;
    let told = Instant::now();
    // The lane shows the pause once it has saved it.
    until_metric(
        &server,
        "the lane paused",
        r#"currents_heap_delivery_paused{route="default"} 1"#,
    )
    .await;
    kill_9(server).await;
    let server = spawn(data.path(), &heap.base_url(), "60s");
    // Whatever the machine's speed, nothing may arrive before the pause is over (6 s from the
    // 429, which this test saw a little after it was sent: 2 s are left for that).
    while told.elapsed() < Duration::from_secs(4) {
        assert_eq!(
            heap.report().events_accepted,
            0,
            "the restarted process sent {:?} after Heap asked for 6 s",
            told.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_until("the event delivered", Duration::from_secs(30), || {
        heap.report().events_accepted == 1
    })
    .await;
    kill_9(server).await;
}

fn subscription(id: &str, time: i64, status: &str) -> Value {
    json!({
        "event_type": "users.behaviors.subscription.GlobalStateChange",
        "id": id,
        "time": time,
        "user": { "user_id": "braze-u1", "external_user_id": "u1" },
        "properties": { "channel": "email", "subscription_status": status }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_user_property_update_never_overwrites_a_newer_one_across_kill_9() {
    let heap = HeapStandIn::start(StandInConfig::heap());
    let data = tempfile::tempdir().unwrap();
    let statuses = |heap: &HeapStandIn| -> Vec<String> {
        heap.report()
            .user_property_items()
            .map(|(_, u)| {
                serde_json::to_string(&u.properties["braze_email_subscription_status"]).unwrap()
            })
            .collect()
    };
    let server = spawn(data.path(), &heap.base_url(), "60s");
    post_all(
        &server,
        vec![subscription("new", 1_780_000_200, "Unsubscribed")],
    )
    .await;
    wait_until("the newer value at Heap", Duration::from_secs(30), || {
        statuses(&heap).len() == 1
    })
    .await;
    // Acknowledged (and stamped) before the kill.
    until_metric(&server, "an empty queue", "currents_heap_queue_events 0").await;
    kill_9(server).await;

    // Braze delivers an older change late, after the restart, then a newer one.
    let server = spawn(data.path(), &heap.base_url(), "60s");
    post_all(
        &server,
        vec![subscription("old", 1_780_000_100, "Subscribed")],
    )
    .await;
    wait_until("its track item at Heap", Duration::from_secs(30), || {
        heap.report().events_accepted >= 2
    })
    .await;
    post_all(
        &server,
        vec![subscription("newest", 1_780_000_300, "Unsubscribed")],
    )
    .await;
    wait_until("the newest value at Heap", Duration::from_secs(30), || {
        statuses(&heap).len() >= 2
    })
    .await;
    let metrics = Braze::new().metrics(server.addr).await.unwrap();
    kill_9(server).await;
    assert_eq!(
        statuses(&heap),
        [r#""Unsubscribed""#, r#""Unsubscribed""#],
        "the late, older change was sent between them"
    );
    assert!(
        metrics.contains(
            r#"currents_heap_events_skipped_total{reason="stale_user_property",route="default"} 1"#
        ),
        "{metrics}"
    );
}
