//! Deletions (product.md §7), end to end with the real binary and the Heap stand-in: a Braze
//! user deletion reaches Heap's deletion API with the Heap user the forwarder sent, nothing of
//! that user reaches `/api/track` or `/api/add_user_properties` after it, and a `kill -9` at
//! any step of the ledger neither loses a deletion nor leaves it stuck.
// Test code: `unwrap` is an assertion, and helpers are `pub` for the modules that share them.
#![allow(clippy::unwrap_used, unreachable_pub, missing_debug_implementations)]

use std::path::Path;
use std::time::Duration;

use currents_heap::transform::target::synthetic_user_id;
use currents_heap_testkit::process::ServerProcess;
use currents_heap_testkit::standin::{
    DeletionUser, Fault, HeapStandIn, Mode, Report, StandInConfig,
};
use serde_json::{Value, json};

mod common;

use common::{
    APP_ID, Braze, json_lines, kill_9, maintenance, spawn_delivering, terminate, wait_until,
    wait_until_async,
};

const KEY: &str = "heap-api-key-1";
const WAIT: Duration = Duration::from_secs(60);

/// The real binary delivering to the stand-in, with fast deletion pacing and polling. The
/// settling delay before a submission is four times `--heap-timeout` (4 s here).
fn start(data_dir: &Path, heap: &HeapStandIn, key: Option<&str>, extra: &[&str]) -> ServerProcess {
    let url = heap.base_url();
    let defaults = [
        ("--heap-timeout", "1s"),
        ("--heap-linger", "20ms"),
        ("--deletion-request-interval", "50ms"),
        ("--deletion-poll-interval", "100ms"),
        ("--retry-initial-backoff", "20ms"),
        ("--retry-max-backoff", "200ms"),
    ];
    let mut args: Vec<&str> = Vec::new();
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    if let Some(key) = key {
        args.extend(["--heap-api-key", key]);
    }
    args.extend_from_slice(extra);
    spawn_delivering(data_dir, &url, &args)
}

/// A subscription change of Braze user `braze`: one tracked event and one user property
/// (when it has an identity).
fn event_of(id: &str, braze: &str, external: Option<&str>) -> Value {
    json!({
        "event_type": "users.behaviors.subscription.GlobalStateChange",
        "id": id,
        "time": 1_780_000_000,
        "user": { "user_id": braze, "external_user_id": external },
        "properties": {
            "app_group_id": "grp-1",
            "channel": "email",
            "subscription_status": "Subscribed"
        }
    })
}

/// What Braze sends when a user is deleted: the Braze id only.
fn deletion_of(id: &str, braze: &str) -> Value {
    json!({
        "event_type": "users.UserDeleteRequest",
        "id": id,
        "time": 1_780_000_100,
        "user": { "user_id": braze },
        "properties": { "app_group_id": "grp-1" }
    })
}

async fn post(braze: &Braze, server: &ServerProcess, events: &[Value]) {
    let body = serde_json::to_vec(&json!({ "events": events })).unwrap();
    let reply = braze
        .post(server.addr, body, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
}

/// `currents-heap deletions ARGS` on the server's data directory; asserts it succeeded.
async fn deletions(data_dir: &Path, args: &[&str]) -> std::process::Output {
    let out = maintenance("deletions", data_dir, args).await;
    assert!(
        out.status.success(),
        "deletions {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The ledger, as `deletions list` prints it.
async fn ledger(data_dir: &Path) -> Vec<Value> {
    json_lines(&deletions(data_dir, &["list"]).await.stdout)
}

async fn wait_for_status(data_dir: &Path, braze: &str, status: &str) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let entry = ledger(data_dir)
            .await
            .into_iter()
            .find(|e| e["braze_user_id"] == braze)
            .unwrap_or(Value::Null);
        if entry["status"] == status {
            return entry;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until the deletion of {braze} is {status}; it is {entry}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every Heap user (identity or user_id) that reached `/api/track` or
/// `/api/add_user_properties`.
fn sent_users(report: &Report) -> Vec<String> {
    report
        .track_items()
        .map(|(_, t)| t.identity.clone().or(t.user_id.clone()).unwrap_or_default())
        .chain(
            report
                .user_property_items()
                .map(|(_, u)| u.identity.clone()),
        )
        .collect()
}

fn stand_in() -> HeapStandIn {
    let heap = HeapStandIn::start(StandInConfig::heap());
    heap.set_deletion_key(APP_ID, KEY);
    heap
}

/// The acceptance scenario, for a user known by identity or by synthetic user id.
async fn deletion_reaches_heap_and_nothing_of_the_user_after_it(synthetic: bool) {
    let heap = stand_in();
    heap.set_mode(Mode::Down);
    let dir = tempfile::tempdir().unwrap();
    let extra: &[&str] = if synthetic {
        &["--anonymous", "synthetic_user_id"]
    } else {
        &[]
    };
    let (a_external, a_heap_user) = if synthetic {
        (
            None,
            DeletionUser::UserId(synthetic_user_id("braze-a").parse().unwrap()),
        )
    } else {
        (Some("ext-a"), DeletionUser::Identity("ext-a".into()))
    };
    let braze = Braze::unpooled();
    let server = start(dir.path(), &heap, Some(KEY), extra);
    let a: Vec<Value> = (0..5)
        .map(|i| event_of(&format!("a{i}"), "braze-a", a_external))
        .collect();
    let b: Vec<Value> = (0..5)
        .map(|i| event_of(&format!("b{i}"), "braze-b", Some("ext-b")))
        .collect();
    post(
        &braze,
        &server,
        &[a[..3].to_vec(), b[..3].to_vec()].concat(),
    )
    .await;
    post(&braze, &server, &[deletion_of("del-a", "braze-a")]).await;
    // Heap is down: nothing has been sent when the forwarder is killed.
    kill_9(server).await;
    assert!(heap.report().track_items().next().is_none());

    let server = start(dir.path(), &heap, Some(KEY), extra);
    // Events of A that Braze delivers late (Currents is unordered) are acknowledged, dropped.
    post(
        &braze,
        &server,
        &[a[3..].to_vec(), b[3..].to_vec()].concat(),
    )
    .await;
    heap.set_mode(Mode::Normal);
    let entry = wait_for_status(dir.path(), "braze-a", "complete").await;
    let b_keys: Vec<String> = (0..5).map(|i| format!("b{i}")).collect();
    wait_until("all of B's events reach Heap", WAIT, || {
        let r = heap.report();
        b_keys.iter().all(|k| r.key_count(k) >= 1)
    })
    .await;

    let report = heap.report();
    let users: Vec<&DeletionUser> = report.deletion.users().map(|(_, u)| u).collect();
    assert_eq!(users, [&a_heap_user], "Heap deletes A as it was sent");
    assert_eq!(report.deletion.requests[0].app_id, APP_ID);
    let a_sent = match &a_heap_user {
        DeletionUser::Identity(s) => s.clone(),
        DeletionUser::UserId(n) => n.to_string(),
    };
    assert!(
        !sent_users(&report).contains(&a_sent),
        "none of A's events reached /api/track or /api/add_user_properties"
    );
    assert!((0..5).all(|i| report.key_count(&format!("a{i}")) == 0));
    assert_eq!(entry["purged_events"], 3);
    assert_eq!(
        entry["deletion_request_id"],
        report.deletion.requests[0].request_id
    );

    let metrics = braze.metrics(server.addr).await.unwrap();
    assert!(metrics.contains(
        "currents_heap_events_skipped_total{reason=\"deleted_user\",route=\"default\"} 2"
    ));
    terminate(server).await;
}

#[tokio::test]
async fn a_deletion_reaches_heap_with_the_identity_and_nothing_of_the_user_after_it() {
    deletion_reaches_heap_and_nothing_of_the_user_after_it(false).await;
}

#[tokio::test]
async fn a_deletion_reaches_heap_with_the_synthetic_user_id() {
    deletion_reaches_heap_and_nothing_of_the_user_after_it(true).await;
}

/// A kill after Heap accepted a request but before its id was recorded: the deletion is sent
/// again after the restart (idempotent at Heap) and completes; a kill while the ledger polls
/// Heap: the poll continues after the restart.
#[tokio::test]
async fn a_kill_at_each_step_of_the_ledger_neither_loses_nor_sticks_a_deletion() {
    let heap = stand_in();
    let dir = tempfile::tempdir().unwrap();
    let braze = Braze::unpooled();

    // A first deletion, so the forwarder holds a token: the fault below must meet the
    // deletion request, not a token request.
    let server = start(dir.path(), &heap, Some(KEY), &[]);
    post(&braze, &server, &[event_of("z0", "braze-z", Some("ext-z"))]).await;
    post(&braze, &server, &[event_of("a0", "braze-a", Some("ext-a"))]).await;
    wait_until("the events reach Heap", WAIT, || {
        let r = heap.report();
        r.key_count("a0") == 1 && r.key_count("z0") == 1
    })
    .await;
    post(&braze, &server, &[deletion_of("del-z", "braze-z")]).await;
    wait_for_status(dir.path(), "braze-z", "complete").await;

    // Step: Heap accepted the request, its answer has not arrived yet.
    heap.push_fault(Fault::Delay(Duration::from_secs(30)));
    post(&braze, &server, &[deletion_of("del-a", "braze-a")]).await;
    wait_until("Heap received the deletion", WAIT, || {
        heap.report().deletion.requests.len() == 2
    })
    .await;
    kill_9(server).await;
    let entry = ledger(dir.path()).await;
    assert_eq!(entry[1]["braze_user_id"], "braze-a");
    assert_eq!(entry[1]["status"], "pending_submit");

    let server = start(dir.path(), &heap, Some(KEY), &[]);
    wait_for_status(dir.path(), "braze-a", "complete").await;
    let report = heap.report();
    assert_eq!(
        report.deletion.requests.len(),
        3,
        "sent again after the lost answer"
    );
    assert!(
        report.deletion.requests[1..]
            .iter()
            .all(|r| r.users == [DeletionUser::Identity("ext-a".into())])
    );

    // Step: submitted, Heap still deleting, while the forwarder polls.
    heap.set_pending_polls(u32::MAX);
    post(&braze, &server, &[event_of("c0", "braze-c", Some("ext-c"))]).await;
    wait_until("C's event reaches Heap", WAIT, || {
        heap.report().key_count("c0") == 1
    })
    .await;
    post(&braze, &server, &[deletion_of("del-c", "braze-c")]).await;
    wait_for_status(dir.path(), "braze-c", "submitted").await;
    let polls = heap.report().deletion.status_polls;
    wait_until("the forwarder polls", WAIT, || {
        heap.report().deletion.status_polls > polls
    })
    .await;
    kill_9(server).await;
    heap.complete_deletions();
    let server = start(dir.path(), &heap, Some(KEY), &[]);
    wait_for_status(dir.path(), "braze-c", "complete").await;
    assert_eq!(
        heap.report().deletion.requests.len(),
        4,
        "a submitted deletion is polled after a restart, not sent again"
    );
    terminate(server).await;
}

/// A wrong key: `failed` with Heap's message and an alert-visible gauge; once the key is
/// fixed (and the forwarder restarted), `deletions retry` sends it and it completes.
#[tokio::test]
async fn a_wrong_key_fails_visibly_and_deletions_retry_sends_it_once_fixed() {
    let heap = stand_in();
    let dir = tempfile::tempdir().unwrap();
    let braze = Braze::unpooled();
    let server = start(dir.path(), &heap, Some("not-the-key"), &[]);
    post(&braze, &server, &[event_of("a0", "braze-a", Some("ext-a"))]).await;
    post(&braze, &server, &[deletion_of("del-a", "braze-a")]).await;
    let entry = wait_for_status(dir.path(), "braze-a", "failed").await;
    let error = entry["last_error"].as_str().unwrap();
    assert!(error.contains("401"), "{error}");
    assert!(
        error.contains("Invalid API key or app_id"),
        "Heap's message: {error}"
    );
    let metrics = braze.metrics(server.addr).await.unwrap();
    assert!(
        metrics.contains("currents_heap_deletions_open{route=\"default\",status=\"failed\"} 1"),
        "{metrics}"
    );
    assert!(heap.report().deletion.requests.is_empty());
    terminate(server).await;

    let server = start(dir.path(), &heap, Some(KEY), &[]);
    let out = deletions(dir.path(), &["retry"]).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 failed deletion"));
    wait_for_status(dir.path(), "braze-a", "complete").await;
    assert_eq!(heap.report().deletion.requests.len(), 1);
    terminate(server).await;
}

/// A never-seen user: `unknown_user`, nothing sent to Heap, the tombstone still applies.
/// Without a key: purged, `unconfigured`, and sent once a key is configured.
#[tokio::test]
async fn unknown_users_are_recorded_and_unconfigured_deletions_wait_for_a_key() {
    let heap = stand_in();
    let dir = tempfile::tempdir().unwrap();
    let braze = Braze::unpooled();
    let server = start(dir.path(), &heap, None, &[]);
    assert!(server.log().contains("No Heap API key"), "{}", server.log());
    post(&braze, &server, &[deletion_of("del-x", "braze-never-seen")]).await;
    post(
        &braze,
        &server,
        &[event_of("x1", "braze-never-seen", Some("ext-x"))],
    )
    .await;
    wait_for_status(dir.path(), "braze-never-seen", "unknown_user").await;

    heap.set_mode(Mode::Down);
    post(&braze, &server, &[event_of("a0", "braze-a", Some("ext-a"))]).await;
    post(&braze, &server, &[deletion_of("del-a", "braze-a")]).await;
    wait_for_status(dir.path(), "braze-a", "unconfigured").await;
    let metrics = braze.metrics(server.addr).await.unwrap();
    assert!(
        metrics.contains(
            "currents_heap_deletions_total{outcome=\"unconfigured\",route=\"default\"} 1"
        )
    );
    terminate(server).await;

    heap.set_mode(Mode::Normal);
    let server = start(dir.path(), &heap, Some(KEY), &[]);
    wait_for_status(dir.path(), "braze-a", "complete").await;
    let report = heap.report();
    let users: Vec<&DeletionUser> = report.deletion.users().map(|(_, u)| u).collect();
    assert_eq!(users, [&DeletionUser::Identity("ext-a".into())]);
    assert_eq!(report.key_count("x1"), 0, "the tombstone held");
    assert_eq!(report.key_count("a0"), 0, "purged before Heap came back");
    terminate(server).await;
}

/// 10,001 deletions go to Heap as two requests (10,000 users at most each), and the token is
/// renewed when it expires between them.
#[tokio::test]
async fn ten_thousand_and_one_deletions_are_two_requests_across_a_token_renewal() {
    const N: usize = 10_001;
    let heap = stand_in();
    heap.set_token_lifetime(Duration::from_millis(300));
    heap.set_mode(Mode::Down);
    let dir = tempfile::tempdir().unwrap();
    let braze = Braze::unpooled();
    let server = start(
        dir.path(),
        &heap,
        Some(KEY),
        &["--deletion-request-interval", "1s"],
    );
    let users: Vec<String> = (0..N).map(|i| format!("braze-{i:05}")).collect();
    for chunk in users.chunks(1000) {
        let events: Vec<Value> = chunk
            .iter()
            .map(|u| event_of(&format!("ev-{u}"), u, Some(&format!("ext-{u}"))))
            .collect();
        post(&braze, &server, &events).await;
    }
    for chunk in users.chunks(1000) {
        let events: Vec<Value> = chunk
            .iter()
            .map(|u| deletion_of(&format!("del-{u}"), u))
            .collect();
        post(&braze, &server, &events).await;
    }
    // Past the settling delay (4 x --heap-timeout), every deletion may go in the first request.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    heap.set_mode(Mode::Normal);
    wait_until_async("every deletion is complete", WAIT, || async {
        let l = ledger(dir.path()).await;
        l.len() == N && l.iter().all(|e| e["status"] == "complete")
    })
    .await;
    let report = heap.report();
    let sizes: Vec<usize> = report
        .deletion
        .requests
        .iter()
        .map(|r| r.users.len())
        .collect();
    assert_eq!(sizes, [10_000, 1]);
    assert!(report.deletion.tokens_issued >= 2, "{:?}", report.deletion);
    assert!(
        report.deletion.unauthorized >= 1,
        "the expired token was refused"
    );
    assert_eq!(report.track_items().count(), 0, "every event was purged");
    terminate(server).await;
}

/// Routes that share a Heap account share one deletion request: a deletion covers every
/// environment of the account.
#[tokio::test]
async fn routes_sharing_a_heap_account_share_one_deletion_request() {
    let heap = HeapStandIn::start(StandInConfig::heap());
    heap.set_deletion_key("1111", KEY);
    let url = heap.base_url();
    let toml = format!(
        r#"
        heap_timeout = "1s"
        heap_linger = "20ms"
        deletion_request_interval = "50ms"
        deletion_poll_interval = "100ms"
        heap_api_key = "{KEY}"
        heap_account_app_id = "1111"

        [[route]]
        name = "brand-a"
        workspace = "a"
        heap_app_id = "1111"
        heap_base_url = "{url}"

        [[route]]
        name = "brand-b"
        workspace = "b"
        heap_app_id = "2222"
        heap_base_url = "{url}"
        "#
    );
    let args = currents_heap::config::SettingsArgs {
        ingest_token: Some(common::TOKEN.into()),
        ..Default::default()
    };
    let app = common::TestApp::routed(&toml, args).await;
    let post = |query: &'static str, events: Vec<Value>| {
        let app = &app;
        async move {
            let (status, body) = app
                .post_events_as(query, Some(common::TOKEN), &events)
                .await;
            assert_eq!(status, 200, "{body}");
        }
    };
    post(
        "?workspace=a",
        vec![event_of("a0", "braze-a", Some("ext-a"))],
    )
    .await;
    post(
        "?workspace=b",
        vec![event_of("b0", "braze-b", Some("ext-b"))],
    )
    .await;
    wait_until("both events reach Heap", WAIT, || {
        let r = heap.report();
        r.key_count("a0") == 1 && r.key_count("b0") == 1
    })
    .await;
    // Both deletions wait (Heap down) until both are past the settling delay.
    heap.set_mode(Mode::Down);
    post("?workspace=a", vec![deletion_of("del-a", "braze-a")]).await;
    post("?workspace=b", vec![deletion_of("del-b", "braze-b")]).await;
    tokio::time::sleep(Duration::from_millis(4500)).await;
    heap.set_mode(Mode::Normal);
    wait_until("Heap receives the deletions", WAIT, || {
        heap.report().deletion.users().count() == 2
    })
    .await;
    let report = heap.report();
    assert_eq!(
        report.deletion.requests.len(),
        1,
        "one request for both routes"
    );
    let mut users: Vec<&DeletionUser> = report.deletion.requests[0].users.iter().collect();
    users.sort_by_key(|u| format!("{u:?}"));
    assert_eq!(
        users,
        [
            &DeletionUser::Identity("ext-a".into()),
            &DeletionUser::Identity("ext-b".into())
        ]
    );
    assert_eq!(report.deletion.requests[0].app_id, "1111");
    app.stop().await;
}
