//! product.md §3, transient refusals: a backlog over `--max-queue-bytes` and a disk below its
//! free-space reserve answer 503 + `Retry-After` and store nothing; they never answer 4xx.
//! `/readyz` stays 200 while ingest sheds for them (README "Endpoints": operators alert on
//! `ingest_requests_total` instead); only a store that cannot commit turns it 503.

use currents_heap::config::SettingsArgs;
use http::StatusCode;
use serde_json::Value;

use crate::common::*;

#[track_caller]
fn assert_unavailable(reply: &Reply, error: &str) {
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "body: {}",
        reply.text()
    );
    reply.retry_after_secs();
    assert_eq!(reply.json()["error"], error);
}

/// `/readyz` answers `200 ready`.
async fn assert_ready(app: &TestApp) {
    let ready = app.get("/readyz").await;
    assert_eq!(
        (ready.status, ready.text().as_str()),
        (StatusCode::OK, "ready\n"),
        "/readyz while ingest sheds for the disk"
    );
}

/// Bytes the quota counts for `events`: each event exactly as serialised in the batch.
fn payload_bytes(events: &[Value]) -> usize {
    events
        .iter()
        .map(|e| serde_json::to_vec(e).unwrap().len())
        .sum()
}

#[tokio::test]
async fn a_backlog_over_its_quota_answers_503_with_retry_after_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(SettingsArgs {
        data_dir: Some(dir.path().into()),
        max_queue_bytes: Some("2000".into()),
        ..default_args()
    })
    .await;
    let first = email_sends("quota-a", 4);
    let second = email_sends("quota-b", 4);
    let small = email_sends("quota-c", 1);
    let (a, b, c) = (
        payload_bytes(&first),
        payload_bytes(&second),
        payload_bytes(&small),
    );
    assert!(
        a <= 2000 && a + b > 2000 && a + c <= 2000,
        "sizes {a} {b} {c}"
    );

    app.post_authed(batch(&first)).await.assert_accepted(4, 0);
    let refused = app.post_authed(batch(&second)).await;

    assert_unavailable(&refused, "over_quota");
    assert_eq!(app.stored_count(), 4, "a refused batch leaves no trace");
    assert_ready(&app).await;
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            r#"currents_heap_events_rejected_total{reason="over_quota"}"#
        ),
        4.0
    );
    assert_eq!(
        metric_value(&metrics, "currents_heap_queue_bytes"),
        a as f64
    );
    assert_eq!(
        metric_value(&metrics, "currents_heap_queue_max_bytes"),
        2000.0
    );
    // What still fits is accepted; Braze's retry of the refused batch is refused again.
    app.post_authed(batch(&small)).await.assert_accepted(1, 0);
    assert_unavailable(&app.post_authed(batch(&second)).await, "over_quota");
    assert_eq!(app.stored_count(), 5);
    app.stop().await;

    // With room again, the refused events are new events, not duplicates of a half-stored try.
    let app = spawn_app_with(SettingsArgs {
        data_dir: Some(dir.path().into()),
        ..default_args()
    })
    .await;
    app.post_authed(batch(&second)).await.assert_accepted(4, 0);
    assert_eq!(app.stored_count(), 9);
}

#[tokio::test]
async fn a_batch_larger_than_the_whole_quota_answers_503_not_413() {
    let app = spawn_app_with(SettingsArgs {
        max_queue_bytes: Some("2000".into()),
        ..default_args()
    })
    .await;

    let reply = app.post_authed(batch(&email_sends("huge", 20))).await;

    // Braze splits on 413; the quota is a transient condition (the backlog drains), so 503.
    assert_unavailable(&reply, "over_quota");
    assert_eq!(app.stored_count(), 0);
}

#[tokio::test]
async fn a_credential_check_is_accepted_even_when_the_backlog_is_full() {
    let app = spawn_app_with(SettingsArgs {
        max_queue_bytes: Some("2000".into()),
        ..default_args()
    })
    .await;
    let mut filled = false;
    for i in 0..20 {
        let reply = app
            .post_authed(batch(&email_sends(&format!("fill-{i}"), 1)))
            .await;
        if reply.status == StatusCode::SERVICE_UNAVAILABLE {
            filled = true;
            break;
        }
        reply.assert_accepted(1, 0);
    }
    assert!(filled, "the 2000-byte quota was reached");

    app.post_authed("").await.assert_accepted(0, 0);
    app.post_authed(r#"{"events":[]}"#)
        .await
        .assert_accepted(0, 0);
}

#[tokio::test]
async fn a_full_disk_answers_503_with_retry_after_and_stores_nothing() {
    // No real disk is that large: the free-space reserve can never be met.
    let app = spawn_app_with(SettingsArgs {
        min_free_disk_bytes: Some("1000000TiB".into()),
        ..default_args()
    })
    .await;

    let reply = app.post_authed(fixture("email_send_batch.json")).await;

    assert_unavailable(&reply, "disk_full");
    assert_eq!(app.stored_count(), 0);
    assert_eq!(
        app.metric(r#"currents_heap_events_rejected_total{reason="disk_full"}"#)
            .await,
        3.0
    );
    // The process stays live and ready, and the credential check still passes so Braze keeps
    // the integration enabled.
    assert_eq!(app.get("/healthz").await.status, StatusCode::OK);
    assert_ready(&app).await;
    app.post_authed("").await.assert_accepted(0, 0);
}

#[tokio::test]
async fn a_batch_refused_for_a_full_disk_is_accepted_whole_once_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let body = fixture("mixed_known_unknown.json");
    {
        let app = spawn_app_with(SettingsArgs {
            data_dir: Some(dir.path().into()),
            min_free_disk_bytes: Some("1000000TiB".into()),
            ..default_args()
        })
        .await;
        assert_unavailable(&app.post_authed(body.clone()).await, "disk_full");
        app.stop().await;
    }
    // Same data directory, normal reserve: Braze's retry is new data, not duplicates.
    let app = spawn_app_with(SettingsArgs {
        data_dir: Some(dir.path().into()),
        ..default_args()
    })
    .await;
    app.post_authed(body).await.assert_accepted(5, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_commit_answers_503_and_turns_readyz_503_until_it_recovers() {
    let app = spawn_app().await;
    app.post_authed(batch(&email_sends("before", 1)))
        .await
        .assert_accepted(1, 0);
    // Another process holds the database's write lock (an operator's sqlite3 shell, say).
    let lock = rusqlite::Connection::open(app.store_path()).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let body = batch(&email_sends("locked", 3));

    let reply = app.post_authed(body.clone()).await;

    assert_unavailable(&reply, "store_unavailable");
    assert_eq!(
        app.get("/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(app.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(app.metric("currents_heap_store_healthy").await, 0.0);

    // Lock released: Braze's retry is accepted as new events, and the server is ready again.
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    app.post_authed(body).await.assert_accepted(3, 0);
    assert_eq!(app.get("/readyz").await.status, StatusCode::OK);
    assert_eq!(
        app.stored_ids(),
        id_set(["before-0", "locked-0", "locked-1", "locked-2"])
    );
}

#[tokio::test]
async fn a_re_sent_batch_is_acknowledged_as_duplicates_even_near_the_quota() {
    let app = spawn_app_with(SettingsArgs {
        max_queue_bytes: Some("2000".into()),
        ..default_args()
    })
    .await;
    let first = email_sends("near-quota", 4);
    let a = payload_bytes(&first);
    assert!(a <= 2000 && 2 * a > 2000, "size {a}");
    app.post_authed(batch(&first)).await.assert_accepted(4, 0);
    assert!(app.metric("currents_heap_queue_bytes").await <= 2000.0);

    // Braze re-sends the same batch (at-least-once): nothing new to store.
    let again = app.post_authed(batch(&first)).await;

    again.assert_accepted(0, 4);
    assert_eq!(app.stored_count(), 4);
}
