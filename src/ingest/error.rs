//! `IngestError`: every way `POST /currents` can fail, mapped to a status in one place.
//!
//! The mapping follows Braze's reactions (braze-currents.md §(a)): 400 only for a batch that is
//! really malformed (Braze re-sends its events one by one and drops any that fail again), 401
//! only for credentials (Braze halts the integration), 413 for size (Braze splits), and 503 with
//! `Retry-After` for everything transient (Braze retries with backoff).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde_json::json;

use crate::currents::{BatchError, EventError};
use crate::queue::AppendError;

/// At most this many bad events are listed in a 400 body; the count is always complete.
const MAX_LISTED_ERRORS: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("unsupported Content-Encoding {0:?}; use gzip, deflate or none")]
    UnsupportedEncoding(String),
    #[error("the compressed body could not be decoded: {0}")]
    CorruptBody(String),
    #[error("the body is larger than the limit of {limit} bytes (compressed or decompressed)")]
    TooLarge { limit: u64 },
    #[error("the request body could not be read completely: {0}")]
    BodyIncomplete(String),
    #[error("{0}")]
    Malformed(String),
    #[error("{} of {total} events failed validation; nothing was stored", .errors.len())]
    InvalidEvents {
        total: usize,
        errors: Vec<(usize, EventError)>,
    },
    #[error(transparent)]
    Store(#[from] AppendError),
    #[error("the server is shutting down")]
    Draining,
    #[error("the server is busy with other requests; retry later")]
    Saturated,
}

impl From<super::buffer::NoRoom> for IngestError {
    fn from(e: super::buffer::NoRoom) -> Self {
        match e {
            super::buffer::NoRoom::Saturated => IngestError::Saturated,
            super::buffer::NoRoom::Closed => IngestError::Draining,
        }
    }
}

impl From<BatchError> for IngestError {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::Malformed(_) => IngestError::Malformed(e.to_string()),
            BatchError::Invalid { total, errors } => IngestError::InvalidEvents { total, errors },
        }
    }
}

impl IngestError {
    pub fn status(&self) -> StatusCode {
        match self {
            IngestError::Unauthorized => StatusCode::UNAUTHORIZED,
            IngestError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IngestError::CorruptBody(_)
            | IngestError::Malformed(_)
            | IngestError::InvalidEvents { .. } => StatusCode::BAD_REQUEST,
            IngestError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            IngestError::BodyIncomplete(_) => StatusCode::REQUEST_TIMEOUT,
            IngestError::Store(_) | IngestError::Draining | IngestError::Saturated => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// The `outcome` metric label (one of `metrics::OUTCOMES`).
    pub fn outcome(&self) -> &'static str {
        match self {
            IngestError::Unauthorized => "unauthorized",
            IngestError::UnsupportedEncoding(_) => "unsupported_encoding",
            IngestError::CorruptBody(_) => "corrupt_body",
            IngestError::TooLarge { .. } => "too_large",
            IngestError::BodyIncomplete(_) => "body_timeout",
            IngestError::Malformed(_) => "malformed",
            IngestError::InvalidEvents { .. } => "invalid_events",
            IngestError::Store(AppendError::OverQuota { .. }) => "over_quota",
            IngestError::Store(AppendError::DiskFull) => "disk_full",
            IngestError::Store(AppendError::Busy) => "store_busy",
            IngestError::Store(AppendError::Unavailable(_) | AppendError::Closed) => {
                "store_unavailable"
            }
            IngestError::Draining => "draining",
            IngestError::Saturated => "saturated",
        }
    }

    /// The `reason` label for events refused after parsing (one of `metrics::REJECT_REASONS`).
    pub fn reject_reason(&self) -> Option<&'static str> {
        match self {
            IngestError::Store(AppendError::OverQuota { .. }) => Some("over_quota"),
            IngestError::Store(AppendError::DiskFull) => Some("disk_full"),
            IngestError::Store(AppendError::Busy) => Some("store_busy"),
            IngestError::Store(AppendError::Unavailable(_) | AppendError::Closed) => {
                Some("store_unavailable")
            }
            _ => None,
        }
    }

    /// Seconds Braze should wait, for the transient (503) cases.
    fn retry_after(&self) -> Option<u32> {
        match self {
            IngestError::Store(AppendError::OverQuota { .. } | AppendError::DiskFull) => Some(60),
            IngestError::Store(AppendError::Busy) => Some(1),
            IngestError::Store(_) | IngestError::Draining | IngestError::Saturated => Some(5),
            _ => None,
        }
    }

    pub fn to_response(&self) -> Response<Full<Bytes>> {
        let mut body = json!({ "error": self.outcome(), "message": self.to_string() });
        if let IngestError::InvalidEvents { total, errors } = self {
            body["event_count"] = json!(total);
            body["invalid_count"] = json!(errors.len());
            body["invalid_events"] = errors
                .iter()
                .take(MAX_LISTED_ERRORS)
                .map(|(index, reason)| json!({ "index": index, "reason": reason.to_string() }))
                .collect();
        }
        let mut resp = json_response(self.status(), &body);
        if let Some(secs) = self.retry_after() {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(self, IngestError::Unauthorized) {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
