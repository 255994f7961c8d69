//! product.md §3, credentials: 401 for a missing or wrong bearer token when one is configured,
//! every rotation token accepted, and an open server when none is configured.

use currents_heap::config::SettingsArgs;
use http::StatusCode;

use crate::common::*;

#[track_caller]
fn assert_unauthorized(reply: &Reply) {
    assert_eq!(
        reply.status,
        StatusCode::UNAUTHORIZED,
        "body: {}",
        reply.text()
    );
    assert_eq!(reply.headers["www-authenticate"], "Bearer");
    assert_eq!(reply.json()["error"], "unauthorized");
}

#[tokio::test]
async fn a_request_without_a_token_is_refused_with_401_and_stores_nothing() {
    let app = spawn_app().await;

    let reply = app.post(fixture("email_send_batch.json"), &[]).await;

    assert_unauthorized(&reply);
    assert_eq!(app.stored_count(), 0);
    assert_eq!(
        app.metric(r#"currents_heap_ingest_requests_total{outcome="unauthorized"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_request_with_a_wrong_token_is_refused_with_401_and_stores_nothing() {
    let app = spawn_app().await;
    let body = fixture("email_send_batch.json");

    for header in [
        "Bearer tok-c",
        "Bearer tok-",
        "Bearer tok-a-and-more",
        "Bearer tok-a,tok-b",
        "Basic tok-a",
        "tok-a",
        "Bearer",
        "Bearertok-a",
    ] {
        let reply = app.post(body.clone(), &[("authorization", header)]).await;
        assert_unauthorized(&reply);
        assert!(
            !reply.text().contains("tok-"),
            "{header:?}: the answer must not echo a token"
        );
    }
    assert_eq!(app.stored_count(), 0);
}

#[tokio::test]
async fn a_credential_check_with_a_wrong_token_is_refused() {
    let app = spawn_app().await;

    for body in ["", "{}", r#"{"events":[]}"#] {
        let reply = app.post(body, &[("authorization", "Bearer expired")]).await;
        assert_unauthorized(&reply);
    }
}

#[tokio::test]
async fn credentials_are_checked_before_the_body_is_looked_at() {
    let app = spawn_app().await;

    // A malformed batch or an unsupported encoding from an unauthenticated client is still a
    // credentials problem: answering 400/415 would reveal the server accepts the endpoint.
    let reply = app.post("not json", &[]).await;
    assert_unauthorized(&reply);
    let reply = app
        .post(
            "{}",
            &[("content-encoding", "br"), ("authorization", "Bearer nope")],
        )
        .await;
    assert_unauthorized(&reply);
}

#[tokio::test]
async fn both_rotation_tokens_are_accepted() {
    let app = spawn_app().await;

    app.post(
        batch(&email_sends("a", 1)),
        &[("authorization", "Bearer tok-a")],
    )
    .await
    .assert_accepted(1, 0);
    app.post(
        batch(&email_sends("b", 1)),
        &[("authorization", "Bearer tok-b")],
    )
    .await
    .assert_accepted(1, 0);
    // RFC 6750: the scheme name is case-insensitive.
    app.post(
        batch(&email_sends("c", 1)),
        &[("authorization", "bearer tok-b")],
    )
    .await
    .assert_accepted(1, 0);

    assert_eq!(app.stored_ids(), id_set(["a-0", "b-0", "c-0"]));
}

#[tokio::test]
async fn without_a_configured_token_every_request_is_accepted() {
    let app = spawn_app_with(SettingsArgs {
        ingest_token: None,
        ..default_args()
    })
    .await;

    app.post(batch(&email_sends("open", 2)), &[])
        .await
        .assert_accepted(2, 0);
    app.post(
        batch(&email_sends("any-header", 1)),
        &[("authorization", "Bearer whatever")],
    )
    .await
    .assert_accepted(1, 0);
    app.post("", &[]).await.assert_accepted(0, 0);

    assert_eq!(app.stored_count(), 3);
}
