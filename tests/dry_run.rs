//! A dry run never removes what a real run would deliver (product.md §9): a backlog left by a
//! real run, and the events a dry run accepts itself, are logged by `serve --dry-run` and then
//! all delivered by the next real run on the same data directory.
// Test code: `unwrap` is an assertion, and helpers are `pub` for the modules that share them.
#![allow(clippy::unwrap_used, unreachable_pub, missing_debug_implementations)]

use std::time::Duration;

use currents_heap_testkit::standin::{HeapStandIn, StandInConfig};
use serde_json::{Value, json};

mod common;

use common::{
    APP_ID, Braze, TOKEN, kill_9, spawn_delivering, spawn_forwarder, terminate, wait_for_log,
    wait_until,
};

fn event(id: &str) -> Value {
    json!({
        "event_type": "users.messages.email.Send",
        "id": id,
        "time": 1_780_000_000,
        "user": { "user_id": "65a0c0ffee0000000000d001", "external_user_id": "dry-run-user" },
        "properties": { "campaign_name": "dry run" }
    })
}

async fn post(braze: &Braze, addr: std::net::SocketAddr, ids: &[String]) {
    let events: Vec<Value> = ids.iter().map(|id| event(id)).collect();
    let body = serde_json::to_vec(&json!({ "events": events })).unwrap();
    let reply = braze
        .post(addr, body, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[tokio::test]
async fn a_dry_run_leaves_every_event_for_the_real_run() {
    let heap = HeapStandIn::start(StandInConfig::heap());
    let dir = tempfile::tempdir().unwrap();
    let braze = Braze::unpooled();
    let before: Vec<String> = (0..20).map(|i| format!("backlog-{i}")).collect();
    let during: Vec<String> = (0..5).map(|i| format!("dry-{i}")).collect();

    // A real run whose Heap is unreachable leaves a backlog.
    let unreachable = [
        "--ingest-token",
        TOKEN,
        "--heap-app-id",
        APP_ID,
        "--heap-base-url",
        "http://127.0.0.1:9",
        "--retry-initial-backoff",
        "1h",
        "--retry-max-backoff",
        "1h",
    ];
    let server = spawn_forwarder(dir.path(), &unreachable);
    post(&braze, server.addr, &before).await;
    terminate(server).await;

    // The dry run, on the same configuration plus --dry-run, shows the backlog and what it
    // accepts itself, and is killed without a drain.
    let mut dry_args = unreachable.to_vec();
    dry_args.extend(["--dry-run", "--heap-linger", "20ms"]);
    let server = spawn_forwarder(dir.path(), &dry_args);
    post(&braze, server.addr, &during).await;
    for id in before.iter().chain(&during) {
        wait_for_log(&server, id, Duration::from_secs(30)).await;
    }
    assert!(server.log().contains("Dry run: Heap request not sent."));
    kill_9(server).await;

    // The real run delivers every one of them.
    let server = spawn_delivering(
        dir.path(),
        &heap.base_url(),
        &["--heap-linger", "20ms", "--retry-initial-backoff", "20ms"],
    );
    let all: Vec<&String> = before.iter().chain(&during).collect();
    wait_until("every event reaches Heap", Duration::from_secs(60), || {
        let r = heap.report();
        all.iter().all(|id| r.key_count(id) == 1)
    })
    .await;
    terminate(server).await;
}
