//! The public edge (README "Facing the internet"): idle and slow clients are cut off, stalled
//! uploads cannot starve ingest, waiting for memory ends in 503 + `Retry-After`, `/readyz`
//! says when the instance is saturated, and the connection cap makes room by closing the
//! longest-idle connection. Timeouts are scaled down; assertions only bound them from above
//! with a wide margin, so a loaded machine cannot make them flaky.

use std::sync::Arc;
use std::time::Duration;

use currents_heap::config::SettingsArgs;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Empty};

use crate::common::*;

/// Far more than any timeout below, far less than the defaults they replace.
const PATIENCE: Duration = Duration::from_secs(20);

fn closed(app: &TestApp, reason: &str) -> u64 {
    app.state().metrics.connections.closed_count(reason)
}

/// An authenticated `POST /currents` declaring `declared` bytes, of which `first` are sent.
async fn upload(app: &TestApp, declared: &str, first: &[u8]) -> RawConn {
    let mut conn = RawConn::connect(app.addr()).await;
    conn.send_head(&[
        ("authorization", "Bearer tok-a"),
        ("content-length", declared),
    ])
    .await;
    conn.write(first).await;
    conn
}

/// A 408 `body_timeout`, and nothing of the request stored.
fn assert_body_timeout(app: &TestApp, reply: &Reply) {
    assert_eq!(
        reply.status,
        StatusCode::REQUEST_TIMEOUT,
        "{}",
        reply.text()
    );
    assert_eq!(reply.json()["error"], "body_timeout");
    assert_eq!(app.stored_count(), 0);
}

fn args(f: impl FnOnce(&mut SettingsArgs)) -> SettingsArgs {
    let mut a = default_args();
    f(&mut a);
    a
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_the_idle_timeout() {
    let app = spawn_app_with(args(|a| {
        a.idle_timeout = Some("300ms".into());
    }))
    .await;
    let mut silent = RawConn::connect(app.addr()).await;
    let sent = silent
        .closed_within(PATIENCE)
        .await
        .expect("an idle connection is closed, not kept forever");
    assert!(sent.is_empty(), "nothing to answer: {sent:?}");
    assert_eq!(closed(&app, "idle_timeout"), 1);
}

#[tokio::test]
async fn a_keep_alive_connection_is_closed_once_idle_after_its_request() {
    let app = spawn_app_with(args(|a| {
        a.idle_timeout = Some("300ms".into());
    }))
    .await;
    let mut conn = RawConn::connect(app.addr()).await;
    conn.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    let sent = conn
        .closed_within(PATIENCE)
        .await
        .expect("closed after the idle timeout");
    assert!(
        String::from_utf8_lossy(&sent).starts_with("HTTP/1.1 200"),
        "the request was served first: {:?}",
        String::from_utf8_lossy(&sent)
    );
    assert_eq!(closed(&app, "idle_timeout"), 1);
}

#[tokio::test]
async fn a_head_that_trickles_in_is_cut_at_the_header_timeout() {
    let app = spawn_app_with(args(|a| {
        a.header_read_timeout = Some("400ms".into());
        a.idle_timeout = Some("1h".into());
    }))
    .await;
    let mut slow = RawConn::connect(app.addr()).await;
    slow.write(b"POST /currents HTTP/1.1\r\n").await;
    // One header byte every 50 ms keeps the connection busy but never finishes the head.
    let trickle = async {
        for b in b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if slow.try_write(&[*b]).await.is_err() {
                return;
            }
        }
    };
    tokio::time::timeout(PATIENCE, trickle)
        .await
        .expect("bounded");
    assert!(
        slow.closed_within(PATIENCE).await.is_some(),
        "a never-ending head must be cut"
    );
    assert_eq!(closed(&app, "header_timeout"), 1);
    assert_eq!(closed(&app, "idle_timeout"), 0);
}

#[tokio::test]
async fn a_body_that_stops_arriving_gets_408_at_the_body_deadline() {
    let app = spawn_app_with(args(|a| {
        a.body_read_timeout = Some("300ms".into());
    }))
    .await;
    let body = batch(&email_sends("stalled", 3));
    let conn = upload(&app, &body.len().to_string(), &body[..body.len() / 2]).await;
    let reply = tokio::time::timeout(PATIENCE, conn.read_response())
        .await
        .expect("answered within the deadline");
    assert_body_timeout(&app, &reply);
}

#[tokio::test]
async fn a_body_cut_off_mid_way_gets_408_and_nothing_is_stored() {
    let app = spawn_app().await;
    let body = batch(&email_sends("cut", 3));
    let mut conn = upload(&app, &body.len().to_string(), &body[..body.len() / 2]).await;
    conn.finish_sending().await;
    let reply = tokio::time::timeout(PATIENCE, conn.read_response())
        .await
        .expect("answered at once, not at the body deadline");
    assert_body_timeout(&app, &reply);
}

/// Today's defect: 32 stalled authenticated uploads held every body slot for 60 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_cannot_starve_ingest() {
    let app = spawn_app_with(args(|a| {
        a.ingest_buffer_bytes = Some("2MiB".into());
        a.ingest_wait_timeout = Some("1h".into());
    }))
    .await;
    let mut stalled = Vec::new();
    for _ in 0..48 {
        stalled.push(upload(&app, "1000000", br#"{"events":["#).await);
    }
    let state = Arc::clone(app.state());
    wait_until("every stalled upload is in flight", PATIENCE, || {
        state.batches_in_flight() == 48
    })
    .await;
    let ok = tokio::time::timeout(
        PATIENCE,
        app.post_authed(batch(&email_sends("meanwhile", 5))),
    )
    .await
    .expect("a well-behaved batch is not held behind stalled uploads");
    ok.assert_accepted(5, 0);
    assert_eq!(app.get("/readyz").await.status, StatusCode::OK);
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_memory_ends_in_503_with_retry_after_and_readyz_says_saturated() {
    let app = spawn_app_with(args(|a| {
        a.ingest_buffer_bytes = Some("2MiB".into());
        a.ingest_wait_timeout = Some("2s".into());
    }))
    .await;
    // Two uploads that really sent 900 KiB each hold most of the 2 MiB budget.
    let mut holders = Vec::new();
    for _ in 0..2 {
        holders.push(upload(&app, "1000000", &vec![b' '; 900 * 1024]).await);
    }
    let state = Arc::clone(app.state());
    wait_until("the budget is nearly used", PATIENCE, || {
        state.buffer.used_bytes() >= 1800 * 1024
    })
    .await;
    let big = batch(&email_sends("big", 1500));
    assert!(big.len() > 300 * 1024 && big.len() < 1024 * 1024);
    let app = Arc::new(app);
    let waiter = {
        let app = Arc::clone(&app);
        tokio::spawn(async move { app.post_authed(big).await })
    };
    wait_until("the batch waits for memory", PATIENCE, || {
        state.buffer.waiting() == 1
    })
    .await;
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.text(), "saturated\n");
    let reply = tokio::time::timeout(PATIENCE, waiter)
        .await
        .expect("the wait has a deadline")
        .unwrap();
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    // README: no room in the ingest memory budget is `Retry-After: 5`.
    assert_eq!(reply.retry_after_secs(), 5);
    assert_eq!(reply.json()["error"], "saturated");
    assert_eq!(
        app.metric(r#"currents_heap_ingest_requests_total{outcome="saturated"}"#)
            .await,
        1.0
    );
    drop(holders);
    wait_until("the holders' memory is given back", PATIENCE, || {
        state.buffer.used_bytes() == 0
    })
    .await;
    assert_eq!(app.get("/readyz").await.status, StatusCode::OK);
    app.post_authed(batch(&email_sends("after", 2)))
        .await
        .assert_accepted(2, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_the_longest_idle_connection_makes_room_and_busy_ones_refuse() {
    let app = spawn_app_with(args(|a| {
        a.max_connections = Some("4".into());
    }))
    .await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(RawConn::connect(app.addr()).await);
        // Distinct idle-since times, so "longest idle" is the first.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let state = Arc::clone(app.state());
    wait_until("four connections are open", PATIENCE, || {
        state.metrics.connections.open_now() == 4
    })
    .await;
    app.post_authed(batch(&email_sends("room", 2)))
        .await
        .assert_accepted(2, 0);
    assert_eq!(closed(&app, "evicted"), 1);
    assert!(
        idle[0].closed_within(PATIENCE).await.is_some(),
        "the longest-idle connection was the one closed"
    );
    drop(idle);
    wait_until("the idle connections are gone", PATIENCE, || {
        state.metrics.connections.open_now() <= 1
    })
    .await;

    // Four connections each in the middle of a request: nothing to evict.
    let mut busy = Vec::new();
    for _ in 0..4 {
        let mut conn = RawConn::connect(app.addr()).await;
        conn.send_head(&[("authorization", "Bearer tok-a"), ("content-length", "100")])
            .await;
        conn.write(b"{").await;
        busy.push(conn);
    }
    wait_until("four requests are in flight", PATIENCE, || {
        state.batches_in_flight() == 4
    })
    .await;
    let mut refused = RawConn::connect(app.addr()).await;
    let answer = refused
        .closed_within(PATIENCE)
        .await
        .expect("refused at once");
    let reply = parse_response(&answer);
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    // README: every connection slot busy is `Retry-After: 1`.
    assert_eq!(reply.retry_after_secs(), 1);
    assert_eq!(closed(&app, "refused"), 1);
    assert!(state.is_saturated(), "/readyz would say saturated");
    drop(busy);
    wait_until("the busy connections are gone", PATIENCE, || {
        state.metrics.connections.open_now() == 0
    })
    .await;
    assert!(!state.is_saturated());
    assert_eq!(app.get("/readyz").await.status, StatusCode::OK);
}

#[tokio::test]
async fn head_is_served_wherever_get_is() {
    let app = spawn_app().await;
    for path in ["/metrics", "/healthz", "/readyz"] {
        let reply = app
            .request(
                Method::HEAD,
                path,
                Empty::<bytes::Bytes>::new().boxed(),
                &[],
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "HEAD {path}");
        assert!(reply.body.is_empty(), "HEAD {path} has no body");
    }
}
