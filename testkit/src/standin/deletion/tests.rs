use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use super::*;
use crate::standin::{Fault, Mode, StandInConfig};

const ACCOUNT: &str = "1234";
const KEY: &str = "s3cret-key";

/// Standard base64 with padding, for the test's own Basic header.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn basic(app_id: &str, key: &str) -> String {
    format!("Basic {}", base64(format!("{app_id}:{key}").as_bytes()))
}

#[derive(Debug)]
struct Got {
    status: u16,
    body: Value,
}

async fn send(
    heap: &HeapStandIn,
    method: Method,
    path: &str,
    auth: Option<&str>,
    body: Option<&Value>,
) -> Result<Got, String> {
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http();
    let mut req = Request::builder()
        .method(method)
        .uri(format!("{}{path}", heap.base_url()));
    if let Some(auth) = auth {
        req = req.header(header::AUTHORIZATION, auth);
    }
    let body = match body {
        Some(v) => {
            req = req.header(header::CONTENT_TYPE, "application/json");
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    let resp = client
        .request(req.body(Full::new(body)).unwrap())
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Ok(Got { status, body })
}

async fn token(heap: &HeapStandIn) -> String {
    let got = send(
        heap,
        Method::POST,
        AUTH_TOKEN_PATH,
        Some(&basic(ACCOUNT, KEY)),
        None,
    )
    .await
    .unwrap();
    assert_eq!(got.status, 200, "{:?}", got.body);
    got.body["access_token"].as_str().unwrap().to_owned()
}

async fn delete(heap: &HeapStandIn, token: &str, body: &Value) -> Got {
    send(
        heap,
        Method::POST,
        USER_DELETION_PATH,
        Some(&format!("Bearer {token}")),
        Some(body),
    )
    .await
    .unwrap()
}

async fn poll(heap: &HeapStandIn, token: &str, id: &str) -> Got {
    send(
        heap,
        Method::GET,
        &format!("{DELETION_STATUS_PATH}/{id}"),
        Some(&format!("Bearer {token}")),
        None,
    )
    .await
    .unwrap()
}

fn err_message(got: &Got) -> &str {
    got.body["err"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no err.message in {:?}", got.body))
}

fn started() -> HeapStandIn {
    let heap = HeapStandIn::start(StandInConfig::heap());
    heap.set_deletion_key(ACCOUNT, KEY);
    heap
}

#[test]
fn base64_decoding() {
    for text in [
        "",
        "a",
        "ab",
        "abc",
        "abcd",
        "1234:s3cret-key",
        "\u{e9}t\u{e9}",
    ] {
        assert_eq!(
            base64_decode(&base64(text.as_bytes())).unwrap(),
            text.as_bytes()
        );
    }
    assert_eq!(base64_decode("YWJj").unwrap(), b"abc");
    assert_eq!(base64_decode("YQ==").unwrap(), b"a");
    for bad in ["YQ=", "Y===", "YQ==YWJj", "YW*j"] {
        assert_eq!(base64_decode(bad), None, "{bad}");
    }
}

#[test]
fn user_deletion_bodies() {
    let parse = |v: Value| parse_user_deletion(v.to_string().as_bytes());
    assert_eq!(
        parse(json!({"users": [{"user_id": 1}, {"identity": "alice@email.com"}]})).unwrap(),
        vec![
            DeletionUser::UserId(1),
            DeletionUser::Identity("alice@email.com".into())
        ]
    );
    let max = (1u64 << 53) - 1;
    assert_eq!(
        parse(json!({"users": [{"user_id": max}, {"identity": "é".repeat(255)}]})).unwrap()[0],
        DeletionUser::UserId(max)
    );
    for (body, says) in [
        (json!([]), "not a JSON object"),
        (json!({}), "`users` is missing"),
        (json!({"users": {}}), "must be an array"),
        (json!({"users": []}), "0 entries"),
        (
            json!({"users": [{"user_id": 1}], "app_id": "1"}),
            "unknown top-level",
        ),
        (json!({"users": [1]}), "users[0]: not a JSON object"),
        (json!({"users": [{}]}), "exactly one"),
        (
            json!({"users": [{"user_id": 1, "identity": "a"}]}),
            "exactly one",
        ),
        (json!({"users": [{"user_id": "1"}]}), "JSON integer"),
        (json!({"users": [{"user_id": 1.5}]}), "[0, 2^53)"),
        (json!({"users": [{"user_id": -1}]}), "[0, 2^53)"),
        (json!({"users": [{"user_id": 1u64 << 53}]}), "[0, 2^53)"),
        (json!({"users": [{"identity": ""}]}), "has 0"),
        (json!({"users": [{"identity": "x".repeat(256)}]}), "has 256"),
        (json!({"users": [{"identity": 5}]}), "must be a string"),
        (json!({"users": [{"email": "a"}]}), "unknown field `email`"),
    ] {
        let err = parse(body.clone()).unwrap_err();
        assert!(err.contains(says), "{body}: {err}");
    }
    let many: Vec<Value> = (0..=MAX_DELETION_USERS)
        .map(|i| json!({"user_id": i}))
        .collect();
    assert!(
        parse(json!({ "users": many }))
            .unwrap_err()
            .contains("10001 entries")
    );
}

#[tokio::test]
async fn submit_then_status_pending_then_complete() {
    let heap = started();
    let token = token(&heap).await;
    let got = delete(
        &heap,
        &token,
        &json!({"users": [{"user_id": 1}, {"identity": "alice@email.com"}]}),
    )
    .await;
    assert_eq!(got.status, 201, "{:?}", got.body);
    let id = got.body["deletion_request_id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "uuid-like: {id}");
    assert_eq!(id.matches('-').count(), 4, "{id}");
    assert_eq!(got.body["status"], "pending");
    assert_eq!(
        got.body["deletion_request_location"],
        format!("{}{DELETION_STATUS_PATH}/{id}", heap.base_url())
    );

    let first = poll(&heap, &token, &id).await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.body,
        json!({"deletion_request_id": id, "status": "pending"})
    );
    let second = poll(&heap, &token, &id).await;
    assert_eq!(second.body["status"], "complete");
    assert_eq!(poll(&heap, &token, &id).await.body["status"], "complete");

    let report = heap.report();
    let d = &report.deletion;
    assert_eq!(d.requests.len(), 1);
    assert_eq!(d.requests[0].app_id, ACCOUNT);
    assert_eq!(d.requests[0].request_id, id);
    assert_eq!(
        d.requests[0].users,
        vec![
            DeletionUser::UserId(1),
            DeletionUser::Identity("alice@email.com".into())
        ]
    );
    assert_eq!(d.users().count(), 2);
    assert_eq!((d.auth_token_calls, d.tokens_issued), (1, 1));
    assert_eq!(d.status_polls, 3);
    assert_eq!((d.unauthorized, d.bad_requests), (0, 0));
    assert_eq!(report.requests_with(AUTH_TOKEN_PATH, 200), 1);
    assert_eq!(report.requests_with(USER_DELETION_PATH, 201), 1);
    assert_eq!(report.requests_with(DELETION_STATUS_PATH, 200), 3);
    assert_eq!(heap.deletion_requests(), d.requests);
}

#[tokio::test]
async fn pending_polls_are_configurable() {
    let heap = started();
    let token = token(&heap).await;
    let body = json!({"users": [{"user_id": 7}]});
    heap.set_pending_polls(0);
    let at_once = delete(&heap, &token, &body).await.body["deletion_request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    heap.set_pending_polls(3);
    let slow = delete(&heap, &token, &body).await.body["deletion_request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(at_once, slow);
    assert_eq!(
        poll(&heap, &token, &at_once).await.body["status"],
        "complete"
    );
    for _ in 0..3 {
        assert_eq!(poll(&heap, &token, &slow).await.body["status"], "pending");
    }
    assert_eq!(poll(&heap, &token, &slow).await.body["status"], "complete");
}

#[tokio::test]
async fn bad_credentials_are_401_with_an_err_message() {
    let heap = HeapStandIn::start(StandInConfig::heap());
    // No key configured: every authentication fails.
    let got = send(
        &heap,
        Method::POST,
        AUTH_TOKEN_PATH,
        Some(&basic(ACCOUNT, KEY)),
        None,
    )
    .await
    .unwrap();
    assert_eq!(got.status, 401);
    assert_eq!(err_message(&got), "Invalid API key or app_id");

    heap.set_deletion_key(ACCOUNT, KEY);
    heap.set_deletion_key("999", "other");
    for auth in [
        None,
        Some(basic(ACCOUNT, "wrong")),
        Some(basic("999", KEY)),
        Some(basic(ACCOUNT, "")),
        Some("Basic not-base64!".to_owned()),
        Some(format!("Bearer {}", base64(b"1234:s3cret-key"))),
    ] {
        let got = send(&heap, Method::POST, AUTH_TOKEN_PATH, auth.as_deref(), None)
            .await
            .unwrap();
        assert_eq!(got.status, 401, "{auth:?}");
        assert_eq!(err_message(&got), "Invalid API key or app_id");
    }
    // Both configured pairs work, and the token carries its account.
    let other = send(
        &heap,
        Method::POST,
        AUTH_TOKEN_PATH,
        Some(&basic("999", "other")),
        None,
    )
    .await
    .unwrap();
    assert_eq!(other.status, 200);
    let other = other.body["access_token"].as_str().unwrap().to_owned();
    let got = delete(&heap, &other, &json!({"users": [{"identity": "bob"}]})).await;
    assert_eq!(got.status, 201);
    let mine = token(&heap).await;
    assert_ne!(mine, other);
    let id = got.body["deletion_request_id"].as_str().unwrap();
    assert_eq!(
        poll(&heap, &mine, id).await.status,
        404,
        "another account's"
    );
    assert_eq!(poll(&heap, &other, id).await.status, 200);

    let report = heap.report();
    assert_eq!(report.deletion.requests[0].app_id, "999");
    assert_eq!(report.deletion.auth_token_calls, 9);
    assert_eq!(report.deletion.tokens_issued, 2);
    assert_eq!(report.deletion.unauthorized, 7);
    assert_eq!(report.requests_with(AUTH_TOKEN_PATH, 401), 7);
}

#[tokio::test]
async fn unknown_missing_and_expired_tokens_are_401() {
    let heap = started();
    let body = json!({"users": [{"user_id": 1}]});
    let got = delete(&heap, "made-up", &body).await;
    assert_eq!(got.status, 401);
    assert_eq!(err_message(&got), "Invalid access token");
    let got = send(&heap, Method::POST, USER_DELETION_PATH, None, Some(&body))
        .await
        .unwrap();
    assert_eq!(got.status, 401);
    assert!(err_message(&got).contains("Missing bearer token"));
    assert_eq!(poll(&heap, "made-up", "some-id").await.status, 401);

    heap.set_token_lifetime(Duration::from_millis(100));
    let short = token(&heap).await;
    let got = delete(&heap, &short, &body).await;
    assert_eq!(got.status, 201);
    let id = got.body["deletion_request_id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let got = delete(&heap, &short, &body).await;
    assert_eq!(got.status, 401);
    assert!(err_message(&got).contains("expired"), "{:?}", got.body);
    assert_eq!(poll(&heap, &short, &id).await.status, 401);

    heap.set_token_lifetime(DEFAULT_TOKEN_LIFETIME);
    let fresh = token(&heap).await;
    assert_eq!(poll(&heap, &fresh, &id).await.status, 200);
    heap.expire_tokens();
    assert_eq!(poll(&heap, &fresh, &id).await.status, 401);

    let report = heap.report();
    assert_eq!(report.deletion.requests.len(), 1, "a 401 records nothing");
    assert_eq!(report.deletion.unauthorized, 6);
    assert_eq!(report.requests_with(USER_DELETION_PATH, 401), 3);
    assert_eq!(report.requests_with(DELETION_STATUS_PATH, 401), 3);
}

#[tokio::test]
async fn bad_bodies_and_too_many_users_are_400() {
    let heap = started();
    let token = token(&heap).await;
    let full: Vec<Value> = (0..MAX_DELETION_USERS)
        .map(|i| json!({"identity": format!("user-{i}")}))
        .collect();
    let got = delete(&heap, &token, &json!({ "users": full })).await;
    assert_eq!(got.status, 201, "10,000 users is the documented cap");
    let mut over = full.clone();
    over.push(json!({"user_id": 1}));
    let got = delete(&heap, &token, &json!({ "users": over })).await;
    assert_eq!(got.status, 400);
    assert!(err_message(&got).contains("1..=10000"), "{:?}", got.body);
    for body in [
        json!({"users": []}),
        json!({"users": [{"user_id": "12"}]}),
        json!({"users": [{"identity": "a", "user_id": 1}]}),
    ] {
        let got = delete(&heap, &token, &body).await;
        assert_eq!(got.status, 400, "{body}");
        assert!(!err_message(&got).is_empty());
    }
    // Wrong method on each path.
    let got = send(
        &heap,
        Method::GET,
        USER_DELETION_PATH,
        Some(&format!("Bearer {token}")),
        None,
    )
    .await
    .unwrap();
    assert_eq!(got.status, 400);
    let got = send(
        &heap,
        Method::POST,
        &format!("{DELETION_STATUS_PATH}/x"),
        Some(&format!("Bearer {token}")),
        Some(&json!({})),
    )
    .await
    .unwrap();
    assert_eq!(got.status, 400);

    let report = heap.report();
    assert_eq!(report.deletion.requests.len(), 1);
    assert_eq!(report.deletion.requests[0].users.len(), MAX_DELETION_USERS);
    assert_eq!(report.deletion.bad_requests, 6);
    assert_eq!(report.requests_with(USER_DELETION_PATH, 400), 5);
    assert_eq!(report.requests_with(DELETION_STATUS_PATH, 400), 1);
}

#[tokio::test]
async fn unknown_request_id_is_404() {
    let heap = started();
    let token = token(&heap).await;
    for id in ["00000000-0000-0000-0000-000000000000", ""] {
        let got = poll(&heap, &token, id).await;
        assert_eq!(got.status, 404, "{id:?}");
        assert!(err_message(&got).contains("not found"));
    }
    assert_eq!(heap.report().requests_with(DELETION_STATUS_PATH, 404), 2);
}

#[tokio::test]
async fn faults_and_modes_apply_to_deletion_paths() {
    let heap = started();
    heap.push_faults([
        Fault::Status {
            code: 429,
            retry_after: Some("7".into()),
            body: "slow down".into(),
        },
        Fault::DropBeforeProcessing,
    ]);
    let got = send(
        &heap,
        Method::POST,
        AUTH_TOKEN_PATH,
        Some(&basic(ACCOUNT, KEY)),
        None,
    )
    .await
    .unwrap();
    assert_eq!(got.status, 429);
    let dropped = token_or_err(&heap).await;
    assert!(dropped.is_err(), "dropped connection");
    let token = token(&heap).await;
    heap.set_mode(Mode::Down);
    assert_eq!(poll(&heap, &token, "x").await.status, 503);
    heap.set_mode(Mode::Normal);
    heap.push_fault(Fault::DropAfterProcessing);
    send(
        &heap,
        Method::POST,
        USER_DELETION_PATH,
        Some(&format!("Bearer {token}")),
        Some(&json!({"users": [{"user_id": 3}]})),
    )
    .await
    .unwrap_err();
    let report = heap.report();
    assert_eq!(report.deletion.requests.len(), 1, "processed, then dropped");
    assert_eq!(report.requests_with(AUTH_TOKEN_PATH, 429), 1);
    assert_eq!(report.dropped_connections[AUTH_TOKEN_PATH], 1);
    assert_eq!(report.dropped_connections[USER_DELETION_PATH], 1);
    assert_eq!(report.requests_with(DELETION_STATUS_PATH, 503), 1);
    assert_eq!(report.faults_injected, 3);
}

async fn token_or_err(heap: &HeapStandIn) -> Result<Got, String> {
    send(
        heap,
        Method::POST,
        AUTH_TOKEN_PATH,
        Some(&basic(ACCOUNT, KEY)),
        None,
    )
    .await
}

#[test]
fn status_paths_are_counted_without_their_id() {
    assert_eq!(
        path_label("/api/public/v0/deletion_status/abc"),
        DELETION_STATUS_PATH
    );
    assert_eq!(path_label(DELETION_STATUS_PATH), DELETION_STATUS_PATH);
    assert_eq!(
        path_label("/api/public/v0/deletion_statusx"),
        "/api/public/v0/deletion_statusx"
    );
    assert_eq!(path_label("/api/track"), "/api/track");
}
