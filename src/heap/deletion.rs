//! Heap's privacy API: deleting users on a Braze deletion request (product spec §7,
//! `heap-api.md` §(a) rows 7–9, §(b) 7–9).
//!
//! Unlike ingestion, this API is authenticated. `POST /api/public/v0/auth_token` with HTTP Basic
//! `account_app_id:api_key` (the account's *Main Production* environment id and a key an admin
//! generates) returns a bearer token that "expires in 5 minutes". The client caches it and
//! reuses it for at most [`TOKEN_REUSE`], comfortably inside that life, and renews it once when
//! Heap answers `401` to a cached token anyway (clock skew, a revoked token); concurrent callers
//! share one token. `POST /api/public/v0/user_deletion` takes up to
//! [`MAX_USERS_PER_REQUEST`] users and answers `201` with a `deletion_request_id`;
//! `GET /api/public/v0/deletion_status/<id>` says `pending` or `complete`, and `404` for an id
//! Heap does not know. Deletion is idempotent at Heap, so resubmitting after a lost answer (or
//! a `404`) is safe: the caller's ledger relies on this.
//!
//! The API key is a secret: it is kept only as a prebuilt `Authorization` value marked
//! sensitive, redacted from `Debug`, and never part of an error or a log line.
//!
//! What an answer means is [`DeletionApiError`]: `Transient` is retried with the delivery
//! backoff (and `Retry-After`, parsed by [`super::retry::parse_retry_after`]), `Rejected` waits
//! for a human (a wrong key, a refused body). This module knows Heap only: its types are its
//! own, and it imports nothing of `queue`, `currents`, `delivery` or `transform`.

use std::fmt;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode, header};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::client::{HeapClient, HeapError, HeapResponse};
use super::retry::parse_retry_after;

/// `POST`, Basic auth: a bearer token for the calls below.
pub const AUTH_TOKEN_PATH: &str = "/api/public/v0/auth_token";
/// `POST`, Bearer: submit users for deletion.
pub const USER_DELETION_PATH: &str = "/api/public/v0/user_deletion";
/// `GET {DELETION_STATUS_PATH}/<deletion_request_id>`, Bearer.
pub const DELETION_STATUS_PATH: &str = "/api/public/v0/deletion_status";
/// Users per `user_deletion` request (`heap-api.md` §(c)); callers batch.
pub const MAX_USERS_PER_REQUEST: usize = 10_000;
/// How long a token is reused: below Heap's documented 5-minute life, so a token is never sent
/// in its last minute.
pub const TOKEN_REUSE: Duration = Duration::from_secs(4 * 60);
/// Characters of Heap's error message (or body) kept in an error.
const MAX_MESSAGE_CHARS: usize = 512;

/// One user to delete: serializes as `{"identity": "..."}` or `{"user_id": N}` (a JSON number).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeletionUser {
    /// A Heap identity (case-sensitive, 1 to 255 characters).
    Identity(String),
    /// A Heap `user_id`, below 2^53.
    UserId(u64),
}

/// Where a submitted deletion stands at Heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestState {
    Pending,
    Complete,
}

/// Why a deletion call did not succeed. Never carries the API key or a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeletionApiError {
    /// Worth retrying with backoff: no answer (connect, timeout), 408, 429, 5xx, or a success
    /// whose body could not be read. `reason` is a retry-reason label (`connect`, `timeout`,
    /// `status_408`, `status_429`, `status_5xx`, `bad_answer`); `retry_after` comes from a
    /// `Retry-After` header (seconds or an HTTP date).
    #[error("{reason}: {detail}")]
    Transient {
        reason: &'static str,
        detail: String,
        retry_after: Option<Duration>,
    },
    /// Final until a human acts: a refused key (`401` from `auth_token`, or a second `401` on a
    /// renewed token), `400`, `403`, any other non-success answer. `message` is Heap's
    /// `err.message` when the body has one, else the status and the start of the body.
    #[error("Heap refused (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },
    /// `deletion_status` answered `404`: Heap does not know this request id (resubmitting the
    /// users is safe, deletion is idempotent at Heap).
    #[error("Heap does not know this deletion request")]
    UnknownRequest,
    /// A caller's bug: a request holds 1 to [`MAX_USERS_PER_REQUEST`] users. Nothing was sent.
    #[error("a deletion request holds 1 to {MAX_USERS_PER_REQUEST} users, not {users}")]
    BadBatch { users: usize },
}

/// A cached bearer token.
struct Token {
    /// `Bearer <access_token>`, marked sensitive.
    bearer: HeaderValue,
    /// When it was requested (not received: the conservative end).
    requested: Instant,
}

/// The client of Heap's deletion API for one account. Cheap to share behind an `Arc`; every
/// method takes `&self`.
pub struct HeapDeletionClient {
    http: HeapClient,
    account_app_id: String,
    /// `Basic base64(account_app_id:api_key)`, marked sensitive: the only copy of the key.
    basic: HeaderValue,
    /// [`TOKEN_REUSE`] unless set by [`Self::with_token_reuse`].
    token_reuse: Duration,
    token: Mutex<Option<Token>>,
}

impl fmt::Debug for HeapDeletionClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeapDeletionClient")
            .field("base_url", &self.http.base_url())
            .field("account_app_id", &self.account_app_id)
            .field("api_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct DeletionBody<'a> {
    users: &'a [DeletionUser],
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
}

#[derive(Deserialize)]
struct SubmitAnswer {
    deletion_request_id: String,
}

#[derive(Deserialize)]
struct StatusAnswer {
    status: String,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    err: ErrorMessage,
}

#[derive(Deserialize)]
struct ErrorMessage {
    message: String,
}

impl HeapDeletionClient {
    /// `base_url` without a trailing slash (e.g. `https://heapanalytics.com`); `account_app_id`
    /// is the account's *Main Production* environment id; `timeout` bounds each HTTP exchange.
    pub fn new(base_url: &str, account_app_id: &str, api_key: &str, timeout: Duration) -> Self {
        let credentials = base64(format!("{account_app_id}:{api_key}").as_bytes());
        // Base64 output is always a valid header value.
        let mut basic = HeaderValue::from_str(&format!("Basic {credentials}"))
            .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
        basic.set_sensitive(true);
        Self {
            http: HeapClient::new(base_url, timeout),
            account_app_id: account_app_id.to_owned(),
            basic,
            token_reuse: TOKEN_REUSE,
            token: Mutex::new(None),
        }
    }

    /// Reuses a token for at most `reuse` instead of [`TOKEN_REUSE`] (tests; a shorter-lived
    /// token).
    pub fn with_token_reuse(mut self, reuse: Duration) -> Self {
        self.token_reuse = reuse;
        self
    }

    pub fn account_app_id(&self) -> &str {
        &self.account_app_id
    }

    /// Submits one deletion request and returns Heap's `deletion_request_id`. `users` holds 1
    /// to [`MAX_USERS_PER_REQUEST`] users, else [`DeletionApiError::BadBatch`] and nothing is
    /// sent.
    pub async fn submit(&self, users: &[DeletionUser]) -> Result<String, DeletionApiError> {
        if users.is_empty() || users.len() > MAX_USERS_PER_REQUEST {
            return Err(DeletionApiError::BadBatch { users: users.len() });
        }
        let body = serde_json::to_vec(&DeletionBody { users })
            .map_err(|_| DeletionApiError::BadBatch { users: users.len() })?;
        let resp = self
            .authorized(Method::POST, USER_DELETION_PATH, Some(Bytes::from(body)))
            .await?;
        if !resp.status.is_success() {
            return Err(refusal(&resp));
        }
        match serde_json::from_str::<SubmitAnswer>(&resp.body) {
            Ok(answer) if !answer.deletion_request_id.is_empty() => Ok(answer.deletion_request_id),
            _ => Err(bad_answer(format!(
                "HTTP {} without a deletion_request_id: {}",
                resp.status.as_u16(),
                bounded(&resp.body)
            ))),
        }
    }

    /// Where deletion request `request_id` stands.
    pub async fn status(&self, request_id: &str) -> Result<RequestState, DeletionApiError> {
        let path = format!("{DELETION_STATUS_PATH}/{}", encode_segment(request_id));
        let resp = self.authorized(Method::GET, &path, None).await?;
        if resp.status == StatusCode::NOT_FOUND {
            return Err(DeletionApiError::UnknownRequest);
        }
        if !resp.status.is_success() {
            return Err(refusal(&resp));
        }
        match serde_json::from_str::<StatusAnswer>(&resp.body) {
            Ok(answer) if answer.status == "pending" => Ok(RequestState::Pending),
            Ok(answer) if answer.status == "complete" => Ok(RequestState::Complete),
            _ => Err(bad_answer(format!(
                "HTTP {} without a known status: {}",
                resp.status.as_u16(),
                bounded(&resp.body)
            ))),
        }
    }

    /// Sends with the cached token; on a `401` to a token that was cached (not just issued),
    /// renews it once and sends again. The answer is returned whatever its status.
    async fn authorized(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<HeapResponse, DeletionApiError> {
        let (bearer, fresh) = self.bearer(None).await?;
        let resp = self
            .with_bearer(method.clone(), path, &bearer, body.clone())
            .await?;
        if resp.status != StatusCode::UNAUTHORIZED || fresh {
            return Ok(resp);
        }
        tracing::debug!(
            message = "Heap refused a cached deletion API token; renewing it.",
            account_app_id = %self.account_app_id,
        );
        let (bearer, _) = self.bearer(Some(&bearer)).await?;
        self.with_bearer(method, path, &bearer, body).await
    }

    async fn with_bearer(
        &self,
        method: Method,
        path: &str,
        bearer: &HeaderValue,
        body: Option<Bytes>,
    ) -> Result<HeapResponse, DeletionApiError> {
        let headers: [(HeaderName, HeaderValue); 1] = [(header::AUTHORIZATION, bearer.clone())];
        self.http
            .send(method, path, &headers, body)
            .await
            .map_err(no_answer)
    }

    /// The token to use and whether it was just issued. A cached token is reused while it is
    /// younger than the reuse time ([`TOKEN_REUSE`]) and is not `refused` (the one Heap just answered `401`
    /// to); otherwise a new one is requested. The lock is held across the request, so
    /// concurrent callers wait for one renewal instead of each making their own.
    async fn bearer(
        &self,
        refused: Option<&HeaderValue>,
    ) -> Result<(HeaderValue, bool), DeletionApiError> {
        let mut cache = self.token.lock().await;
        if let Some(token) = cache.as_ref()
            && token.requested.elapsed() < self.token_reuse
            && refused != Some(&token.bearer)
        {
            return Ok((token.bearer.clone(), false));
        }
        *cache = None;
        let requested = Instant::now();
        let bearer = self.fetch_token().await?;
        *cache = Some(Token {
            bearer: bearer.clone(),
            requested,
        });
        Ok((bearer, true))
    }

    async fn fetch_token(&self) -> Result<HeaderValue, DeletionApiError> {
        let headers: [(HeaderName, HeaderValue); 1] = [(header::AUTHORIZATION, self.basic.clone())];
        let resp = self
            .http
            .send(Method::POST, AUTH_TOKEN_PATH, &headers, None)
            .await
            .map_err(no_answer)?;
        if !resp.status.is_success() {
            return Err(refusal(&resp));
        }
        // The body holds the token: it never goes into an error.
        let token = serde_json::from_str::<TokenAnswer>(&resp.body)
            .ok()
            .filter(|t| !t.access_token.is_empty())
            .and_then(|t| HeaderValue::from_str(&format!("Bearer {}", t.access_token)).ok());
        let Some(mut bearer) = token else {
            return Err(bad_answer(format!(
                "auth_token answered HTTP {} without a usable access_token",
                resp.status.as_u16()
            )));
        };
        bearer.set_sensitive(true);
        Ok(bearer)
    }
}

fn no_answer(e: HeapError) -> DeletionApiError {
    DeletionApiError::Transient {
        reason: e.reason(),
        detail: e.to_string(),
        retry_after: None,
    }
}

fn bad_answer(detail: String) -> DeletionApiError {
    DeletionApiError::Transient {
        reason: "bad_answer",
        detail,
        retry_after: None,
    }
}

/// A non-success answer (other than the `404` of `deletion_status`): transient or final.
fn refusal(resp: &HeapResponse) -> DeletionApiError {
    let status = resp.status.as_u16();
    let reason = match status {
        408 => "status_408",
        429 => "status_429",
        500..=599 => "status_5xx",
        _ => {
            return DeletionApiError::Rejected {
                status,
                message: heap_message(resp).unwrap_or_else(|| describe(resp)),
            };
        }
    };
    DeletionApiError::Transient {
        reason,
        detail: match heap_message(resp) {
            Some(message) => format!("HTTP {status}: {message}"),
            None => describe(resp),
        },
        retry_after: resp
            .retry_after
            .as_ref()
            .and_then(|v| parse_retry_after(v, SystemTime::now())),
    }
}

/// Heap's `err.message`, if the body has one.
fn heap_message(resp: &HeapResponse) -> Option<String> {
    serde_json::from_str::<ErrorAnswer>(&resp.body)
        .ok()
        .map(|answer| bounded(&answer.err.message))
}

/// `HTTP <status>` and the start of the body.
fn describe(resp: &HeapResponse) -> String {
    let status = resp.status.as_u16();
    match bounded(&resp.body) {
        body if body.is_empty() => format!("HTTP {status}"),
        body => format!("HTTP {status}: {body}"),
    }
}

/// At most [`MAX_MESSAGE_CHARS`] characters of `text`, trimmed.
fn bounded(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters: a request id stays one path
/// segment whatever it holds.
fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Standard base64 with padding (RFC 4648 §4), for the Basic credentials.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_serialize_as_heap_documents() {
        let users = [
            DeletionUser::UserId(1),
            DeletionUser::Identity("alice@email.com".into()),
        ];
        assert_eq!(
            serde_json::to_string(&DeletionBody { users: &users }).unwrap(),
            r#"{"users":[{"user_id":1},{"identity":"alice@email.com"}]}"#
        );
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn request_ids_stay_one_segment() {
        assert_eq!(
            encode_segment("3f2c9a1e-0b7d-4c55-9e1a-2d3f4a5b6c7d"),
            "3f2c9a1e-0b7d-4c55-9e1a-2d3f4a5b6c7d"
        );
        assert_eq!(encode_segment("a/b?c d%"), "a%2Fb%3Fc%20d%25");
    }

    #[test]
    fn answers_are_classified() {
        let resp = |code: u16, retry_after: Option<&'static str>, body: &str| HeapResponse {
            status: StatusCode::from_u16(code).unwrap(),
            retry_after: retry_after.map(HeaderValue::from_static),
            body: body.to_owned(),
        };
        assert_eq!(
            refusal(&resp(
                401,
                None,
                r#"{"err":{"message":"Invalid API key or app_id"}}"#
            )),
            DeletionApiError::Rejected {
                status: 401,
                message: "Invalid API key or app_id".into()
            }
        );
        assert_eq!(
            refusal(&resp(403, None, "<html>nope</html>")),
            DeletionApiError::Rejected {
                status: 403,
                message: "HTTP 403: <html>nope</html>".into()
            }
        );
        assert_eq!(
            refusal(&resp(400, None, "")),
            DeletionApiError::Rejected {
                status: 400,
                message: "HTTP 400".into()
            }
        );
        for (code, reason) in [
            (408, "status_408"),
            (429, "status_429"),
            (500, "status_5xx"),
            (503, "status_5xx"),
        ] {
            match refusal(&resp(code, Some("7"), "busy")) {
                DeletionApiError::Transient {
                    reason: r,
                    retry_after,
                    detail,
                } => {
                    assert_eq!(r, reason);
                    assert_eq!(retry_after, Some(Duration::from_secs(7)));
                    assert_eq!(detail, format!("HTTP {code}: busy"));
                }
                other => panic!("{code}: {other:?}"),
            }
        }
        let long = "x".repeat(5000);
        match refusal(&resp(400, None, &long)) {
            DeletionApiError::Rejected { message, .. } => {
                assert!(message.chars().count() < MAX_MESSAGE_CHARS + 20);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn debug_redacts_the_key() {
        let client = HeapDeletionClient::new(
            "http://127.0.0.1:9",
            "1234",
            "very-secret-key",
            Duration::from_secs(1),
        );
        let debug = format!("{client:?}");
        assert!(debug.contains("1234"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
        assert!(!debug.contains("very-secret-key"), "{debug}");
        assert!(!debug.contains(&base64(b"1234:very-secret-key")), "{debug}");
    }
}
