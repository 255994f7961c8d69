//! product.md §3 "server draining on SIGTERM" and §5 graceful shutdown: new batches get 503 +
//! `Retry-After`, `/readyz` turns 503, the batch already in flight finishes and is stored, and
//! everything acknowledged is there at the next start.

use std::sync::Arc;
use std::time::Duration;

use currents_heap::config::SettingsArgs;
use http::StatusCode;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_server_refuses_new_batches_with_503_and_finishes_the_one_in_flight() {
    let mut app = spawn_app().await;
    let state = Arc::clone(app.state());
    let slow = batch(&email_sends("in-flight", 3));
    let (head, tail) = slow.split_at(slow.len() / 2);

    // A batch whose body is still arriving when the signal comes.
    let mut conn = RawConn::connect(app.addr()).await;
    conn.send_head(&[
        ("authorization", "Bearer tok-a"),
        ("content-type", "application/json"),
        ("content-length", &slow.len().to_string()),
    ])
    .await;
    conn.write(head).await;
    wait_until(
        "the slow batch is in flight",
        Duration::from_secs(10),
        || state.batches_in_flight() == 1,
    )
    .await;

    app.trigger_shutdown();
    wait_until("the server drains", Duration::from_secs(10), || {
        state.is_draining()
    })
    .await;

    // A new batch on another connection: refused, transiently.
    let refused = app.post_authed(batch(&email_sends("late", 2))).await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.text()
    );
    // README "What each status code means to Braze": draining is `Retry-After: 5`.
    assert_eq!(refused.retry_after_secs(), 5);
    assert_eq!(refused.json()["error"], "draining");
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        app.get("/healthz").await.status,
        StatusCode::OK,
        "still live while draining"
    );
    assert_eq!(
        app.metric(r#"currents_heap_ingest_requests_total{outcome="draining"}"#)
            .await,
        1.0
    );

    // The batch in flight completes normally.
    conn.write(tail).await;
    let reply = conn.read_response().await;
    reply.assert_accepted(3, 0);

    app.wait_stopped().await;
    assert_eq!(
        app.stored_ids(),
        id_set(["in-flight-0", "in-flight-1", "in-flight-2"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_server_refuses_even_a_credential_check_with_503() {
    let mut app = spawn_app().await;
    let state = Arc::clone(app.state());
    // Keep the drain open with a batch in flight.
    let mut conn = RawConn::connect(app.addr()).await;
    conn.send_head(&[("authorization", "Bearer tok-a"), ("content-length", "100")])
        .await;
    wait_until(
        "the slow batch is in flight",
        Duration::from_secs(10),
        || state.batches_in_flight() == 1,
    )
    .await;
    app.trigger_shutdown();
    wait_until("the server drains", Duration::from_secs(10), || {
        state.is_draining()
    })
    .await;

    for (body, headers) in [("", AUTH), ("{}", AUTH), ("{}", &[][..])] {
        let reply = app.post(body, headers).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{body:?}");
        assert_eq!(reply.retry_after_secs(), 5, "{body:?}");
    }
    drop(conn);
    app.wait_stopped().await;
    assert_eq!(app.stored_count(), 0);
}

#[tokio::test]
async fn acknowledged_events_and_their_dedup_memory_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let args = || SettingsArgs {
        data_dir: Some(dir.path().into()),
        ..default_args()
    };
    let body = batch(&email_sends("restart", 3));

    let app = spawn_app_with(args()).await;
    app.post_authed(body.clone()).await.assert_accepted(3, 0);
    app.stop().await;

    let app = spawn_app_with(args()).await;
    assert_eq!(app.stored_count(), 3);
    assert_eq!(app.get("/readyz").await.status, StatusCode::OK);
    assert_eq!(app.metric("currents_heap_queue_events").await, 3.0);
    app.post_authed(body).await.assert_accepted(0, 3);
    assert_eq!(app.stored_count(), 3);
}
