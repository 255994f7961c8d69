//! The Heap deletion client (`currents_heap::heap::deletion`) against the stand-in's deletion
//! API: the users Heap receives, the token's reuse and renewal, and what each answer means.
// Test code: `unwrap` is an assertion, and helpers are `pub` for the modules that share them.
#![allow(clippy::unwrap_used, unreachable_pub, missing_debug_implementations)]

use std::time::Duration;

use currents_heap::heap::deletion::{
    DeletionApiError, DeletionUser, HeapDeletionClient, MAX_USERS_PER_REQUEST, RequestState,
};
use currents_heap_testkit::standin::{
    self, AUTH_TOKEN_PATH, DELETION_STATUS_PATH, Fault, HeapStandIn, StandInConfig,
    USER_DELETION_PATH,
};

const ACCOUNT: &str = "1234";
const KEY: &str = "s3cret-api-key";

fn heap() -> HeapStandIn {
    let heap = HeapStandIn::start(StandInConfig::heap());
    heap.set_deletion_key(ACCOUNT, KEY);
    heap
}

fn client(heap: &HeapStandIn, key: &str) -> HeapDeletionClient {
    HeapDeletionClient::new(&heap.base_url(), ACCOUNT, key, Duration::from_secs(5))
}

fn identity(s: &str) -> DeletionUser {
    DeletionUser::Identity(s.to_owned())
}

#[tokio::test]
async fn submit_sends_exactly_the_users() {
    let heap = heap();
    let client = client(&heap, KEY);
    let id = client
        .submit(&[
            identity("alice@email.com"),
            DeletionUser::UserId(1),
            DeletionUser::UserId((1 << 53) - 1),
            identity("Bob"),
        ])
        .await
        .unwrap();
    let report = heap.report();
    let requests = &report.deletion.requests;
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].request_id, id);
    assert_eq!(requests[0].app_id, ACCOUNT);
    assert_eq!(
        requests[0].users,
        vec![
            standin::DeletionUser::Identity("alice@email.com".into()),
            standin::DeletionUser::UserId(1),
            standin::DeletionUser::UserId((1 << 53) - 1),
            standin::DeletionUser::Identity("Bob".into()),
        ]
    );
}

#[tokio::test]
async fn one_token_serves_several_calls() {
    let heap = heap();
    let client = client(&heap, KEY);
    for i in 0..3 {
        let id = client.submit(&[DeletionUser::UserId(i)]).await.unwrap();
        client.status(&id).await.unwrap();
    }
    let report = heap.report();
    assert_eq!(report.deletion.auth_token_calls, 1);
    assert_eq!(report.deletion.requests.len(), 3);
    assert_eq!(report.requests_with(USER_DELETION_PATH, 201), 3);
    assert_eq!(report.requests_with(DELETION_STATUS_PATH, 200), 3);
}

#[tokio::test]
async fn concurrent_callers_share_one_token() {
    let heap = heap();
    let client = std::sync::Arc::new(client(&heap, KEY));
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let client = std::sync::Arc::clone(&client);
            tokio::spawn(async move { client.submit(&[DeletionUser::UserId(i)]).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let report = heap.report();
    assert_eq!(report.deletion.auth_token_calls, 1);
    assert_eq!(report.deletion.requests.len(), 8);
}

#[tokio::test]
async fn a_token_is_renewed_before_its_reuse_time_ends() {
    let heap = heap();
    let client = client(&heap, KEY).with_token_reuse(Duration::from_millis(100));
    client.submit(&[identity("a")]).await.unwrap();
    client.submit(&[identity("b")]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    client.submit(&[identity("c")]).await.unwrap();
    let report = heap.report();
    assert_eq!(report.deletion.auth_token_calls, 2);
    assert_eq!(
        report.deletion.unauthorized, 0,
        "renewed before Heap refused it"
    );
    assert_eq!(report.deletion.requests.len(), 3);
}

#[tokio::test]
async fn an_expired_token_is_renewed_once() {
    let heap = heap();
    heap.set_token_lifetime(Duration::from_millis(200));
    let client = client(&heap, KEY);
    client.submit(&[identity("first")]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.submit(&[identity("second")]).await.unwrap();
    let report = heap.report();
    assert_eq!(report.deletion.auth_token_calls, 2);
    assert_eq!(report.deletion.tokens_issued, 2);
    assert_eq!(report.deletion.unauthorized, 1);
    assert_eq!(report.requests_with(USER_DELETION_PATH, 401), 1);
    assert_eq!(report.requests_with(USER_DELETION_PATH, 201), 2);
    let users: Vec<_> = report.deletion.users().map(|(_, u)| u.clone()).collect();
    assert_eq!(
        users,
        vec![
            standin::DeletionUser::Identity("first".into()),
            standin::DeletionUser::Identity("second".into()),
        ]
    );

    // The status poll renews the same way.
    let id = report.deletion.requests[0].request_id.clone();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(client.status(&id).await.unwrap(), RequestState::Pending);
    let report = heap.report();
    assert_eq!(report.deletion.auth_token_calls, 3);
    assert_eq!(report.requests_with(DELETION_STATUS_PATH, 401), 1);
}

#[tokio::test]
async fn a_401_to_a_renewed_token_is_rejected() {
    let heap = heap();
    let client = client(&heap, KEY);
    client.submit(&[identity("a")]).await.unwrap();
    // The cached token dies, and the key is revoked: the renewal itself is refused.
    heap.expire_tokens();
    heap.clear_deletion_keys();
    let err = client.submit(&[identity("b")]).await.unwrap_err();
    assert_eq!(
        err,
        DeletionApiError::Rejected {
            status: 401,
            message: "Invalid API key or app_id".into()
        }
    );
    // A 401 to the renewed token is final: no second renewal.
    heap.set_deletion_key(ACCOUNT, KEY);
    client.submit(&[identity("c0")]).await.unwrap();
    heap.reset_records();
    heap.push_faults([
        Fault::Status {
            code: 401,
            retry_after: None,
            body: r#"{"err":{"message":"token refused"}}"#.into(),
        },
        // auth_token, processed normally.
        Fault::Delay(Duration::ZERO),
        Fault::Status {
            code: 401,
            retry_after: None,
            body: r#"{"err":{"message":"still refused"}}"#.into(),
        },
    ]);
    let err = client.submit(&[identity("c")]).await.unwrap_err();
    assert_eq!(
        err,
        DeletionApiError::Rejected {
            status: 401,
            message: "still refused".into()
        }
    );
    let report = heap.report();
    assert_eq!(report.deletion.auth_token_calls, 1);
    assert_eq!(report.requests_with(AUTH_TOKEN_PATH, 200), 1);
    assert_eq!(report.requests_with(USER_DELETION_PATH, 401), 2);
    assert!(report.deletion.requests.is_empty());
    assert_eq!(heap.pending_faults(), 0);
}

#[tokio::test]
async fn a_bad_key_is_rejected_with_heaps_message() {
    let heap = heap();
    let client = client(&heap, "not-the-key");
    let err = client.submit(&[identity("a")]).await.unwrap_err();
    assert_eq!(
        err,
        DeletionApiError::Rejected {
            status: 401,
            message: "Invalid API key or app_id".into()
        }
    );
    assert!(!err.to_string().contains("not-the-key"), "{err}");
    assert!(!format!("{client:?}").contains("not-the-key"));
    assert_eq!(
        client.status("some-id").await.unwrap_err(),
        DeletionApiError::Rejected {
            status: 401,
            message: "Invalid API key or app_id".into()
        }
    );
    let report = heap.report();
    assert_eq!(report.requests_with(AUTH_TOKEN_PATH, 401), 2);
    assert_eq!(report.requests_with(USER_DELETION_PATH, 401), 0);
}

#[tokio::test]
async fn unavailable_and_throttled_are_transient() {
    let heap = heap();
    let client = client(&heap, KEY);
    heap.push_fault(Fault::status(503));
    match client.submit(&[identity("a")]).await.unwrap_err() {
        DeletionApiError::Transient {
            reason,
            retry_after,
            detail,
        } => {
            assert_eq!((reason, retry_after), ("status_5xx", None));
            assert!(detail.contains("503"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    // The token is in hand now; Heap throttles the submit.
    client.submit(&[identity("a")]).await.unwrap();
    heap.push_fault(Fault::Status {
        code: 429,
        retry_after: Some("7".into()),
        body: r#"{"err":{"message":"Too many requests"}}"#.into(),
    });
    assert_eq!(
        client.submit(&[identity("b")]).await.unwrap_err(),
        DeletionApiError::Transient {
            reason: "status_429",
            detail: "HTTP 429: Too many requests".into(),
            retry_after: Some(Duration::from_secs(7)),
        }
    );
    heap.push_fault(Fault::DropBeforeProcessing);
    match client.status("x").await.unwrap_err() {
        DeletionApiError::Transient { reason, .. } => assert_eq!(reason, "connect"),
        other => panic!("{other:?}"),
    }
    heap.push_fault(Fault::Delay(Duration::from_millis(500)));
    let impatient =
        HeapDeletionClient::new(&heap.base_url(), ACCOUNT, KEY, Duration::from_millis(100));
    match impatient.submit(&[identity("c")]).await.unwrap_err() {
        DeletionApiError::Transient { reason, .. } => assert_eq!(reason, "timeout"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn status_is_pending_then_complete_and_404_is_unknown() {
    let heap = heap();
    let client = client(&heap, KEY);
    let id = client.submit(&[identity("a")]).await.unwrap();
    assert_eq!(client.status(&id).await.unwrap(), RequestState::Pending);
    assert_eq!(client.status(&id).await.unwrap(), RequestState::Complete);
    heap.set_pending_polls(0);
    let at_once = client.submit(&[identity("b")]).await.unwrap();
    assert_eq!(
        client.status(&at_once).await.unwrap(),
        RequestState::Complete
    );
    for unknown in ["00000000-0000-0000-0000-000000000000", "a/b", ""] {
        assert_eq!(
            client.status(unknown).await.unwrap_err(),
            DeletionApiError::UnknownRequest,
            "{unknown:?}"
        );
    }
    assert_eq!(heap.report().requests_with(DELETION_STATUS_PATH, 404), 3);
}

#[tokio::test]
async fn ten_thousand_users_in_one_request_and_no_more() {
    let heap = heap();
    let client = client(&heap, KEY);
    let users: Vec<_> = (0..MAX_USERS_PER_REQUEST)
        .map(|i| {
            if i % 2 == 0 {
                identity(&format!("user-{i}@example.com"))
            } else {
                DeletionUser::UserId(i as u64)
            }
        })
        .collect();
    client.submit(&users).await.unwrap();
    let report = heap.report();
    assert_eq!(report.deletion.requests.len(), 1);
    assert_eq!(
        report.deletion.requests[0].users.len(),
        MAX_USERS_PER_REQUEST
    );
    assert_eq!(
        report.deletion.requests[0].users[9_999],
        standin::DeletionUser::UserId(9_999)
    );

    let mut over = users;
    over.push(DeletionUser::UserId(1));
    assert_eq!(
        client.submit(&over).await.unwrap_err(),
        DeletionApiError::BadBatch { users: 10_001 }
    );
    assert_eq!(
        client.submit(&[]).await.unwrap_err(),
        DeletionApiError::BadBatch { users: 0 }
    );
    assert_eq!(heap.report().requests_with(USER_DELETION_PATH, 201), 1);
}

#[tokio::test]
async fn a_bad_user_is_rejected_with_heaps_message() {
    let heap = heap();
    let client = client(&heap, KEY);
    let err = client
        .submit(&[identity(""), identity("ok")])
        .await
        .unwrap_err();
    match err {
        DeletionApiError::Rejected { status, message } => {
            assert_eq!(status, 400);
            assert!(message.starts_with("users[0]:"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}
