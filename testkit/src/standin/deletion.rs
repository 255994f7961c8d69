//! The stand-in's Heap deletion (privacy) API, `heap-api.md` §(a) rows 7–9 and §(b) 7–9.
//!
//! * `POST /api/public/v0/auth_token`, HTTP Basic `app_id:api_key` → `200 {"access_token": ...}`.
//!   The accepted pairs are set with [`HeapStandIn::set_deletion_key`]; with none set, every
//!   authentication fails. A token lives [`DEFAULT_TOKEN_LIFETIME`] (Heap: "expires in 5
//!   minutes"), see [`HeapStandIn::set_token_lifetime`].
//! * `POST /api/public/v0/user_deletion`, `Authorization: Bearer <token>`, body
//!   `{"users": [{"user_id": N} | {"identity": "..."}]}` with 1..=10,000 users → `201
//!   {"deletion_request_location", "deletion_request_id", "status": "pending"}`.
//! * `GET /api/public/v0/deletion_status/<id>` (Bearer) → `200 {"deletion_request_id", "status"}`,
//!   `404` for an id the token's account never submitted. A request answers `pending` to its
//!   first [`HeapStandIn::set_pending_polls`] polls (default 1), then `complete`.
//!
//! Every error is JSON `{"err": {"message": "..."}}` (§(b) 7–9: "Errors carry an `err` object
//! with a human-readable `message`"). Faults and modes apply as on every other path.
//!
//! Assumptions (Heap does not document them):
//! * **(assumption)** A missing, unknown or expired token is `401`, checked before the body.
//! * **(assumption)** A body that is not `{"users": [...]}` exactly, a user that is not exactly
//!   one of `user_id` (a JSON integer in [0, 2^53)) or `identity` (1..=255 characters), an empty
//!   list or more than 10,000 users is `400`; so is a wrong method or a non-JSON
//!   `Content-Type` on `user_deletion`.
//! * **(assumption)** The status of a request submitted by another account is `404`.
//! * Requests are recorded per account (the `app_id` of the token), in arrival order, and read
//!   from [`Report::deletion`].

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

#[cfg(doc)]
use super::Report;
use super::{Answer, HeapStandIn, MAX_BODY_BYTES, Shared};
use crate::heap::{IDENTITY_MAX_CHARS, USER_ID_MAX};

/// `POST`: an access token for the privacy API (§(a) row 7).
pub const AUTH_TOKEN_PATH: &str = "/api/public/v0/auth_token";
/// `POST`: a user deletion request (§(a) row 8).
pub const USER_DELETION_PATH: &str = "/api/public/v0/user_deletion";
/// `GET {DELETION_STATUS_PATH}/<id>` (§(a) row 9). Requests are counted under this path,
/// without the id.
pub const DELETION_STATUS_PATH: &str = "/api/public/v0/deletion_status";
/// Users per deletion request (§(c)).
pub const MAX_DELETION_USERS: usize = 10_000;
/// Heap's token lifetime (§(c): "expires in 5 minutes").
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

/// One user of a deletion request, as Heap received it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DeletionUser {
    UserId(u64),
    Identity(String),
}

/// One accepted deletion request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletionRequest {
    /// The account (`app_id` of the Basic credentials that issued the token).
    pub app_id: String,
    pub request_id: String,
    /// Arrival time, relative to the stand-in's start.
    pub at: Duration,
    /// The users, in the order sent.
    pub users: Vec<DeletionUser>,
}

/// What the deletion endpoints saw.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeletionReport {
    /// Accepted deletion requests, in arrival order.
    pub requests: Vec<DeletionRequest>,
    /// `auth_token` requests processed (whatever the answer).
    pub auth_token_calls: u64,
    /// Tokens issued (`auth_token` answered `200`).
    pub tokens_issued: u64,
    /// `401` answers on any deletion path (bad credentials, unknown or expired token).
    pub unauthorized: u64,
    /// `400` answers on any deletion path.
    pub bad_requests: u64,
    /// `deletion_status` requests answered `200`.
    pub status_polls: u64,
}

impl DeletionReport {
    /// Every user of every accepted request, with its account, in arrival order.
    pub fn users(&self) -> impl Iterator<Item = (&str, &DeletionUser)> {
        self.requests
            .iter()
            .flat_map(|r| r.users.iter().map(move |u| (r.app_id.as_str(), u)))
    }
}

/// Settings and live state of the deletion API (kept by `reset_records`).
pub(super) struct DeletionState {
    /// Accepted (app_id, api_key) pairs.
    keys: Vec<(String, String)>,
    token_lifetime: Duration,
    pending_polls: u32,
    /// token → (app_id, expiry).
    tokens: HashMap<String, (String, Instant)>,
    /// request id → (app_id, polls still answered `pending`).
    requests: HashMap<String, (String, u32)>,
    random: RandomState,
    counter: AtomicU64,
}

impl Default for DeletionState {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            token_lifetime: DEFAULT_TOKEN_LIFETIME,
            pending_polls: 1,
            tokens: HashMap::new(),
            requests: HashMap::new(),
            random: RandomState::new(),
            counter: AtomicU64::new(0),
        }
    }
}

impl DeletionState {
    /// 128 unpredictable bits (a per-stand-in random hasher over a counter).
    fn random_u128(&self) -> u128 {
        let word = || {
            let mut h = self.random.build_hasher();
            h.write_u64(self.counter.fetch_add(1, Ordering::Relaxed));
            h.finish()
        };
        (u128::from(word()) << 64) | u128::from(word())
    }

    fn new_token(&self) -> String {
        format!("{:032x}", self.random_u128())
    }

    fn new_request_id(&self) -> String {
        let x = format!("{:032x}", self.random_u128());
        format!(
            "{}-{}-{}-{}-{}",
            &x[..8],
            &x[8..12],
            &x[12..16],
            &x[16..20],
            &x[20..]
        )
    }
}

impl HeapStandIn {
    /// Accepts `app_id:api_key` on `auth_token` (in addition to pairs set before).
    pub fn set_deletion_key(&self, app_id: impl Into<String>, api_key: impl Into<String>) {
        let pair = (app_id.into(), api_key.into());
        let mut inner = self.shared.lock();
        if !inner.deletion.keys.contains(&pair) {
            inner.deletion.keys.push(pair);
        }
    }

    /// Refuses every key from now on (tokens already issued stay valid until they expire).
    pub fn clear_deletion_keys(&self) {
        self.shared.lock().deletion.keys.clear();
    }

    /// Lifetime of tokens issued from now on (default [`DEFAULT_TOKEN_LIFETIME`]).
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.shared.lock().deletion.token_lifetime = lifetime;
    }

    /// Expires every token issued so far.
    pub fn expire_tokens(&self) {
        self.shared.lock().deletion.tokens.clear();
    }

    /// Status polls a request submitted from now on answers `pending` before `complete`
    /// (default 1; 0 = complete at once).
    pub fn set_pending_polls(&self, polls: u32) {
        self.shared.lock().deletion.pending_polls = polls;
    }

    /// Heap finishes every request submitted so far: their next status poll says `complete`.
    pub fn complete_deletions(&self) {
        for (_, polls) in self.shared.lock().deletion.requests.values_mut() {
            *polls = 0;
        }
    }

    /// The accepted deletion requests so far (also in [`Report::deletion`]).
    pub fn deletion_requests(&self) -> Vec<DeletionRequest> {
        self.shared.lock().rec.deletion.requests.clone()
    }
}

/// The path a request is counted under: the status path without its id.
pub(super) fn path_label(path: &str) -> &str {
    match path.strip_prefix(DELETION_STATUS_PATH) {
        Some(rest) if rest.starts_with('/') => DELETION_STATUS_PATH,
        _ => path,
    }
}

/// Whether `path` (already through [`path_label`]) is a deletion endpoint.
pub(super) fn is_deletion_path(path: &str) -> bool {
    matches!(
        path,
        AUTH_TOKEN_PATH | USER_DELETION_PATH | DELETION_STATUS_PATH
    )
}

impl Answer {
    fn json(status: StatusCode, body: &Value) -> Self {
        Answer {
            status,
            retry_after: None,
            content_type: "application/json",
            body: Bytes::from(body.to_string()),
        }
    }

    /// Heap's error shape.
    fn err(status: StatusCode, message: impl Into<String>) -> Self {
        Answer::json(status, &json!({"err": {"message": message.into()}}))
    }
}

/// Serves a deletion endpoint; `path` is the label from [`path_label`].
pub(super) async fn process(shared: &Shared, path: &str, req: Request<Incoming>) -> Answer {
    let answer = match path {
        AUTH_TOKEN_PATH => auth_token(shared, &req),
        USER_DELETION_PATH => user_deletion(shared, req).await,
        _ => deletion_status(shared, &req),
    };
    let mut inner = shared.lock();
    let rec = &mut inner.rec.deletion;
    match answer.status {
        StatusCode::UNAUTHORIZED => rec.unauthorized += 1,
        StatusCode::BAD_REQUEST => rec.bad_requests += 1,
        _ => {}
    }
    answer
}

fn auth_token(shared: &Shared, req: &Request<Incoming>) -> Answer {
    let mut inner = shared.lock();
    inner.rec.deletion.auth_token_calls += 1;
    if req.method() != Method::POST {
        return Answer::err(
            StatusCode::BAD_REQUEST,
            format!("method {} not allowed: auth_token takes POST", req.method()),
        );
    }
    let credentials = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| strip_scheme(v, "Basic"))
        .and_then(base64_decode)
        .and_then(|raw| String::from_utf8(raw).ok());
    let Some(app_id) = credentials
        .as_deref()
        .and_then(|c| c.split_once(':'))
        .filter(|(app_id, key)| {
            inner
                .deletion
                .keys
                .iter()
                .any(|(a, k)| a == app_id && k == key)
        })
        .map(|(app_id, _)| app_id.to_owned())
    else {
        return Answer::err(StatusCode::UNAUTHORIZED, "Invalid API key or app_id");
    };
    let token = inner.deletion.new_token();
    let expires = Instant::now() + inner.deletion.token_lifetime;
    inner
        .deletion
        .tokens
        .insert(token.clone(), (app_id, expires));
    inner.rec.deletion.tokens_issued += 1;
    Answer::json(StatusCode::OK, &json!({"access_token": token}))
}

/// The account of a valid bearer token, or the `401` to answer.
fn bearer_account(shared: &Shared, req: &Request<Incoming>) -> Result<String, Answer> {
    let Some(token) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| strip_scheme(v, "Bearer"))
    else {
        return Err(Answer::err(
            StatusCode::UNAUTHORIZED,
            "Missing bearer token: call auth_token first",
        ));
    };
    let mut inner = shared.lock();
    match inner.deletion.tokens.get(token) {
        Some((app_id, expires)) if Instant::now() < *expires => Ok(app_id.clone()),
        Some(_) => {
            inner.deletion.tokens.remove(token);
            Err(Answer::err(
                StatusCode::UNAUTHORIZED,
                "Access token expired: request a new one from auth_token",
            ))
        }
        None => Err(Answer::err(
            StatusCode::UNAUTHORIZED,
            "Invalid access token",
        )),
    }
}

async fn user_deletion(shared: &Shared, req: Request<Incoming>) -> Answer {
    let app_id = match bearer_account(shared, &req) {
        Ok(app_id) => app_id,
        Err(answer) => return answer,
    };
    if req.method() != Method::POST {
        return Answer::err(
            StatusCode::BAD_REQUEST,
            format!(
                "method {} not allowed: user_deletion takes POST",
                req.method()
            ),
        );
    }
    let json_body = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if !json_body {
        return Answer::err(
            StatusCode::BAD_REQUEST,
            "Content-Type must be application/json",
        );
    }
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) => return Answer::err(StatusCode::BAD_REQUEST, format!("cannot read body: {e}")),
    };
    let users = match parse_user_deletion(&body) {
        Ok(users) => users,
        Err(message) => return Answer::err(StatusCode::BAD_REQUEST, message),
    };
    let now = shared.epoch.elapsed();
    let mut inner = shared.lock();
    let request_id = inner.deletion.new_request_id();
    let polls = inner.deletion.pending_polls;
    inner
        .deletion
        .requests
        .insert(request_id.clone(), (app_id.clone(), polls));
    inner.rec.deletion.requests.push(DeletionRequest {
        app_id,
        request_id: request_id.clone(),
        at: now,
        users,
    });
    Answer::json(
        StatusCode::CREATED,
        &json!({
            "deletion_request_location":
                format!("{}{DELETION_STATUS_PATH}/{request_id}", shared.base_url),
            "deletion_request_id": request_id,
            "status": "pending",
        }),
    )
}

fn deletion_status(shared: &Shared, req: &Request<Incoming>) -> Answer {
    let app_id = match bearer_account(shared, req) {
        Ok(app_id) => app_id,
        Err(answer) => return answer,
    };
    if req.method() != Method::GET {
        return Answer::err(
            StatusCode::BAD_REQUEST,
            format!(
                "method {} not allowed: deletion_status takes GET",
                req.method()
            ),
        );
    }
    let id = req
        .uri()
        .path()
        .strip_prefix(DELETION_STATUS_PATH)
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or_default()
        .to_owned();
    let mut inner = shared.lock();
    let status = match inner.deletion.requests.get_mut(&id) {
        Some((owner, polls_left)) if *owner == app_id => {
            if *polls_left > 0 {
                *polls_left -= 1;
                "pending"
            } else {
                "complete"
            }
        }
        _ => {
            return Answer::err(
                StatusCode::NOT_FOUND,
                format!("Deletion request {id:?} not found"),
            );
        }
    };
    inner.rec.deletion.status_polls += 1;
    Answer::json(
        StatusCode::OK,
        &json!({"deletion_request_id": id, "status": status}),
    )
}

/// Checks a `user_deletion` body: `{"users": [1..=10,000 users]}` and nothing else.
pub fn parse_user_deletion(body: &[u8]) -> Result<Vec<DeletionUser>, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let Value::Object(mut top) = value else {
        return Err("body is not a JSON object".into());
    };
    let users = match top.remove("users") {
        Some(Value::Array(users)) => users,
        Some(_) => return Err("`users` must be an array".into()),
        None => return Err("`users` is missing".into()),
    };
    if let Some(field) = top.keys().next() {
        return Err(format!(
            "unknown top-level field `{field}`; the body is {{users}}"
        ));
    }
    if users.is_empty() || users.len() > MAX_DELETION_USERS {
        return Err(format!(
            "`users` has {} entries; Heap takes 1..={MAX_DELETION_USERS} per request",
            users.len()
        ));
    }
    users
        .iter()
        .enumerate()
        .map(|(i, u)| check_user(u).map_err(|e| format!("users[{i}]: {e}")))
        .collect()
}

fn check_user(user: &Value) -> Result<DeletionUser, String> {
    let Value::Object(fields) = user else {
        return Err("not a JSON object".into());
    };
    if fields.len() != 1 {
        return Err(format!(
            "must have exactly one of `user_id` and `identity`, has {} fields",
            fields.len()
        ));
    }
    match fields.iter().next() {
        Some((k, Value::Number(n))) if k == "user_id" => match n.as_u64() {
            Some(id) if id <= USER_ID_MAX => Ok(DeletionUser::UserId(id)),
            _ => Err(format!(
                "`user_id` must be an integer in [0, 2^53), got {n}"
            )),
        },
        Some((k, other)) if k == "user_id" => {
            Err(format!("`user_id` must be a JSON integer, got {other}"))
        }
        Some((k, Value::String(s))) if k == "identity" => {
            let chars = s.chars().count();
            if (1..=IDENTITY_MAX_CHARS).contains(&chars) {
                Ok(DeletionUser::Identity(s.clone()))
            } else {
                Err(format!(
                    "`identity` must have 1..={IDENTITY_MAX_CHARS} characters, has {chars}"
                ))
            }
        }
        Some((k, other)) if k == "identity" => {
            Err(format!("`identity` must be a string, got {other}"))
        }
        Some((k, _)) => Err(format!("unknown field `{k}`")),
        None => Err("empty object".into()),
    }
}

/// `"<scheme> <rest>"` → `rest` (scheme case-insensitive, as RFC 9110 says).
fn strip_scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (s, rest) = value.split_once(' ')?;
    s.eq_ignore_ascii_case(scheme)
        .then(|| rest.trim())
        .filter(|r| !r.is_empty())
}

/// Standard base64 (RFC 4648 §4) with padding; `None` if malformed.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn sextet(c: u8) -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let last = i + 1 == bytes.len() / 4;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | sextet(c)?;
        }
        n <<= 6 * pad as u32;
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&decoded[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests;
