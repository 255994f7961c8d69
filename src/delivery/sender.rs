//! Where a lane's requests go: Heap ([`HeapClient`]), or the log (`--dry-run`, [`DryRun`]).
//! Tests of the delivery steps put a scripted Heap behind the same trait.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http::StatusCode;

use crate::heap::client::{HeapClient, HeapError, HeapResponse};

/// The future of one request.
pub type SendFuture<'a> =
    Pin<Box<dyn Future<Output = Result<HeapResponse, HeapError>> + Send + 'a>>;

/// Sends one Heap request: `path` is the endpoint, `body` the JSON body.
pub trait Sender: Send + Sync + std::fmt::Debug {
    fn post(&self, path: &'static str, body: Bytes) -> SendFuture<'_>;

    /// Whether what it accepted leaves the queue. A dry run only shows what would be sent:
    /// the events stay queued for a real run (product.md §9).
    fn consumes(&self) -> bool {
        true
    }
}

impl Sender for HeapClient {
    fn post(&self, path: &'static str, body: Bytes) -> SendFuture<'_> {
        Box::pin(HeapClient::post(self, path, body))
    }
}

/// Logs each request body instead of sending it and answers 200, so the whole flow runs
/// without a Heap account; the events it "sent" stay queued ([`Sender::consumes`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct DryRun;

impl Sender for DryRun {
    fn post(&self, path: &'static str, body: Bytes) -> SendFuture<'_> {
        tracing::info!(
            message = "Dry run: Heap request not sent.",
            endpoint = path,
            body = %String::from_utf8_lossy(&body),
        );
        Box::pin(std::future::ready(Ok(HeapResponse {
            status: StatusCode::OK,
            retry_after: None,
            body: "{}".into(),
        })))
    }

    fn consumes(&self) -> bool {
        false
    }
}
