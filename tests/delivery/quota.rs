//! The disk quota under fire: while Heap is down the backlog reaches `--max-queue-bytes` and
//! ingest answers 503 `over_quota` (nothing stored from those batches); when Heap is back and
//! the backlog drains, the same batches are accepted again, and every acknowledged event
//! reaches Heap exactly once.

use std::time::Duration;

use bytes::Bytes;
use currents_heap::config::SettingsArgs;
use http::{Method, StatusCode};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_sheds_load_at_the_quota_and_recovers_when_the_backlog_drains() {
    let h = TestApp::start(
        heap_budgets(),
        SettingsArgs {
            // Room for roughly 40 of the test's ~480-byte events.
            max_queue_bytes: Some("20000".into()),
            ..base_args()
        },
    )
    .await;
    h.heap().set_down(true);

    let (events, ids) = sends("quota", 200, 20);
    let mut acknowledged: Vec<String> = Vec::new();
    let mut refused = Vec::new();
    for (chunk, chunk_ids) in events.chunks(10).zip(ids.chunks(10)) {
        let reply = h
            .request_authed(Method::POST, "/currents", Bytes::from(batch(chunk)))
            .await;
        match reply.status {
            StatusCode::OK => acknowledged.extend(chunk_ids.iter().cloned()),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(String::from_utf8_lossy(&reply.body).contains("over_quota"));
                refused.push((chunk.to_vec(), chunk_ids.to_vec()));
            }
            other => panic!(
                "unexpected {other}: {}",
                String::from_utf8_lossy(&reply.body)
            ),
        }
    }
    assert!(
        !acknowledged.is_empty() && !refused.is_empty(),
        "the quota was never reached"
    );
    assert_eq!(
        h.queued_count() as usize,
        acknowledged.len(),
        "a refused batch left a trace"
    );
    assert!(
        h.metric(r#"currents_heap_ingest_requests_total{outcome="over_quota"}"#)
            .await
            >= 1.0
    );

    // Heap is back: the backlog drains and the refused batches (Braze retries them) go in.
    h.heap().set_down(false);
    h.wait_delivered(&acknowledged, Duration::from_secs(30))
        .await;
    for (chunk, chunk_ids) in refused {
        let mut accepted = false;
        for _ in 0..200 {
            let reply = h
                .request_authed(Method::POST, "/currents", Bytes::from(batch(&chunk)))
                .await;
            if reply.status == StatusCode::OK {
                accepted = true;
                break;
            }
            assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            accepted,
            "a batch was still refused after the backlog drained"
        );
        acknowledged.extend(chunk_ids);
    }
    let report = h
        .wait_delivered(&acknowledged, Duration::from_secs(30))
        .await;
    report
        .check_exactly_once(acknowledged.iter().map(String::as_str))
        .unwrap();
    assert_eq!(acknowledged.len(), ids.len());
}
