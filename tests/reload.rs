//! Live reload (`SIGHUP`, README "Live reload"): tokens rotated, a route added and a route's
//! mapping changed while batches keep arriving — no 5xx, no 401 for a valid token, no event
//! lost or doubled; an invalid file is refused and the old configuration stays in force; the
//! queued events of a removed route are dead-lettered `unroutable`, by a reload and at start-up.
// Test code: `unwrap` is an assertion, and helpers are `pub` for the modules that share them.
#![allow(clippy::unwrap_used, unreachable_pub, missing_debug_implementations)]

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use currents_heap_testkit::standin::{HeapStandIn, StandInConfig};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;

use common::TestApp;

/// Replaces the configuration file the way an operator's tooling does: write, then rename.
fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn batch(prefix: &str, n: usize) -> (Vec<String>, Vec<u8>) {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let events: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            json!({
                "id": id,
                "event_type": "users.messages.email.Send",
                "time": 1_764_000_000,
                "user": {"user_id": "u", "external_user_id": format!("user-{}", i % 50)},
                "properties": {"campaign_name": "c"}
            })
        })
        .collect();
    (
        ids,
        serde_json::to_vec(&json!({ "events": events })).unwrap(),
    )
}

/// `POST path` with `token` on a fresh connection; the status code.
async fn post(addr: std::net::SocketAddr, path: &str, token: &str, body: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    s.write_all(&raw).await.expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    std::str::from_utf8(&buf)
        .ok()
        .and_then(|t| t.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn config_v1(heap: &str) -> String {
    format!(
        r#"
ingest_token = ["tok-a"]
heap_app_id = "1"
heap_base_url = "{heap}"
heap_budget_window = "1s"
retry_initial_backoff = "100ms"
retry_max_backoff = "1s"
"#
    )
}

/// Token b added (a kept), the default route's mapping changed (its lane is replaced), and a
/// route for workspace `brand-b` to Heap app 2 added (a new lane).
fn config_v2(heap: &str) -> String {
    format!(
        r#"
ingest_token = ["tok-a", "tok-b"]
heap_app_id = "1"
heap_base_url = "{heap}"
heap_budget_window = "1s"
retry_initial_backoff = "100ms"
retry_max_backoff = "1s"
event_prefix = "braze-"

[[route]]
name = "brand-b"
workspace = "brand-b"
heap_app_id = "2"
heap_base_url = "{heap}"
"#
    )
}

#[derive(Default)]
struct Sent {
    /// id → (workspace brand-b?, sent after the reload was confirmed?)
    accepted: HashMap<String, (bool, bool)>,
    statuses: HashMap<u16, usize>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_under_load_rotates_tokens_adds_a_route_and_loses_or_doubles_nothing() {
    let heap = HeapStandIn::start(StandInConfig {
        events_per_window: 15_000,
        identity_events_per_window: 1000,
        window: Duration::from_secs(1),
        enforce: true,
    });
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("currents-heap.toml");
    write_config(&config, &config_v1(&heap.base_url()));
    let data = dir.path().join("data");
    let server = common::spawn_forwarder(&data, &["--config", config.to_str().unwrap()]);
    let addr = server.addr;

    let sent = Arc::new(Mutex::new(Sent::default()));
    let reloaded = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (sent, reloaded, stop) = (Arc::clone(&sent), Arc::clone(&reloaded), Arc::clone(&stop));
        clients.push(tokio::spawn(async move {
            let mut round = 0usize;
            while !stop.load(Ordering::Relaxed) && round < 400 {
                let after = reloaded.load(Ordering::SeqCst);
                let brand_b = !round.is_multiple_of(2);
                let token = if after && round.is_multiple_of(3) {
                    "tok-b"
                } else {
                    "tok-a"
                };
                let path = if brand_b {
                    "/currents?workspace=brand-b"
                } else {
                    "/currents"
                };
                let (ids, body) = batch(&format!("c{c}-r{round}"), 10);
                let status = post(addr, path, token, &body).await;
                {
                    let mut s = sent.lock().unwrap();
                    *s.statuses.entry(status).or_default() += 1;
                    if status == 200 {
                        for id in ids {
                            s.accepted.insert(id, (brand_b, after));
                        }
                    }
                }
                round += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    write_config(&config, &config_v2(&heap.base_url()));
    common::sighup(&server);
    common::wait_for_log(&server, "Configuration reloaded.", Duration::from_secs(60)).await;
    reloaded.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }

    let sent = Arc::try_unwrap(sent).ok().unwrap().into_inner().unwrap();
    assert_eq!(
        sent.statuses.keys().copied().collect::<BTreeSet<u16>>(),
        BTreeSet::from([200]),
        "every request answered 200 across the reload: {:?}",
        sent.statuses
    );
    let after_with_b = sent
        .accepted
        .values()
        .filter(|(b, after)| *b && *after)
        .count();
    assert!(after_with_b > 0, "batches to the new route were sent");

    // Every accepted event reaches Heap exactly once; brand-b's go to app 2 once the
    // reload is confirmed, and to the default route (app 1) before it.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let report = heap.report();
        if report.received_keys().len() >= sent.accepted.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Heap received {} of {} events",
            report.received_keys().len(),
            sent.accepted.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = heap.report();
    report
        .check_exactly_once(sent.accepted.keys().map(String::as_str))
        .unwrap();
    for (app_id, item) in report.track_items() {
        let Some(&(brand_b, after)) = sent.accepted.get(&item.idempotency_key) else {
            continue;
        };
        if brand_b && after {
            assert_eq!(app_id, "2", "{} went to app {app_id}", item.idempotency_key);
        }
        if !brand_b {
            assert_eq!(app_id, "1");
        }
    }
    let line: serde_json::Value = server
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|v: &serde_json::Value| v["message"] == "Configuration reloaded.")
        .unwrap();
    assert_eq!(line["lanes_started"], r#"["brand-b"]"#, "{line}");
    assert_eq!(line["lanes_replaced"], r#"["default"]"#, "{line}");
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_is_refused_and_the_old_configuration_stays_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    // Heap is unreachable (a closed port); nothing here needs delivery.
    write_config(
        &config,
        "ingest_token = [\"tok-a\"]\nheap_app_id = \"1\"\nheap_base_url = \"http://127.0.0.1:9\"\nretry_initial_backoff = \"1h\"\nretry_max_backoff = \"1h\"\n",
    );
    let app = TestApp::from_config_file(&config).await;
    let (addr, handle) = (app.addr(), app.reload_handle());

    write_config(
        &config,
        "ingest_token = [\"tok-b\"]\nheap_app_id = \"not a number\"\n",
    );
    let err = handle.reload().await.unwrap_err();
    assert!(err.to_string().contains("heap_app_id"), "{err}");
    let (_, body) = batch("still-a", 2);
    assert_eq!(post(addr, "/currents", "tok-a", &body).await, 200);
    assert_eq!(post(addr, "/currents", "tok-b", &body).await, 401);

    write_config(
        &config,
        "ingest_token = [\"tok-b\"]\nheap_app_id = \"1\"\nheap_base_url = \"http://127.0.0.1:9\"\nretry_initial_backoff = \"1h\"\nretry_max_backoff = \"1h\"\n",
    );
    handle.reload().await.expect("a valid file is applied");
    let (_, body) = batch("now-b", 2);
    assert_eq!(post(addr, "/currents", "tok-b", &body).await, 200);
    assert_eq!(post(addr, "/currents", "tok-a", &body).await, 401);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queued_events_of_a_removed_route_become_unroutable_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    let base = "ingest_token = [\"tok\"]\nheap_app_id = \"1\"\nheap_base_url = \"http://127.0.0.1:9\"\nretry_initial_backoff = \"1h\"\nretry_max_backoff = \"1h\"\n";
    let route = "\n[[route]]\nname = \"brand-b\"\nworkspace = \"brand-b\"\nheap_app_id = \"2\"\nheap_base_url = \"http://127.0.0.1:9\"\n";
    write_config(&config, &format!("{base}{route}"));
    let app = TestApp::from_config_file(&config).await;
    let (addr, handle) = (app.addr(), app.reload_handle());
    let (ids, body) = batch("b-queued", 5);
    assert_eq!(
        post(addr, "/currents?workspace=brand-b", "tok", &body).await,
        200
    );

    write_config(&config, base);
    let changes = handle.reload().await.expect("applied");
    assert_eq!(changes.stopped, vec!["brand-b".to_owned()]);
    let conn = rusqlite::Connection::open_with_flags(
        app.data_dir().join("queue.sqlite3"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let dead: BTreeSet<String> = conn
        .prepare("SELECT event_id FROM dead_letter WHERE reason = 'unroutable'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(dead, ids.into_iter().collect::<BTreeSet<_>>());
    let queued: i64 = conn
        .query_row("SELECT count(*) FROM queue", [], |r| r.get(0))
        .unwrap();
    assert_eq!(queued, 0);
    app.stop().await;
}

/// README "Several workspaces": events queued for an app id that no route delivers to any more
/// are moved to the dead-letter store at start-up, and never sent anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_start_the_queued_events_of_a_removed_route_become_unroutable_dead_letters() {
    let heap = HeapStandIn::start(StandInConfig::heap());
    heap.set_down(true);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    let base = format!(
        "ingest_token = [\"tok\"]\nheap_app_id = \"1\"\nheap_base_url = \"{}\"\nheap_linger = \"20ms\"\nretry_initial_backoff = \"1h\"\nretry_max_backoff = \"1h\"\n",
        heap.base_url()
    );
    let route = "\n[[route]]\nname = \"brand-b\"\nworkspace = \"brand-b\"\nheap_app_id = \"2\"\n";
    write_config(&config, &format!("{base}{route}"));
    let mut app = TestApp::from_config_file(&config).await;
    let (ids, body) = batch("b-queued", 5);
    assert_eq!(
        post(app.addr(), "/currents?workspace=brand-b", "tok", &body).await,
        200
    );
    app.stop_app().await;
    assert_eq!(
        app.queued_count(),
        5,
        "Heap was down: the events stayed queued"
    );

    // Restarted (not reloaded) without the route, Heap up.
    write_config(&config, &base);
    heap.set_down(false);
    app.start_app().await;
    let dead: BTreeSet<String> = common::dead_letters(app.data_dir())
        .into_iter()
        .filter(|d| d.reason == "unroutable")
        .map(|d| d.event.event_id)
        .collect();
    assert_eq!(dead, ids.iter().cloned().collect::<BTreeSet<_>>());
    assert_eq!(app.queued_count(), 0);
    assert_eq!(
        app.metric(r#"currents_heap_dead_letter_events{reason="unroutable"}"#)
            .await,
        5.0
    );
    // An event of the default route, posted after them, reaches Heap; they never do.
    let (marker, body) = batch("default-after", 1);
    assert_eq!(post(app.addr(), "/currents", "tok", &body).await, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while heap.report().key_count(&marker[0]) == 0 {
        assert!(
            Instant::now() < deadline,
            "the default route delivers nothing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = heap.report();
    assert!(ids.iter().all(|id| report.key_count(id) == 0));
    app.stop().await;
}
