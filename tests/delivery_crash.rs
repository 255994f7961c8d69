//! Nothing acknowledged is ever lost, across crashes during delivery (product.md §1.3, §5):
//! the real binary delivers to the Heap stand-in while a Braze-like client streams batches
//! at it (re-sending a batch until it gets a 2xx, as Braze does); it is `kill -9`ed three
//! times mid-delivery — while Heap works, during a request Heap has processed but not yet
//! answered, and while Heap is down — and restarted on the same data directory each time.
//! In the end every identified event reaches the stand-in (by idempotency key), no anonymous
//! one does, and a crash re-sends at most the one request that was in flight.
// Test code: `unwrap` is an assertion, and helpers are `pub` for the modules that share them.
#![allow(clippy::unwrap_used, unreachable_pub, missing_debug_implementations)]

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use currents_heap_testkit::process::ServerProcess;
use currents_heap_testkit::standin::{Fault, HeapStandIn, StandInConfig};
use http::StatusCode;
use serde_json::{Value, json};

mod common;

use common::{Braze, kill_9, spawn_delivering, wait_until};

const BATCHES: usize = 60;
const EVENTS_PER_BATCH: usize = 25;
/// The forwarder's largest request: the app budget's burst (1200 / 60).
const MAX_BATCH: u64 = 20;

type Server = ServerProcess;

/// The real binary against the stand-in at `heap_url`, budgets scaled so delivery is mid-way
/// when the test kills it.
fn start_server(data_dir: &Path, heap_url: &str) -> Server {
    spawn_delivering(
        data_dir,
        heap_url,
        &[
            // Scaled budgets: 1200 events / 2 s per app (~580/s), 1000 per identity.
            "--heap-events-per-minute",
            "1200",
            "--heap-identity-events-per-minute",
            "1000",
            "--heap-budget-window",
            "2s",
            "--heap-linger",
            "30ms",
            "--heap-timeout",
            "5s",
            "--retry-initial-backoff",
            "20ms",
            "--retry-max-backoff",
            "200ms",
        ],
    )
}

fn identified(id: &str, user: &str) -> Value {
    json!({
        "event_type": "users.messages.email.Send",
        "id": id,
        "time": 1_780_000_000,
        "user": { "user_id": "65a0c0ffee0000000000e001", "external_user_id": user },
        "properties": { "campaign_name": "crash test", "send_id": id }
    })
}

fn custom(id: &str, user: &str) -> Value {
    json!({
        "event_type": "users.behaviors.CustomEvent",
        "id": id,
        "time": 1_780_000_100,
        "user": { "user_id": "65a0c0ffee0000000000e002", "external_user_id": user },
        "properties": { "name": "Viewed Plan", "custom_properties": { "plan": "pro" } }
    })
}

fn anonymous(id: &str) -> Value {
    json!({
        "event_type": "users.messages.email.Send",
        "id": id,
        "time": 1_780_000_000,
        "user": { "user_id": "65a0c0ffee0000000000e003" },
        "properties": { "campaign_name": "crash test" }
    })
}

/// The whole stream: batch bodies, the identified ids, the anonymous ids.
fn stream() -> (Vec<Bytes>, Vec<String>, Vec<String>) {
    let mut bodies = Vec::new();
    let mut identified_ids = Vec::new();
    let mut anonymous_ids = Vec::new();
    for b in 0..BATCHES {
        let mut events = Vec::new();
        for e in 0..EVENTS_PER_BATCH {
            let id = format!("crash-{b}-{e}");
            let user = format!("user-{}", (b * EVENTS_PER_BATCH + e) % 300);
            match e % 5 {
                4 => {
                    events.push(anonymous(&id));
                    anonymous_ids.push(id);
                }
                3 => {
                    events.push(custom(&id, &user));
                    identified_ids.push(id);
                }
                _ => {
                    events.push(identified(&id, &user));
                    identified_ids.push(id);
                }
            }
        }
        bodies.push(Bytes::from(
            serde_json::to_vec(&json!({ "events": events })).unwrap(),
        ));
    }
    (bodies, identified_ids, anonymous_ids)
}

/// Braze: posts every batch in order, re-sending each until it gets a 2xx (across the
/// server's deaths). Counts acknowledged batches.
async fn braze(
    bodies: Vec<Bytes>,
    server: Arc<Mutex<Option<SocketAddr>>>,
    acked: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) {
    let braze = Braze::unpooled();
    for body in bodies {
        loop {
            assert!(!stop.load(Ordering::SeqCst), "the client was stopped early");
            let addr = *server.lock().unwrap();
            if let Some(addr) = addr
                && let Ok(status) = braze
                    .post(addr, body.clone(), Duration::from_secs(20))
                    .await
                    .map(|reply| reply.status)
            {
                if status.is_success() {
                    break;
                }
                assert_eq!(
                    status,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "a valid batch refused"
                );
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        acked.fetch_add(1, Ordering::SeqCst);
        // A steady stream rather than one burst, so kills land while batches arrive.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_identified_event_reaches_heap_despite_kill_9_during_delivery() {
    let heap = HeapStandIn::start(StandInConfig {
        events_per_window: 1200,
        identity_events_per_window: 1000,
        window: Duration::from_secs(2),
        enforce: true,
    });
    let url = heap.base_url();
    let data = tempfile::tempdir().unwrap();
    let (bodies, identified_ids, anonymous_ids) = stream();

    let current = Arc::new(Mutex::new(None));
    let acked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut server = start_server(data.path(), &url);
    *current.lock().unwrap() = Some(server.addr);
    let client = tokio::spawn(braze(
        bodies,
        Arc::clone(&current),
        Arc::clone(&acked),
        Arc::clone(&stop),
    ));
    let mut kills = 0u64;

    // 1. While Heap works and batches keep arriving.
    wait_until("Heap received 200 events", Duration::from_secs(60), || {
        heap.report().events_accepted >= 200
    })
    .await;
    *current.lock().unwrap() = None;
    kill_9(server).await;
    kills += 1;
    let acked_at_kill_1 = acked.load(Ordering::SeqCst);
    assert!(
        acked_at_kill_1 < BATCHES,
        "the client finished before the first kill"
    );
    server = start_server(data.path(), &url);
    *current.lock().unwrap() = Some(server.addr);

    // 2. During a request Heap has processed but not yet answered.
    let before = heap.report().events_accepted;
    wait_until("Heap received more", Duration::from_secs(60), || {
        heap.report().events_accepted > before + 100
    })
    .await;
    heap.push_fault(Fault::Delay(Duration::from_secs(3)));
    wait_until(
        "a slow request is in flight",
        Duration::from_secs(60),
        || heap.pending_faults() == 0,
    )
    .await;
    // The stand-in records a delayed request at once, then sleeps; the forwarder sends
    // nothing else while it waits, so the last recorded request is the slow one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let slow_batch = heap
        .report()
        .track_batches
        .last()
        .cloned()
        .expect("the slow request was recorded");
    *current.lock().unwrap() = None;
    kill_9(server).await;
    kills += 1;
    server = start_server(data.path(), &url);
    *current.lock().unwrap() = Some(server.addr);

    // 3. While Heap is down: delivery is retrying when the process dies.
    let before = heap.report().events_accepted;
    wait_until("Heap received more", Duration::from_secs(60), || {
        heap.report().events_accepted > before + 50
    })
    .await;
    heap.set_down(true);
    wait_until("the forwarder retries", Duration::from_secs(60), || {
        heap.report().requests_with("/api/track", 503) >= 2
    })
    .await;
    *current.lock().unwrap() = None;
    kill_9(server).await;
    kills += 1;
    heap.set_down(false);
    server = start_server(data.path(), &url);
    *current.lock().unwrap() = Some(server.addr);

    // Every batch acknowledged, then every identified event delivered.
    tokio::time::timeout(Duration::from_secs(120), client)
        .await
        .expect("the client gets every batch acknowledged")
        .expect("client task");
    stop.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    let report = loop {
        let report = heap.report();
        if identified_ids.iter().all(|k| report.key_count(k) > 0) {
            break report;
        }
        if Instant::now() > deadline {
            let missing: Vec<&String> = identified_ids
                .iter()
                .filter(|k| report.key_count(k) == 0)
                .collect();
            panic!(
                "{} acknowledged events never reached Heap, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Let anything still in flight land before judging duplicates.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = {
        let later = heap.report();
        assert_eq!(later.events_accepted, report.events_accepted);
        later
    };
    server.terminate();

    let expected: HashSet<&str> = identified_ids.iter().map(String::as_str).collect();
    let received = report.received_keys();
    let unexpected: Vec<&&str> = received
        .iter()
        .filter(|k| !expected.contains(**k))
        .collect();
    assert!(unexpected.is_empty(), "unexpected keys: {unexpected:?}");
    assert!(
        anonymous_ids.iter().all(|k| report.key_count(k) == 0),
        "an anonymous event reached Heap"
    );
    // The request Heap processed but never answered was re-sent after the restart.
    for e in &slow_batch.events {
        assert!(
            report.key_count(&e.idempotency_key) >= 2,
            "{} was processed during the kill but not re-sent",
            e.idempotency_key
        );
    }
    // A crash re-sends at most the one request in flight.
    let duplicated: BTreeSet<&str> = report.duplicates().into_keys().collect();
    assert!(
        report.duplicate_deliveries() <= MAX_BATCH * kills,
        "{} duplicate deliveries after {kills} kills: {duplicated:?}",
        report.duplicate_deliveries()
    );
    assert_eq!(report.limit_rejections, 0);
    assert_eq!(report.shape_violation_count, 0);
    eprintln!(
        "{} identified events delivered across {kills} kills ({} acknowledged batches before the first); {} duplicate deliveries",
        identified_ids.len(),
        acked_at_kill_1,
        report.duplicate_deliveries()
    );
}
