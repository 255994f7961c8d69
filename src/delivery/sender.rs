//! Where requests go: Heap, or the log (`--dry-run`).

use bytes::Bytes;
use http::StatusCode;

use crate::heap::client::{HeapClient, HeapError, HeapResponse};

#[derive(Clone)]
pub enum Sender {
    Heap(Box<HeapClient>),
    /// Logs each request body instead of sending it and answers 200, so the whole flow runs
    /// without a Heap account.
    DryRun,
}

impl Sender {
    pub async fn post(&self, path: &str, body: Bytes) -> Result<HeapResponse, HeapError> {
        match self {
            Sender::Heap(client) => client.post(path, body).await,
            Sender::DryRun => {
                tracing::info!(
                    message = "Dry run: Heap request not sent.",
                    endpoint = path,
                    body = %String::from_utf8_lossy(&body),
                );
                Ok(HeapResponse {
                    status: StatusCode::OK,
                    retry_after: None,
                    body: "{}".into(),
                })
            }
        }
    }
}
