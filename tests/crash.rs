//! An acknowledgement is a promise (product.md §1.3): the real binary is `kill -9`ed while six
//! clients stream batches at it, restarted on the same data directory, and every event whose
//! batch got a 2xx must still be queued — and no event of a batch that got a 400 may be. Three
//! rounds, so acknowledged events also survive repeated crashes and crash recovery itself.
//!
//! Each round also has one request certainly cut mid-body by the kill: its head and the first
//! part of its body were sent, the rest never is, and the connection must drop without an
//! answer. The part sent is a whole batch on its own (the rest of the declared length would be
//! padding), so a server acting before the body is complete would store it; none of its
//! events may be stored.
//!
//! The server delivers to a Heap that refuses every connection (a local port bound but never
//! listening, retried only after an hour), so no event leaves the store by delivery; "queued"
//! means a row of `queue` or, for an event the mapping skipped, of `dead_letter`.
// Test code: `unwrap` is an assertion, and helpers are `pub` for the modules that share them.
#![allow(clippy::unwrap_used, unreachable_pub, missing_debug_implementations)]

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use currents_heap_testkit::process::ServerProcess;
use http::StatusCode;
use serde_json::{Value, json};

mod common;

use common::{Braze, RawConn, TOKEN, kill_9, metric_value, spawn_delivering, terminate};

const CLIENTS: usize = 6;
const ROUNDS: usize = 3;
const EVENTS_PER_BATCH: usize = 20;
/// Acknowledged batches (all clients together) to wait for before each kill.
const ACKS_BEFORE_KILL: usize = 150;

/// The real binary, serving on an ephemeral port.
type Server = ServerProcess;

/// Starts the server; its Heap (`heap`) is a bound port that never answers, so nothing leaves
/// the store by delivery and the test sees exactly what ingest stored.
fn start_server(data_dir: &Path, heap: SocketAddr) -> Server {
    let heap_url = format!("http://{heap}");
    spawn_delivering(
        data_dir,
        &heap_url,
        &[
            "--dead-letter-skipped",
            "--retry-initial-backoff",
            "1h",
            "--retry-max-backoff",
            "1h",
        ],
    )
}

/// What each client learnt about its batches.
#[derive(Default)]
struct Ledger {
    /// Events of batches answered 2xx: must be queued forever after.
    acked: Vec<String>,
    /// The bodies of acknowledged batches, for re-sending.
    acked_bodies: Vec<Bytes>,
    /// Events of batches answered 400: must never be queued.
    rejected: Vec<String>,
    /// Batches on the wire when the server died: stored whole or not at all.
    in_flight: Vec<Vec<String>>,
    /// Events of the batches whose body the kill cut: never stored.
    cut: Vec<String>,
}

fn event(id: &str) -> Value {
    json!({
        "event_type": "users.messages.email.Send",
        "id": id,
        "time": 1_780_000_000,
        "user": { "user_id": "65a0c0ffee0000000000e001", "external_user_id": format!("u-{id}") },
        "properties": { "campaign_name": "crash test", "send_id": id }
    })
}

/// Posts `body` to `addr`: the status and the JSON answer (`null` if not JSON), or why
/// there was none within 20 s.
async fn post(braze: &Braze, addr: SocketAddr, body: Bytes) -> Result<(StatusCode, Value), String> {
    let reply = braze.post(addr, body, Duration::from_secs(20)).await?;
    Ok((
        reply.status,
        serde_json::from_slice(&reply.body).unwrap_or(Value::Null),
    ))
}

/// Streams batches until the server dies or `stop` is set; every 4th batch is invalid.
async fn client(
    round: usize,
    me: usize,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicUsize>,
) -> Ledger {
    let braze = Braze::new();
    let mut ledger = Ledger::default();
    for n in 0.. {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let ids: Vec<String> = (0..EVENTS_PER_BATCH)
            .map(|k| format!("r{round}-c{me}-b{n}-e{k}"))
            .collect();
        let mut events: Vec<Value> = ids.iter().map(|id| event(id)).collect();
        let invalid = n % 4 == 3;
        if invalid {
            events[7].as_object_mut().unwrap().remove("time");
        }
        let body = Bytes::from(serde_json::to_vec(&json!({ "events": events })).unwrap());
        match post(&braze, addr, body.clone()).await {
            Ok((status, reply)) if status.is_success() => {
                assert!(!invalid, "an invalid batch was acknowledged: {reply}");
                assert_eq!(
                    reply,
                    json!({ "accepted": EVENTS_PER_BATCH, "duplicates": 0 })
                );
                ledger.acked.extend(ids);
                ledger.acked_bodies.push(body);
                acks.fetch_add(1, Ordering::SeqCst);
            }
            Ok((StatusCode::BAD_REQUEST, reply)) => {
                assert!(invalid, "a valid batch got 400: {reply}");
                assert_eq!(reply["invalid_events"][0]["index"], 7);
                ledger.rejected.extend(ids);
            }
            Ok((status, reply)) => panic!("unexpected {status}: {reply}"),
            // The server is gone (killed): whether this batch was stored is unknown.
            Err(_) => {
                ledger.in_flight.push(ids);
                break;
            }
        }
    }
    ledger
}

/// Sends the head and the first part of a batch of `EVENTS_PER_BATCH` events whose declared
/// length is twice what is sent. The part sent is a complete batch by itself.
async fn start_cut_batch(round: usize, addr: SocketAddr) -> (RawConn, Vec<String>) {
    let ids: Vec<String> = (0..EVENTS_PER_BATCH)
        .map(|k| format!("r{round}-cut-e{k}"))
        .collect();
    let events: Vec<Value> = ids.iter().map(|id| event(id)).collect();
    let part = serde_json::to_vec(&json!({ "events": events })).unwrap();
    let mut conn = RawConn::connect(addr).await;
    let bearer = format!("Bearer {TOKEN}");
    conn.send_head(&[
        ("authorization", &bearer),
        ("content-type", "application/json"),
        ("content-length", &(2 * part.len()).to_string()),
    ])
    .await;
    conn.write(&part).await;
    (conn, ids)
}

/// The SQLite file the server keeps in its data directory.
fn database(data_dir: &Path) -> PathBuf {
    std::fs::read_dir(data_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "sqlite3"))
        .unwrap_or_else(|| panic!("no *.sqlite3 in {}", data_dir.display()))
}

/// `event_id` of every row of `table` (`queue` or `dead_letter`).
fn ids_in(data_dir: &Path, table: &str) -> Vec<String> {
    let conn = rusqlite::Connection::open_with_flags(
        database(data_dir),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the store read-only");
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut stmt = conn
        .prepare(&format!("SELECT event_id FROM {table}"))
        .unwrap();
    stmt.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Every stored event id: queued, or dead-lettered by the mapping.
fn queued_ids(data_dir: &Path) -> Vec<String> {
    let mut ids = ids_in(data_dir, "queue");
    ids.extend(ids_in(data_dir, "dead_letter"));
    ids
}

async fn metric(server: &Server, series: &str) -> f64 {
    let text = Braze::new()
        .metrics(server.addr)
        .await
        .expect("GET /metrics");
    metric_value(&text, series)
}

/// Checks the promise against the store of a freshly restarted server.
async fn check_promise(server: &Server, data_dir: &Path, ledger: &Ledger) {
    let Ledger {
        acked,
        rejected,
        in_flight,
        cut,
        ..
    } = ledger;
    let rows = queued_ids(data_dir);
    let stored: HashSet<&str> = rows.iter().map(String::as_str).collect();
    assert_eq!(stored.len(), rows.len(), "an event id is queued twice");
    let lost: Vec<&String> = acked
        .iter()
        .filter(|id| !stored.contains(id.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events lost after kill -9, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let leaked: Vec<&String> = rejected
        .iter()
        .filter(|id| stored.contains(id.as_str()))
        .collect();
    assert!(
        leaked.is_empty(),
        "events of 400 batches were stored: {leaked:?}"
    );
    for batch in in_flight {
        let kept = batch
            .iter()
            .filter(|id| stored.contains(id.as_str()))
            .count();
        assert!(
            kept == 0 || kept == batch.len(),
            "a batch cut by kill -9 was stored in part ({kept} of {})",
            batch.len()
        );
    }
    let kept: Vec<&String> = cut
        .iter()
        .filter(|id| stored.contains(id.as_str()))
        .collect();
    assert!(
        kept.is_empty(),
        "events of a request whose body was cut by kill -9 were stored: {kept:?}"
    );
    let sent: HashSet<&str> = acked
        .iter()
        .chain(in_flight.iter().flatten())
        .map(String::as_str)
        .collect();
    assert!(
        stored.iter().all(|id| sent.contains(id)),
        "the queue holds events no acknowledged or in-flight batch carried"
    );
    // The running totals the server loads at start agree with the rows after the crash.
    assert_eq!(
        metric(server, "currents_heap_queue_events").await,
        ids_in(data_dir, "queue").len() as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_survives_kill_9_and_no_rejected_one_is_stored() {
    let data = tempfile::tempdir().unwrap();
    // Heap: a port bound but never listening, so every delivery attempt is refused.
    let closed = tokio::net::TcpSocket::new_v4().unwrap();
    closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let heap = closed.local_addr().unwrap();
    let mut all = Ledger::default();
    let mut server = start_server(data.path(), heap);

    for round in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicUsize::new(0));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|me| {
                tokio::spawn(client(
                    round,
                    me,
                    server.addr,
                    Arc::clone(&stop),
                    Arc::clone(&acks),
                ))
            })
            .collect();

        let deadline = Instant::now() + Duration::from_secs(60);
        let wait_for_acks = |n: usize| {
            let acks = Arc::clone(&acks);
            async move {
                while acks.load(Ordering::SeqCst) < n {
                    assert!(
                        Instant::now() < deadline,
                        "round {round}: too few acknowledgements"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        wait_for_acks(ACKS_BEFORE_KILL / 2).await;
        let (mut cut, cut_ids) = start_cut_batch(round, server.addr).await;
        // Many batches are answered after the part was sent: time for the server to read it.
        wait_for_acks(ACKS_BEFORE_KILL).await;
        // Mid-stream: every client has a batch on the wire or about to be.
        kill_9(server).await;
        stop.store(true, Ordering::SeqCst);
        let answer = cut
            .closed_within(Duration::from_secs(10))
            .await
            .expect("kill -9 closes the connection");
        assert!(
            answer.is_empty(),
            "round {round}: a request with half its body was answered: {}",
            String::from_utf8_lossy(&answer)
        );
        all.cut.extend(cut_ids);
        for c in clients {
            let ledger = c.await.expect("client task");
            all.acked.extend(ledger.acked);
            all.rejected.extend(ledger.rejected);
            all.acked_bodies.extend(ledger.acked_bodies);
            all.in_flight.extend(ledger.in_flight);
        }
        assert!(
            !all.rejected.is_empty(),
            "round {round}: no invalid batch was sent"
        );

        server = start_server(data.path(), heap);
        check_promise(&server, data.path(), &all).await;
        eprintln!(
            "round {round}: {} events acknowledged, {} rejected, {} batches in flight, {} cut \
             mid-body, {} queued",
            all.acked.len(),
            all.rejected.len(),
            all.in_flight.len(),
            round + 1,
            queued_ids(data.path()).len()
        );
    }

    // The dedup memory survived the crashes too: re-sent acknowledged batches are duplicates.
    let braze = Braze::new();
    for body in all.acked_bodies.iter().step_by(7) {
        let (status, reply) = post(&braze, server.addr, body.clone()).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            reply,
            json!({ "accepted": 0, "duplicates": EVENTS_PER_BATCH })
        );
    }

    // A graceful stop after all that keeps the same set.
    let before: BTreeSet<String> = queued_ids(data.path()).into_iter().collect();
    terminate(server).await;
    let after: BTreeSet<String> = queued_ids(data.path()).into_iter().collect();
    assert_eq!(before, after);
    assert!(after.len() >= all.acked.len());
}
