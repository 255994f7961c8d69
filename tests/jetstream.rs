//! Several forwarder replicas on one JetStream queue (product.md §8), each the real binary,
//! on a real three-node NATS cluster on loopback, delivering to the Heap stand-in with its
//! budgets enforced (scaled to a 2 s window):
//!
//! - two replicas take traffic at once; Braze's re-sends of accepted ids to the other replica
//!   are not delivered twice; exactly one replica delivers the Heap app id; no 429;
//! - `kill -9` of the delivering replica mid-delivery: the other takes the lane over within
//!   about the lease, every acknowledged event arrives, duplicates only for the batch in
//!   flight, no 429;
//! - `SIGSTOP` of the delivering replica past its lease: the other takes over; after
//!   `SIGCONT` the stale replica sends nothing (no 429, no window over the budget), and takes
//!   the lane again once the other is gone;
//! - `kill -9` of one NATS node of three during ingest and delivery: ingest answers 200 or
//!   503 (never a lost acknowledged event), delivery goes on, and nothing is lost.
//!
//! Skipped outside CI when `nats-server` is not installed (`.ci/run` installs it).
// Test code: `unwrap` is an assertion, and helpers are `pub` for the modules that share them.
#![allow(clippy::unwrap_used, unreachable_pub, missing_debug_implementations)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use currents_heap_testkit::nats::{NatsCluster, nats_server_binary};
use currents_heap_testkit::process::ServerProcess;
use currents_heap_testkit::standin::{HeapStandIn, StandInConfig};
use http::StatusCode;
use serde_json::json;

mod common;

use common::{Braze, kill_9, spawn_delivering, wait_until};

/// The lease of every replica here: a takeover within seconds.
const LEASE: &str = "2s";
/// The forwarder's largest request at these budgets: the app budget's burst.
const MAX_BATCH: u64 = 20;

/// A NATS cluster, the stand-in, and the settings every replica shares.
struct Cluster {
    nats: NatsCluster,
    heap: HeapStandIn,
    prefix: String,
    data: tempfile::TempDir,
}

impl Cluster {
    /// `None` (skip) when nats-server is missing outside CI.
    fn start(events_per_window: u32) -> Option<Self> {
        let Some(binary) = nats_server_binary() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "no nats-server: .ci/run installs it (CURRENTS_HEAP_NATS_SERVER)"
            );
            eprintln!("no nats-server installed: skipped");
            return None;
        };
        let nats = tokio::task::block_in_place(|| NatsCluster::start(&binary, 3));
        let heap = HeapStandIn::start(StandInConfig {
            events_per_window,
            identity_events_per_window: events_per_window,
            window: Duration::from_secs(2),
            enforce: true,
        });
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        Some(Cluster {
            nats,
            heap,
            prefix: format!(
                "e{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
            data: tempfile::tempdir().unwrap(),
        })
    }

    /// One more forwarder replica (its own scratch data directory, unused by the queue).
    fn replica(&self, events_per_window: u32) -> ServerProcess {
        let dir = tempfile::tempdir().unwrap().keep();
        let per_minute = events_per_window.to_string();
        let urls = self.nats.urls();
        let _ = &self.data;
        spawn_delivering(
            &dir,
            &self.heap.base_url(),
            &[
                "--nats-url",
                &urls,
                "--nats-stream",
                &self.prefix,
                "--nats-replicas",
                "3",
                "--nats-lease",
                LEASE,
                // JetStream reserves the queue's limit on each server's disk.
                "--max-queue-bytes",
                "64MiB",
                "--heap-events-per-minute",
                &per_minute,
                "--heap-identity-events-per-minute",
                &per_minute,
                "--heap-budget-window",
                "2s",
                "--heap-linger",
                "30ms",
                "--heap-timeout",
                "5s",
                "--retry-initial-backoff",
                "50ms",
                "--retry-max-backoff",
                "500ms",
            ],
        )
    }
}

/// `batches` bodies of `per_batch` events, and their ids.
fn batches(tag: &str, batches: usize, per_batch: usize) -> (Vec<Bytes>, Vec<String>) {
    let mut bodies = Vec::new();
    let mut ids = Vec::new();
    for b in 0..batches {
        let events: Vec<_> = (0..per_batch)
            .map(|e| {
                let id = format!("{tag}-{b}-{e}");
                ids.push(id.clone());
                json!({
                    "event_type": "users.messages.email.Send",
                    "id": id,
                    "time": 1_780_000_000,
                    "user": { "user_id": "65a0c0ffee0000000000e001", "external_user_id": format!("user-{}", (b * per_batch + e) % 97) },
                    "properties": { "campaign_name": "replicas" }
                })
            })
            .collect();
        bodies.push(Bytes::from(
            serde_json::to_vec(&json!({ "events": events })).unwrap(),
        ));
    }
    (bodies, ids)
}

/// Posts `body` to `addr` until it is acknowledged (re-sending on 503 or no answer, as Braze
/// does); panics on any other status or after `within`.
async fn post_until_accepted(braze: &Braze, addr: SocketAddr, body: Bytes, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        match braze
            .post(addr, body.clone(), Duration::from_secs(20))
            .await
        {
            Ok(reply) if reply.status.is_success() => return,
            Ok(reply) => assert_eq!(
                reply.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "a valid batch refused: {}",
                String::from_utf8_lossy(&reply.body)
            ),
            Err(_) => {}
        }
        assert!(Instant::now() < deadline, "a batch was never acknowledged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One sample of a replica's `/metrics`: (lane_leader, Heap requests sent).
async fn leadership(braze: &Braze, addr: SocketAddr) -> Option<(bool, u64)> {
    let text = braze.metrics(addr).await.ok()?;
    let mut leader = false;
    let mut requests = 0;
    for line in text.lines() {
        if line.starts_with("currents_heap_lane_leader{") {
            leader |= line.ends_with(" 1");
        } else if line.starts_with("currents_heap_heap_requests_total{") {
            requests += line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0) as u64;
        }
    }
    Some((leader, requests))
}

/// Waits until exactly one of `replicas` holds the lane; its index.
async fn the_leader(braze: &Braze, replicas: &[SocketAddr], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let mut leaders = Vec::new();
        for (i, addr) in replicas.iter().enumerate() {
            if let Some((true, _)) = leadership(braze, *addr).await {
                leaders.push(i);
            }
        }
        assert!(
            leaders.len() <= 1,
            "two replicas hold one lane: {leaders:?}"
        );
        if let [one] = leaders[..] {
            return one;
        }
        assert!(Instant::now() < deadline, "no replica took the lane");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every id reached the stand-in.
async fn all_delivered(heap: &HeapStandIn, ids: &[String], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let report = heap.report();
        let missing: Vec<&String> = ids.iter().filter(|k| report.key_count(k) == 0).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} events never reached Heap, e.g. {:?}",
            missing.len(),
            ids.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// No request refused for a budget, and no window offered more than the budget.
fn within_budgets(heap: &HeapStandIn) {
    let report = heap.report();
    assert_eq!(report.limit_rejections, 0, "Heap answered 429");
    assert!(
        !report.offered_over_budget(),
        "a window held more than the budget: {:?}",
        report.max_offered_app_window
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_take_traffic_and_one_delivers_each_app_id() {
    let Some(c) = Cluster::start(1200) else {
        return;
    };
    let r = [c.replica(1200), c.replica(1200)];
    let addrs = [r[0].addr, r[1].addr];
    let braze = Braze::new();
    let (bodies, ids) = batches("two", 40, 25);
    for (i, body) in bodies.iter().enumerate() {
        post_until_accepted(&braze, addrs[i % 2], body.clone(), Duration::from_secs(30)).await;
        // Braze re-sends an accepted batch, to the other replica.
        if i % 3 == 0 {
            post_until_accepted(
                &braze,
                addrs[(i + 1) % 2],
                body.clone(),
                Duration::from_secs(30),
            )
            .await;
        }
    }
    all_delivered(&c.heap, &ids, Duration::from_secs(60)).await;
    let leader = the_leader(&braze, &addrs, Duration::from_secs(10)).await;
    let (_, standby_requests) = leadership(&braze, addrs[1 - leader]).await.unwrap();
    assert_eq!(
        standby_requests, 0,
        "the replica without the lane sent to Heap"
    );
    let report = c.heap.report();
    assert_eq!(
        report.duplicate_deliveries(),
        0,
        "a re-sent id was delivered twice: {:?}",
        report.duplicates()
    );
    within_budgets(&c.heap);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_delivering_replica_hands_the_lane_over() {
    // 300 events per 2 s: 1,500 events take five seconds to deliver.
    let Some(c) = Cluster::start(300) else { return };
    let mut r = [Some(c.replica(300)), Some(c.replica(300))];
    let addrs = [r[0].as_ref().unwrap().addr, r[1].as_ref().unwrap().addr];
    let braze = Braze::new();
    let (bodies, ids) = batches("kill", 60, 25);
    for (i, body) in bodies.iter().enumerate() {
        post_until_accepted(&braze, addrs[i % 2], body.clone(), Duration::from_secs(30)).await;
    }
    wait_until("delivery is under way", Duration::from_secs(30), || {
        c.heap.report().events_accepted >= 200
    })
    .await;
    let leader = the_leader(&braze, &addrs, Duration::from_secs(10)).await;
    let killed_at = c.heap.report().last_arrival.unwrap();
    let before = Instant::now();
    kill_9(r[leader].take().unwrap()).await;
    let survivor = 1 - leader;
    let took = {
        the_leader(&braze, &addrs[survivor..=survivor], Duration::from_secs(20)).await;
        before.elapsed()
    };
    all_delivered(&c.heap, &ids, Duration::from_secs(60)).await;
    let report = c.heap.report();
    let first_after = report
        .track_batches
        .iter()
        .map(|b| b.at)
        .filter(|at| *at > killed_at)
        .min();
    eprintln!(
        "failover: the survivor held the lane {took:?} after the kill; Heap's next request came {:?} after the last one before it",
        first_after.map(|a| a - killed_at)
    );
    assert!(
        took < Duration::from_secs(6),
        "the lane was taken over {took:?} after the kill (lease {LEASE})"
    );
    assert!(
        report.duplicate_deliveries() <= MAX_BATCH,
        "more than the batch in flight was sent twice: {:?}",
        report.duplicates()
    );
    within_budgets(&c.heap);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_frozen_past_its_lease_sends_nothing_when_it_wakes() {
    let t0 = Instant::now();
    let Some(c) = Cluster::start(300) else { return };
    let mut r = [Some(c.replica(300)), Some(c.replica(300))];
    let addrs = [r[0].as_ref().unwrap().addr, r[1].as_ref().unwrap().addr];
    let braze = Braze::new();
    let (bodies, ids) = batches("stop", 80, 25);
    eprintln!("{:?} started", t0.elapsed());
    for (i, body) in bodies.iter().enumerate() {
        post_until_accepted(&braze, addrs[i % 2], body.clone(), Duration::from_secs(30)).await;
    }
    wait_until("delivery is under way", Duration::from_secs(30), || {
        c.heap.report().events_accepted >= 100
    })
    .await;
    let frozen = the_leader(&braze, &addrs, Duration::from_secs(10)).await;
    let other = 1 - frozen;
    let pid = r[frozen].as_ref().unwrap().pid().to_string();
    let signal = |sig: &str| {
        assert!(
            std::process::Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    signal("-STOP");
    eprintln!("{:?} stopped", t0.elapsed());
    the_leader(&braze, &addrs[other..=other], Duration::from_secs(20)).await;
    // The other replica delivers for a while; then the frozen one wakes up.
    let resumed_at = c.heap.report().events_accepted;
    wait_until("the new holder delivers", Duration::from_secs(30), || {
        c.heap.report().events_accepted >= resumed_at + 200
    })
    .await;
    signal("-CONT");
    eprintln!("{:?} continued", t0.elapsed());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (leader_again, _) = leadership(&braze, addrs[frozen]).await.unwrap();
    assert!(
        !leader_again,
        "the woken replica believes it holds the lane"
    );
    assert!(
        r[frozen]
            .as_ref()
            .unwrap()
            .log()
            .contains("lost the lane's lease"),
        "the woken replica did not notice it lost the lane"
    );
    within_budgets(&c.heap);
    // It takes part again: once the other is gone, it takes the lane and finishes.
    kill_9(r[other].take().unwrap()).await;
    eprintln!("{:?} killed the other", t0.elapsed());
    the_leader(&braze, &addrs[frozen..=frozen], Duration::from_secs(20)).await;
    eprintln!("{:?} took over again", t0.elapsed());
    all_delivered(&c.heap, &ids, Duration::from_secs(60)).await;
    within_budgets(&c.heap);
    let report = c.heap.report();
    assert!(
        report.duplicate_deliveries() <= 2 * MAX_BATCH,
        "more than the batches in flight were sent twice: {:?}",
        report.duplicates()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_one_nats_node_of_three_loses_nothing() {
    let Some(mut c) = Cluster::start(1200) else {
        return;
    };
    let r = [c.replica(1200), c.replica(1200)];
    let addrs = [r[0].addr, r[1].addr];
    let (bodies, ids) = batches("node", 80, 25);
    let acked = Arc::new(AtomicUsize::new(0));
    let statuses = Arc::new(Mutex::new(BTreeSet::new()));
    let done = Arc::new(AtomicBool::new(false));
    let client = {
        let (acked, statuses, done) = (acked.clone(), statuses.clone(), done.clone());
        tokio::spawn(async move {
            let braze = Braze::unpooled();
            for (i, body) in bodies.into_iter().enumerate() {
                loop {
                    if let Ok(reply) = braze
                        .post(addrs[i % 2], body.clone(), Duration::from_secs(20))
                        .await
                    {
                        statuses.lock().unwrap().insert(reply.status.as_u16());
                        if reply.status.is_success() {
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                acked.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    wait_until(
        "ingest and delivery are under way",
        Duration::from_secs(30),
        || acked.load(Ordering::SeqCst) >= 20 && c.heap.report().events_accepted >= 100,
    )
    .await;
    tokio::task::block_in_place(|| c.nats.kill(0));
    wait_until("ingest goes on", Duration::from_secs(60), || {
        acked.load(Ordering::SeqCst) >= 50
    })
    .await;
    tokio::task::block_in_place(|| c.nats.restart(0));
    tokio::time::timeout(Duration::from_secs(120), client)
        .await
        .expect("every batch acknowledged")
        .unwrap();
    assert!(done.load(Ordering::SeqCst));
    all_delivered(&c.heap, &ids, Duration::from_secs(60)).await;
    let seen = statuses.lock().unwrap().clone();
    assert!(
        seen.iter().all(|s| *s == 200 || *s == 503),
        "ingest answered {seen:?}"
    );
    within_budgets(&c.heap);
}
