//! A Heap stand-in: a local HTTP server that plays Heap's ingestion API for the test suite and
//! the load harness.
//!
//! **This is not Heap.** It models only what `heap-api.md` documents about the two ingestion
//! endpoints the forwarder calls and the deletion API, plus a few assumptions of ours where the documentation is silent. Every
//! assumption is marked **(assumption)** below; a test that passes against the stand-in proves
//! that we honour Heap's *documented* contract, not that Heap behaves like this.
//!
//! What it does:
//!
//! * **Shapes** (`heap-api.md` §(b), (c)): `POST /api/track` takes the bulk envelope
//!   `{"app_id": "<digits>", "events": [1..=1000 items]}`, `POST /api/add_user_properties` takes
//!   `{"app_id": "<digits>", "users": [1..=1000 items]}`. Each item must pass
//!   [`check_track_item`] / [`check_user_properties_item`], the stand-in's own encoding of
//!   Heap's documented item limits ([`crate::heap`], written from `heap-api.md` and independent
//!   of the product's validators, so it catches a bug in those). Anything else is a `400` with a short `text/plain` body saying what
//!   is wrong, and is counted as a shape violation. An unknown path is a `404`. Success is
//!   `200` with the documented body `{}`.
//! * **Records** every accepted item with its arrival time (per request, relative to the
//!   stand-in's start): track items per `app_id`, occurrences per `idempotency_key`, user
//!   property items, per-app and per-identity counts.
//! * **Budgets** (`heap-api.md` §(c): 15,000 events/min per app_id, 1000 events/min per identity
//!   per app_id): computes exactly the largest number of track events that arrived in any
//!   window `(t − W, t]`, per app and per identity, and with [`StandInConfig::enforce`] answers
//!   `429` to a request that would push either window over its budget. The same windows are
//!   also kept over every track request it *received* (the *offered* windows: accepted, refused
//!   for a budget or a poisoned key alike), so a sender that tries to exceed a budget shows in
//!   the report even when enforcement refused every excess request.
//! * **Faults**, scripted at run time: a FIFO of [`Fault`]s (one consumed per request), a sticky
//!   [`Mode`] (down / dropping connections) and poisoned idempotency keys.
//!
//! Assumptions and deliberate strictness (none of this is documented by Heap):
//!
//! * **(assumption)** A budget breach is answered `429` without `Retry-After`, and the rejected
//!   request's events neither count against the budget nor are recorded. Heap documents the
//!   budgets but not the answer on breach (`heap-api.md` §(g) 1).
//! * **(assumption)** One bad item rejects the whole bulk request (§(g) 2).
//! * **(stricter than Heap)** Only the bulk forms are accepted; a single-event body is a `400`,
//!   because the forwarder only sends bulk requests. Unknown fields (top level or per item,
//!   including the documented-for-single-track `session_id`) are refused, as are array property
//!   values (Heap joins them with `||`) and placeholder identities such as `"null"` (Heap would
//!   accept them and merge users irreversibly). `timestamp` and `idempotency_key` are required
//!   on every track item because the forwarder always sends them.
//! * **(assumption)** `Content-Type` must be `application/json` and no `Content-Encoding` other
//!   than `identity` is accepted. A non-`POST` method on a known path is a `400`.
//! * **(stand-in guard)** Bodies over [`MAX_BODY_BYTES`] get `413`; Heap documents no size limit.
//! * **(assumption)** User-property requests have no event budget (none is documented for bulk);
//!   the 30 requests / 30 s rule applies to the single-item endpoints, which we do not call.
//! * The per-identity budget key is [`TrackItem::budget_key`]: the identity, else the `user_id`.
//!
//! Heap's deletion (privacy) API, `auth_token`, `user_deletion` and `deletion_status`, lives in
//! the submodule `deletion` (its own docs list its rules and assumptions); its requests are
//! read from [`Report::deletion`].
//!
//! The stand-in needs a Tokio runtime: [`HeapStandIn::start`] must be called inside one.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod deletion;

pub use deletion::{
    AUTH_TOKEN_PATH, DEFAULT_TOKEN_LIFETIME, DELETION_STATUS_PATH, DeletionReport, DeletionRequest,
    DeletionUser, MAX_DELETION_USERS, USER_DELETION_PATH, parse_user_deletion,
};

use crate::heap::{
    MAX_BULK_ITEMS, TRACK_PATH, TrackItem, USER_PROPERTIES_PATH, UserPropertiesItem,
    check_track_item, check_user_properties_item,
};

/// Largest request body the stand-in reads (its own guard; Heap documents no limit).
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// Shape violations kept verbatim in the report (all of them are counted).
const MAX_KEPT_VIOLATIONS: usize = 1000;

/// Budgets of the stand-in. [`StandInConfig::heap`] (also the `Default`) holds Heap's documented
/// numbers: 15,000 events per app and 1000 events per identity per 60 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandInConfig {
    /// Track events per `app_id` per window.
    pub events_per_window: u32,
    /// Track events per (`app_id`, identity or `user_id`) per window.
    pub identity_events_per_window: u32,
    /// Window length `W`; windows are `(t − W, t]`.
    pub window: Duration,
    /// Answer `429` (and record nothing) when a request would exceed a budget. When `false`
    /// the budgets are only measured.
    pub enforce: bool,
}

impl StandInConfig {
    /// Heap's documented budgets (`heap-api.md` §(c)), enforced.
    pub fn heap() -> Self {
        Self {
            events_per_window: 15_000,
            identity_events_per_window: 1000,
            window: Duration::from_secs(60),
            enforce: true,
        }
    }
}

impl Default for StandInConfig {
    fn default() -> Self {
        Self::heap()
    }
}

/// A scripted misbehaviour, consumed by exactly one request (whatever its path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer `code` (with `Retry-After` if given, and `body`) without looking at the request.
    Status {
        code: u16,
        retry_after: Option<String>,
        body: String,
    },
    /// Process the request normally (items are recorded at once) but answer only after this
    /// long: a slow Heap.
    Delay(Duration),
    /// Process normally (record the items), then answer `code` anyway: Heap committed the
    /// events but a gateway failed the response.
    StatusAfterProcessing {
        code: u16,
        retry_after: Option<String>,
        body: String,
    },
    /// Process normally (record the items), then close the connection without an answer:
    /// a lost acknowledgement.
    DropAfterProcessing,
    /// Close the connection without reading the request or answering; nothing is recorded.
    DropBeforeProcessing,
}

impl Fault {
    /// `Fault::Status` with no `Retry-After` and a short body.
    pub fn status(code: u16) -> Self {
        Fault::Status {
            code,
            retry_after: None,
            body: format!("stand-in fault: {code}"),
        }
    }
}

/// The sticky behaviour applied when no [`Fault`] is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Heap as documented.
    #[default]
    Normal,
    /// Every request is answered `503` without being processed.
    Down,
    /// Every connection carrying a request is closed without an answer.
    DropConnections,
}

/// One request refused for its shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeViolation {
    pub path: String,
    pub status: u16,
    pub reason: String,
}

/// The events of one accepted bulk track request.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackBatch {
    pub app_id: String,
    /// Arrival time, relative to the stand-in's start.
    pub at: Duration,
    pub events: Vec<TrackItem>,
}

/// The users of one accepted bulk add-user-properties request.
#[derive(Debug, Clone, PartialEq)]
pub struct UserPropertiesBatch {
    pub app_id: String,
    /// Arrival time, relative to the stand-in's start.
    pub at: Duration,
    pub users: Vec<UserPropertiesItem>,
}

/// The fullest window seen: `events` track events arrived in `(ends_at − W, ends_at]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WindowPeak {
    pub events: u32,
    pub app_id: String,
    /// The identity (or `user_id`) for a per-identity peak; `None` for a per-app peak.
    pub identity: Option<String>,
    pub ends_at: Duration,
}

/// What one `app_id` received.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AppReport {
    /// Accepted track events.
    pub events: u64,
    /// Accepted user-property items.
    pub user_property_items: u64,
    /// Accepted track events per identity (or `user_id`).
    pub identities: HashMap<String, u64>,
    /// The fullest window of this app.
    pub max_window: WindowPeak,
    /// The fullest per-identity window within this app.
    pub max_identity_window: WindowPeak,
    /// The fullest window of this app over every track request received (accepted or not).
    pub max_offered_window: WindowPeak,
    /// The fullest per-identity window within this app over every track request received.
    pub max_offered_identity_window: WindowPeak,
}

/// A snapshot of everything the stand-in saw. Cheap: batches are shared, not copied.
#[derive(Debug, Clone)]
pub struct Report {
    pub config: StandInConfig,
    /// Answered requests by (path, status).
    pub requests: BTreeMap<(String, u16), u64>,
    /// Requests whose connection was closed without an answer, by path.
    pub dropped_connections: BTreeMap<String, u64>,
    /// Requests refused for their shape (the first 1000; all are counted below).
    pub shape_violations: Vec<ShapeViolation>,
    /// All requests refused for their shape.
    pub shape_violation_count: u64,
    /// Requests answered `429` because they would have exceeded a budget.
    pub limit_rejections: u64,
    /// Requests answered `400` because they carried a poisoned key.
    pub poison_rejections: u64,
    /// Queued faults consumed so far.
    pub faults_injected: u64,
    /// Accepted track events, all apps.
    pub events_accepted: u64,
    /// Accepted user-property items, all apps.
    pub user_property_items_accepted: u64,
    pub apps: BTreeMap<String, AppReport>,
    /// Occurrences of each `idempotency_key` among accepted track events, all apps.
    pub keys: HashMap<String, u32>,
    pub track_batches: Vec<Arc<TrackBatch>>,
    pub user_property_batches: Vec<Arc<UserPropertiesBatch>>,
    /// The fullest per-app window over all apps.
    pub max_app_window: WindowPeak,
    /// The fullest per-identity window over all apps and identities.
    pub max_identity_window: WindowPeak,
    /// The fullest per-app window over every track request received, accepted or refused
    /// (for a budget or a poisoned key): what the sender *tried* to put in a window. With
    /// enforcement on, [`Self::max_app_window`] cannot exceed the budget; this can.
    pub max_offered_app_window: WindowPeak,
    /// The fullest per-identity window over every track request received, accepted or not.
    pub max_offered_identity_window: WindowPeak,
    /// The well-shaped track requests refused (429 for a budget, 400 for a poisoned key), with
    /// their arrival: the part of the offered windows that [`Self::track_batches`] lacks.
    pub refused_track_batches: Vec<Arc<TrackBatch>>,
    /// Arrival of the first and the last accepted track request.
    pub first_arrival: Option<Duration>,
    pub last_arrival: Option<Duration>,
    /// The largest request body received, by path (whatever the answer; a body over the
    /// stand-in's own guard counts as `MAX_BODY_BYTES + 1`).
    pub largest_body: BTreeMap<String, usize>,
    /// The deletion API: accepted requests and counts.
    pub deletion: DeletionReport,
}

impl Report {
    /// Every idempotency key received at least once.
    pub fn received_keys(&self) -> BTreeSet<&str> {
        self.keys.keys().map(String::as_str).collect()
    }

    /// Keys received more than once, with their occurrence counts.
    pub fn duplicates(&self) -> BTreeMap<&str, u32> {
        self.keys
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(k, n)| (k.as_str(), *n))
            .collect()
    }

    /// Surplus deliveries: the sum over keys of (occurrences − 1).
    pub fn duplicate_deliveries(&self) -> u64 {
        self.keys.values().map(|n| u64::from(n - 1)).sum()
    }

    /// Occurrences of one key (0 if never received).
    pub fn key_count(&self, key: &str) -> u32 {
        self.keys.get(key).copied().unwrap_or(0)
    }

    /// `Ok` if every expected key arrived exactly once and no other key arrived; otherwise a
    /// message listing (a sample of) the missing, duplicated and unexpected keys.
    pub fn check_exactly_once<'a>(
        &self,
        expected: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), String> {
        let expected: HashSet<&str> = expected.into_iter().collect();
        let mut missing: Vec<&str> = expected
            .iter()
            .copied()
            .filter(|k| !self.keys.contains_key(*k))
            .collect();
        let mut duplicated: Vec<(&str, u32)> = self.duplicates().into_iter().collect();
        let mut unexpected: Vec<&str> = self
            .keys
            .keys()
            .map(String::as_str)
            .filter(|k| !expected.contains(k))
            .collect();
        if missing.is_empty() && duplicated.is_empty() && unexpected.is_empty() {
            return Ok(());
        }
        missing.sort_unstable();
        duplicated.sort_unstable();
        unexpected.sort_unstable();
        Err(format!(
            "{} missing (e.g. {:?}), {} duplicated (e.g. {:?}), {} unexpected (e.g. {:?})",
            missing.len(),
            &missing[..missing.len().min(5)],
            duplicated.len(),
            &duplicated[..duplicated.len().min(5)],
            unexpected.len(),
            &unexpected[..unexpected.len().min(5)],
        ))
    }

    /// Requests answered with `status` on `path`.
    pub fn requests_with(&self, path: &str, status: u16) -> u64 {
        self.requests
            .get(&(path.to_owned(), status))
            .copied()
            .unwrap_or(0)
    }

    /// All accepted track items with their `app_id`, in arrival order.
    pub fn track_items(&self) -> impl Iterator<Item = (&str, &TrackItem)> {
        self.track_batches
            .iter()
            .flat_map(|b| b.events.iter().map(move |e| (b.app_id.as_str(), e)))
    }

    /// All accepted user-property items with their `app_id`, in arrival order.
    pub fn user_property_items(&self) -> impl Iterator<Item = (&str, &UserPropertiesItem)> {
        self.user_property_batches
            .iter()
            .flat_map(|b| b.users.iter().map(move |u| (b.app_id.as_str(), u)))
    }

    /// Accepted track events of `app_id` for `identity` (or `user_id`).
    pub fn identity_events(&self, app_id: &str, identity: &str) -> u64 {
        self.apps
            .get(app_id)
            .and_then(|a| a.identities.get(identity))
            .copied()
            .unwrap_or(0)
    }

    /// One arrival time per accepted track event of `app_id`, for [`max_in_window`].
    pub fn app_arrivals(&self, app_id: &str) -> Vec<Duration> {
        self.track_batches
            .iter()
            .filter(|b| b.app_id == app_id)
            .flat_map(|b| std::iter::repeat_n(b.at, b.events.len()))
            .collect()
    }

    /// One arrival time per accepted track event of `app_id` for `identity` (or `user_id`).
    pub fn identity_arrivals(&self, app_id: &str, identity: &str) -> Vec<Duration> {
        self.track_batches
            .iter()
            .filter(|b| b.app_id == app_id)
            .flat_map(|b| {
                b.events
                    .iter()
                    .filter(|e| e.budget_key() == identity)
                    .map(|_| b.at)
            })
            .collect()
    }

    /// One arrival time per track event of `app_id` received, accepted or refused.
    pub fn offered_app_arrivals(&self, app_id: &str) -> Vec<Duration> {
        let mut arrivals: Vec<Duration> = self
            .track_batches
            .iter()
            .chain(&self.refused_track_batches)
            .filter(|b| b.app_id == app_id)
            .flat_map(|b| std::iter::repeat_n(b.at, b.events.len()))
            .collect();
        arrivals.sort_unstable();
        arrivals
    }

    /// Whether any window held more events than its budget (only possible without `enforce`).
    pub fn over_budget(&self) -> bool {
        self.max_app_window.events > self.config.events_per_window
            || self.max_identity_window.events > self.config.identity_events_per_window
    }

    /// Whether the sender tried to put more events in a window than a budget allows: the
    /// offered windows (every track request received, refused ones included) against the
    /// budgets. Unlike [`Self::over_budget`], enforcement cannot hide this.
    pub fn offered_over_budget(&self) -> bool {
        self.max_offered_app_window.events > self.config.events_per_window
            || self.max_offered_identity_window.events > self.config.identity_events_per_window
    }
}

/// The largest number of `arrivals` inside any window `(t − window, t]`, exactly. The input
/// may be in any order; a zero window holds nothing.
pub fn max_in_window(arrivals: &[Duration], window: Duration) -> usize {
    if window.is_zero() {
        return 0;
    }
    let mut sorted;
    let ts = if arrivals.is_sorted() {
        arrivals
    } else {
        sorted = arrivals.to_vec();
        sorted.sort_unstable();
        &sorted
    };
    // The fullest window can be taken to end at an arrival; for each right end keep the
    // earliest arrival still inside it.
    let mut left = 0;
    let mut best = 0;
    for right in 0..ts.len() {
        while ts[right] - ts[left] >= window {
            left += 1;
        }
        best = best.max(right - left + 1);
    }
    best
}

/// An incremental sliding window over arrivals at non-decreasing times: the current count in
/// `(now − W, now]` (for admission) and the exact peak so far. Agrees with [`max_in_window`].
#[derive(Debug, Clone)]
pub struct SlidingWindow {
    window: Duration,
    /// (arrival, events) still inside the window, oldest first.
    entries: VecDeque<(Duration, u32)>,
    current: u32,
    peak: u32,
    peak_at: Duration,
}

impl SlidingWindow {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            entries: VecDeque::new(),
            current: 0,
            peak: 0,
            peak_at: Duration::ZERO,
        }
    }

    fn expire(&mut self, now: Duration) {
        while let Some(&(t, n)) = self.entries.front() {
            if now.saturating_sub(t) < self.window {
                break;
            }
            self.entries.pop_front();
            self.current -= n;
        }
    }

    /// Events in `(now − W, now]`.
    pub fn count_at(&mut self, now: Duration) -> u32 {
        self.expire(now);
        self.current
    }

    /// Records `events` arriving at `now` (not earlier than any previous arrival).
    pub fn add(&mut self, now: Duration, events: u32) {
        if self.window.is_zero() || events == 0 {
            return;
        }
        self.expire(now);
        match self.entries.back_mut() {
            Some((t, n)) if *t == now => *n += events,
            _ => self.entries.push_back((now, events)),
        }
        self.current += events;
        if self.current > self.peak {
            self.peak = self.current;
            self.peak_at = now;
        }
    }

    /// The largest count of any window so far, and where it ended.
    pub fn peak(&self) -> (u32, Duration) {
        (self.peak, self.peak_at)
    }
}

/// A running Heap stand-in. Dropping it (or [`HeapStandIn::stop`]) stops it.
pub struct HeapStandIn {
    addr: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl HeapStandIn {
    /// Binds `127.0.0.1:0` and serves on the current Tokio runtime.
    ///
    /// # Panics
    /// Outside a Tokio runtime, or if the loopback port cannot be bound.
    pub fn start(config: StandInConfig) -> HeapStandIn {
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("stand-in: bind 127.0.0.1:0");
        std_listener
            .set_nonblocking(true)
            .expect("stand-in: set_nonblocking");
        let listener = TcpListener::from_std(std_listener)
            .expect("stand-in: HeapStandIn::start must run inside a Tokio runtime");
        let addr = listener.local_addr().expect("stand-in: local_addr");
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            base_url: format!("http://{addr}"),
            inner: Mutex::new(Inner::new(config)),
        });
        let cancel = CancellationToken::new();
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared), cancel.clone()));
        HeapStandIn {
            addr,
            shared,
            cancel,
            task: Some(task),
        }
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and closes open connections (asynchronously; see [`Self::shutdown`]).
    pub fn stop(&self) {
        self.cancel.cancel();
    }

    /// Stops and waits until the listener is closed.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Queues a fault for a future request (FIFO, one per request).
    ///
    /// # Panics
    /// If a status code is not a valid HTTP status.
    pub fn push_fault(&self, fault: Fault) {
        if let Fault::Status { code, .. } | Fault::StatusAfterProcessing { code, .. } = &fault {
            assert!(
                StatusCode::from_u16(*code).is_ok(),
                "stand-in: {code} is not an HTTP status"
            );
        }
        self.shared.lock().faults.push_back(fault);
    }

    /// Queues several faults, in order.
    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        for fault in faults {
            self.push_fault(fault);
        }
    }

    /// Faults queued and not yet consumed.
    pub fn pending_faults(&self) -> usize {
        self.shared.lock().faults.len()
    }

    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// Sets the sticky mode (applied when no fault is queued).
    pub fn set_mode(&self, mode: Mode) {
        self.shared.lock().mode = mode;
    }

    /// `true`: every request is answered `503` until `set_down(false)`.
    pub fn set_down(&self, down: bool) {
        self.set_mode(if down { Mode::Down } else { Mode::Normal });
    }

    /// Any bulk track request containing `idempotency_key` is answered `400` naming the key,
    /// and nothing from it is recorded.
    pub fn poison(&self, idempotency_key: impl Into<String>) {
        self.shared.lock().poisoned.insert(idempotency_key.into());
    }

    pub fn unpoison(&self, idempotency_key: &str) {
        self.shared.lock().poisoned.remove(idempotency_key);
    }

    /// Turns budget enforcement on or off from now on.
    pub fn set_enforce(&self, enforce: bool) {
        self.shared.lock().config.enforce = enforce;
    }

    /// Whether accepted track items are recorded with their properties (the default) or
    /// without: a run of very large events then costs the test process little memory.
    pub fn set_keep_properties(&self, keep: bool) {
        self.shared.lock().keep_properties = keep;
    }

    /// Forgets everything recorded (requests, items, windows); keeps the faults, mode, poison
    /// and config.
    pub fn reset_records(&self) {
        self.shared.lock().rec = Records::default();
    }

    /// Track events accepted so far: [`Report::events_accepted`] without the snapshot, for
    /// tests that poll it closely.
    pub fn events_accepted(&self) -> u64 {
        self.shared.lock().rec.events_accepted
    }

    /// A snapshot of everything recorded so far.
    pub fn report(&self) -> Report {
        let inner = self.shared.lock();
        let rec = &inner.rec;
        let apps = rec
            .apps
            .iter()
            .map(|(app_id, app)| {
                let identities = app
                    .identities
                    .iter()
                    .map(|(id, st)| (id.clone(), st.events))
                    .collect();
                let (events, ends_at) = app.window.peak();
                let (offered, offered_ends_at) = app.offered.peak();
                let report = AppReport {
                    events: app.events,
                    user_property_items: app.user_property_items,
                    identities,
                    max_window: WindowPeak {
                        events,
                        app_id: app_id.clone(),
                        identity: None,
                        ends_at,
                    },
                    max_identity_window: app.max_identity_window.clone(),
                    max_offered_window: WindowPeak {
                        events: offered,
                        app_id: app_id.clone(),
                        identity: None,
                        ends_at: offered_ends_at,
                    },
                    max_offered_identity_window: app.max_offered_identity_window.clone(),
                };
                (app_id.clone(), report)
            })
            .collect::<BTreeMap<_, _>>();
        let max_app_window = apps
            .values()
            .map(|a| &a.max_window)
            .max_by_key(|p| p.events)
            .cloned()
            .unwrap_or_default();
        let max_identity_window = apps
            .values()
            .map(|a| &a.max_identity_window)
            .max_by_key(|p| p.events)
            .cloned()
            .unwrap_or_default();
        let max_offered_app_window = apps
            .values()
            .map(|a| &a.max_offered_window)
            .max_by_key(|p| p.events)
            .cloned()
            .unwrap_or_default();
        let max_offered_identity_window = apps
            .values()
            .map(|a| &a.max_offered_identity_window)
            .max_by_key(|p| p.events)
            .cloned()
            .unwrap_or_default();
        Report {
            config: inner.config,
            requests: rec.requests.clone(),
            dropped_connections: rec.dropped.clone(),
            shape_violations: rec.shape_violations.clone(),
            shape_violation_count: rec.shape_violation_count,
            limit_rejections: rec.limit_rejections,
            poison_rejections: rec.poison_rejections,
            faults_injected: rec.faults_injected,
            events_accepted: rec.events_accepted,
            user_property_items_accepted: rec.user_property_items_accepted,
            apps,
            keys: rec.keys.clone(),
            track_batches: rec.track_batches.clone(),
            user_property_batches: rec.user_property_batches.clone(),
            max_app_window,
            max_identity_window,
            max_offered_app_window,
            max_offered_identity_window,
            refused_track_batches: rec.refused_track_batches.clone(),
            first_arrival: rec.first_arrival,
            last_arrival: rec.last_arrival,
            largest_body: rec.largest_body.clone(),
            deletion: rec.deletion.clone(),
        }
    }
}

impl Drop for HeapStandIn {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

struct Shared {
    epoch: Instant,
    /// `http://127.0.0.1:PORT`.
    base_url: String,
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not hide the report from the others.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

struct Inner {
    config: StandInConfig,
    faults: VecDeque<Fault>,
    mode: Mode,
    poisoned: HashSet<String>,
    /// Keep the properties of accepted track items in the records (see
    /// [`HeapStandIn::set_keep_properties`]).
    keep_properties: bool,
    deletion: deletion::DeletionState,
    rec: Records,
}

impl Inner {
    fn new(config: StandInConfig) -> Self {
        Self {
            config,
            faults: VecDeque::new(),
            mode: Mode::Normal,
            poisoned: HashSet::new(),
            keep_properties: true,
            deletion: deletion::DeletionState::default(),
            rec: Records::default(),
        }
    }
}

#[derive(Default)]
struct Records {
    requests: BTreeMap<(String, u16), u64>,
    dropped: BTreeMap<String, u64>,
    shape_violations: Vec<ShapeViolation>,
    shape_violation_count: u64,
    limit_rejections: u64,
    poison_rejections: u64,
    faults_injected: u64,
    events_accepted: u64,
    user_property_items_accepted: u64,
    apps: HashMap<String, AppState>,
    keys: HashMap<String, u32>,
    track_batches: Vec<Arc<TrackBatch>>,
    refused_track_batches: Vec<Arc<TrackBatch>>,
    user_property_batches: Vec<Arc<UserPropertiesBatch>>,
    first_arrival: Option<Duration>,
    last_arrival: Option<Duration>,
    largest_body: BTreeMap<String, usize>,
    deletion: DeletionReport,
}

struct AppState {
    events: u64,
    user_property_items: u64,
    window: SlidingWindow,
    identities: HashMap<String, IdentityState>,
    max_identity_window: WindowPeak,
    /// The app's window over every track request received (accepted or refused).
    offered: SlidingWindow,
    /// Per identity, the same.
    offered_identities: HashMap<String, SlidingWindow>,
    max_offered_identity_window: WindowPeak,
}

impl AppState {
    fn new(window: Duration) -> Self {
        Self {
            events: 0,
            user_property_items: 0,
            window: SlidingWindow::new(window),
            identities: HashMap::new(),
            max_identity_window: WindowPeak::default(),
            offered: SlidingWindow::new(window),
            offered_identities: HashMap::new(),
            max_offered_identity_window: WindowPeak::default(),
        }
    }
}

struct IdentityState {
    events: u64,
    window: SlidingWindow,
}

/// The answer to a request that gets one.
struct Answer {
    status: StatusCode,
    retry_after: Option<String>,
    content_type: &'static str,
    body: Bytes,
}

impl Answer {
    fn text(status: StatusCode, body: impl Into<String>) -> Self {
        Answer {
            status,
            retry_after: None,
            content_type: "text/plain; charset=utf-8",
            body: Bytes::from(body.into()),
        }
    }

    fn ok() -> Self {
        Answer {
            status: StatusCode::OK,
            retry_after: None,
            content_type: "application/json",
            body: Bytes::from_static(b"{}"),
        }
    }

    fn status(code: u16, retry_after: Option<String>, body: String) -> Self {
        Answer {
            retry_after,
            ..Answer::text(
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                body,
            )
        }
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(self.body));
        *resp.status_mut() = self.status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        if let Some(value) = self
            .retry_after
            .and_then(|v| HeaderValue::from_str(&v).ok())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, value);
        }
        resp
    }
}

/// The service's error: hyper closes the connection without writing a response.
#[derive(Debug, thiserror::Error)]
#[error("stand-in: connection dropped without a response")]
struct Dropped;

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, cancel: CancellationToken) {
    loop {
        let stream = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move { serve(&shared, req).await }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                () = cancel.cancelled() => {}
            }
        });
    }
}

async fn serve(shared: &Shared, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Dropped> {
    let path = deletion::path_label(req.uri().path()).to_owned();
    let plan = {
        let mut inner = shared.lock();
        match inner.faults.pop_front() {
            Some(fault) => {
                inner.rec.faults_injected += 1;
                Some(fault)
            }
            None => match inner.mode {
                Mode::Normal => None,
                Mode::Down => Some(Fault::Status {
                    code: 503,
                    retry_after: None,
                    body: "stand-in is down (set_down)".into(),
                }),
                Mode::DropConnections => Some(Fault::DropBeforeProcessing),
            },
        }
    };
    let answer = match plan {
        None => process(shared, &path, req).await,
        Some(Fault::Status {
            code,
            retry_after,
            body,
        }) => Answer::status(code, retry_after, body),
        Some(Fault::Delay(delay)) => {
            let answer = process(shared, &path, req).await;
            tokio::time::sleep(delay).await;
            answer
        }
        Some(Fault::StatusAfterProcessing {
            code,
            retry_after,
            body,
        }) => {
            process(shared, &path, req).await;
            Answer::status(code, retry_after, body)
        }
        Some(Fault::DropAfterProcessing) => {
            process(shared, &path, req).await;
            return Err(record_drop(shared, path));
        }
        Some(Fault::DropBeforeProcessing) => return Err(record_drop(shared, path)),
    };
    *shared
        .lock()
        .rec
        .requests
        .entry((path, answer.status.as_u16()))
        .or_default() += 1;
    Ok(answer.into_response())
}

fn record_drop(shared: &Shared, path: String) -> Dropped {
    *shared.lock().rec.dropped.entry(path).or_default() += 1;
    Dropped
}

enum Endpoint {
    Track,
    UserProperties,
}

/// Heap's behaviour: check the request, then record it (or refuse it).
async fn process(shared: &Shared, path: &str, req: Request<Incoming>) -> Answer {
    if deletion::is_deletion_path(path) {
        return deletion::process(shared, path, req).await;
    }
    let endpoint = match path {
        TRACK_PATH => Endpoint::Track,
        USER_PROPERTIES_PATH => Endpoint::UserProperties,
        _ => {
            return Answer::text(
                StatusCode::NOT_FOUND,
                format!(
                    "no such endpoint {path:?} (the stand-in models /api/track, /api/add_user_properties and the deletion API)"
                ),
            );
        }
    };
    let body = match check_head(&req) {
        Err(reason) => Err((StatusCode::BAD_REQUEST, reason)),
        Ok(()) => match Limited::new(req.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
        {
            Ok(collected) => {
                let body = collected.to_bytes();
                record_body_len(shared, path, body.len());
                Ok(body)
            }
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                record_body_len(shared, path, MAX_BODY_BYTES + 1);
                Err((
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "body over {MAX_BODY_BYTES} bytes (stand-in guard; Heap documents no limit)"
                    ),
                ))
            }
            Err(e) => Err((StatusCode::BAD_REQUEST, format!("cannot read body: {e}"))),
        },
    };
    let parsed = body.and_then(|body| {
        match endpoint {
            Endpoint::Track => parse_bulk_track(&body).map(Parsed::Track),
            Endpoint::UserProperties => parse_bulk_user_properties(&body).map(Parsed::Users),
        }
        .map_err(|reason| (StatusCode::BAD_REQUEST, reason))
    });
    let mut guard = shared.lock();
    // Taken under the lock, so arrivals are recorded in time order (the sliding windows need it).
    let now = shared.epoch.elapsed();
    let inner = &mut *guard;
    match parsed {
        Err((status, reason)) => {
            let rec = &mut inner.rec;
            rec.shape_violation_count += 1;
            if rec.shape_violations.len() < MAX_KEPT_VIOLATIONS {
                rec.shape_violations.push(ShapeViolation {
                    path: path.to_owned(),
                    status: status.as_u16(),
                    reason: reason.clone(),
                });
            }
            Answer::text(status, reason)
        }
        Ok(Parsed::Track((app_id, events))) => accept_track(inner, now, app_id, events),
        Ok(Parsed::Users((app_id, users))) => {
            let window = inner.config.window;
            let rec = &mut inner.rec;
            let app = rec
                .apps
                .entry(app_id.clone())
                .or_insert_with(|| AppState::new(window));
            app.user_property_items += users.len() as u64;
            rec.user_property_items_accepted += users.len() as u64;
            rec.user_property_batches
                .push(Arc::new(UserPropertiesBatch {
                    app_id,
                    at: now,
                    users,
                }));
            Answer::ok()
        }
    }
}

fn record_body_len(shared: &Shared, path: &str, len: usize) {
    let mut inner = shared.lock();
    let largest = inner.rec.largest_body.entry(path.to_owned()).or_default();
    *largest = (*largest).max(len);
}

enum Parsed {
    Track((String, Vec<TrackItem>)),
    Users((String, Vec<UserPropertiesItem>)),
}

/// Method, `Content-Type`, `Content-Encoding`.
fn check_head(req: &Request<Incoming>) -> Result<(), String> {
    if req.method() != Method::POST {
        return Err(format!(
            "method {} not allowed: Heap's ingestion endpoints take POST",
            req.method()
        ));
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let media_type = content_type
        .as_deref()
        .and_then(|ct| ct.split(';').next())
        .map(str::trim);
    if !media_type.is_some_and(|m| m.eq_ignore_ascii_case("application/json")) {
        return Err(format!(
            "Content-Type must be application/json, got {content_type:?}"
        ));
    }
    if let Some(encoding) = req.headers().get(header::CONTENT_ENCODING)
        && !encoding.as_bytes().eq_ignore_ascii_case(b"identity")
    {
        return Err(format!(
            "Content-Encoding {encoding:?} is not documented by Heap (stand-in accepts none)"
        ));
    }
    Ok(())
}

/// Admits (or refuses: poison, budgets) and records an already well-shaped track request.
/// Every such request counts in the offered windows, whatever the answer.
fn accept_track(
    inner: &mut Inner,
    now: Duration,
    app_id: String,
    events: Vec<TrackItem>,
) -> Answer {
    let config = inner.config;
    let rec = &mut inner.rec;
    let mut per_identity: HashMap<&str, u32> = HashMap::new();
    for e in &events {
        *per_identity.entry(e.budget_key()).or_default() += 1;
    }
    let total = events.len() as u32;
    let app = rec
        .apps
        .entry(app_id.clone())
        .or_insert_with(|| AppState::new(config.window));
    app.offered.add(now, total);
    for (identity, n) in &per_identity {
        let window = match app.offered_identities.get_mut(*identity) {
            Some(w) => w,
            None => app
                .offered_identities
                .entry((*identity).to_owned())
                .or_insert_with(|| SlidingWindow::new(config.window)),
        };
        window.add(now, *n);
        let (peak, ends_at) = window.peak();
        if peak > app.max_offered_identity_window.events {
            app.max_offered_identity_window = WindowPeak {
                events: peak,
                app_id: app_id.clone(),
                identity: Some((*identity).to_owned()),
                ends_at,
            };
        }
    }
    let refusal = if let Some(key) = events
        .iter()
        .map(|e| e.idempotency_key.as_str())
        .find(|k| inner.poisoned.contains(*k))
    {
        rec.poison_rejections += 1;
        Some(Answer::text(
            StatusCode::BAD_REQUEST,
            format!("poisoned idempotency_key {key:?} (stand-in poison)"),
        ))
    } else if config.enforce {
        over_budget(app, &per_identity, &config, now, &app_id, total)
    } else {
        None
    };
    if let Some(answer) = refusal {
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            rec.limit_rejections += 1;
        }
        rec.refused_track_batches.push(Arc::new(TrackBatch {
            app_id,
            at: now,
            events,
        }));
        return answer;
    }
    app.events += u64::from(total);
    app.window.add(now, total);
    for (identity, n) in per_identity {
        let st = match app.identities.get_mut(identity) {
            Some(st) => st,
            None => app
                .identities
                .entry(identity.to_owned())
                .or_insert_with(|| IdentityState {
                    events: 0,
                    window: SlidingWindow::new(config.window),
                }),
        };
        st.events += u64::from(n);
        st.window.add(now, n);
        let (peak, ends_at) = st.window.peak();
        if peak > app.max_identity_window.events {
            app.max_identity_window = WindowPeak {
                events: peak,
                app_id: app_id.clone(),
                identity: Some(identity.to_owned()),
                ends_at,
            };
        }
    }
    for e in &events {
        match rec.keys.get_mut(&e.idempotency_key) {
            Some(n) => *n += 1,
            None => {
                rec.keys.insert(e.idempotency_key.clone(), 1);
            }
        }
    }
    rec.events_accepted += u64::from(total);
    rec.first_arrival.get_or_insert(now);
    rec.last_arrival = Some(now);
    let mut events = events;
    if !inner.keep_properties {
        for e in &mut events {
            e.properties = Default::default();
        }
    }
    rec.track_batches.push(Arc::new(TrackBatch {
        app_id,
        at: now,
        events,
    }));
    Answer::ok()
}

/// The `429` for a request that would push the app's or an identity's accepted window over
/// its budget, if it would.
fn over_budget(
    app: &mut AppState,
    per_identity: &HashMap<&str, u32>,
    config: &StandInConfig,
    now: Duration,
    app_id: &str,
    total: u32,
) -> Option<Answer> {
    let in_window = app.window.count_at(now);
    if in_window + total > config.events_per_window {
        return Some(Answer::text(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "app {app_id}: {in_window} events in the window + {total} > budget {}",
                config.events_per_window
            ),
        ));
    }
    for (identity, n) in per_identity {
        let in_window = app
            .identities
            .get_mut(*identity)
            .map_or(0, |st| st.window.count_at(now));
        if in_window + n > config.identity_events_per_window {
            return Some(Answer::text(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "app {app_id}, identity {identity:?}: {in_window} events in the window + {n} > budget {}",
                    config.identity_events_per_window
                ),
            ));
        }
    }
    None
}

/// Checks a bulk track body; `Ok((app_id, events))` or what is wrong.
pub fn parse_bulk_track(body: &[u8]) -> Result<(String, Vec<TrackItem>), String> {
    let (app_id, items) = parse_envelope(body, "events", "event")?;
    let events = items
        .iter()
        .enumerate()
        .map(|(i, v)| check_track_item(v).map_err(|e| format!("events[{i}]: {e}")))
        .collect::<Result<Vec<_>, String>>()?;
    Ok((app_id, events))
}

/// Checks a bulk add-user-properties body; `Ok((app_id, users))` or what is wrong.
pub fn parse_bulk_user_properties(
    body: &[u8],
) -> Result<(String, Vec<UserPropertiesItem>), String> {
    let (app_id, items) = parse_envelope(body, "users", "identity")?;
    let users = items
        .iter()
        .enumerate()
        .map(|(i, v)| check_user_properties_item(v).map_err(|e| format!("users[{i}]: {e}")))
        .collect::<Result<Vec<_>, String>>()?;
    Ok((app_id, users))
}

/// `{"app_id": "<digits>", "<list>": [1..=1000 items]}` and nothing else.
fn parse_envelope(
    body: &[u8],
    list: &str,
    single_marker: &str,
) -> Result<(String, Vec<Value>), String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let Value::Object(mut top) = value else {
        return Err("body is not a JSON object".into());
    };
    let app_id = match top.remove("app_id") {
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s,
        Some(other) => return Err(format!("`app_id` must be a string of digits, got {other}")),
        None => return Err("`app_id` is missing".into()),
    };
    let items = match top.remove(list) {
        Some(Value::Array(items)) => items,
        Some(_) => return Err(format!("`{list}` must be an array")),
        None if top.contains_key(single_marker) => {
            return Err(format!(
                "single-item body; the stand-in takes only the bulk form with `{list}` (our forwarder sends only bulk)"
            ));
        }
        None => return Err(format!("`{list}` is missing")),
    };
    if let Some(field) = top.keys().next() {
        return Err(format!(
            "unknown top-level field `{field}`; the bulk envelope is {{app_id, {list}}}"
        ));
    }
    if items.is_empty() || items.len() > MAX_BULK_ITEMS {
        return Err(format!(
            "`{list}` has {} items; Heap takes 1..={MAX_BULK_ITEMS} per request",
            items.len()
        ));
    }
    Ok((app_id, items))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heap::{Properties, PropertyValue};
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use proptest::prelude::*;

    const APP: &str = "11";
    const HOUR: Duration = Duration::from_secs(3600);

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn item(identity: &str, key: &str) -> TrackItem {
        TrackItem {
            identity: Some(identity.into()),
            user_id: None,
            event: "Email Sent".into(),
            timestamp: "2026-11-28T10:00:00Z".into(),
            idempotency_key: key.into(),
            properties: Properties::from([("campaign".into(), PropertyValue::Str("c".into()))]),
        }
    }

    fn items(identity: &str, prefix: &str, n: usize) -> Vec<TrackItem> {
        (0..n)
            .map(|i| item(identity, &format!("{prefix}{i}")))
            .collect()
    }

    fn track_body(app_id: &str, events: &[TrackItem]) -> Value {
        serde_json::json!({"app_id": app_id, "events": events})
    }

    /// One client per request and no pooling, so a dropped connection never leaks into the
    /// next request.
    struct Http {
        base: String,
    }

    #[derive(Debug)]
    struct Got {
        status: u16,
        retry_after: Option<String>,
        body: String,
    }

    impl Http {
        fn new(stand_in: &HeapStandIn) -> Self {
            Http {
                base: stand_in.base_url(),
            }
        }

        async fn send(
            &self,
            method: Method,
            path: &str,
            content_type: Option<&str>,
            body: Vec<u8>,
        ) -> Result<Got, String> {
            let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build_http();
            let mut req = Request::builder()
                .method(method)
                .uri(format!("{}{path}", self.base));
            if let Some(ct) = content_type {
                req = req.header(header::CONTENT_TYPE, ct);
            }
            let req = req.body(Full::new(Bytes::from(body))).unwrap();
            let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.to_str().unwrap().to_owned());
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok(Got {
                status,
                retry_after,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        }

        async fn post(&self, path: &str, body: &Value) -> Result<Got, String> {
            self.send(
                Method::POST,
                path,
                Some("application/json"),
                serde_json::to_vec(body).unwrap(),
            )
            .await
        }

        async fn track(&self, events: &[TrackItem]) -> Result<Got, String> {
            self.post(TRACK_PATH, &track_body(APP, events)).await
        }

        async fn status(&self, path: &str, body: &Value) -> u16 {
            self.post(path, body).await.expect("an HTTP answer").status
        }
    }

    fn measure_only() -> StandInConfig {
        StandInConfig {
            enforce: false,
            ..StandInConfig::heap()
        }
    }

    // ---- the pure window computation ----

    fn brute_force(ts: &[Duration], window: Duration) -> usize {
        ts.iter()
            .map(|&end| ts.iter().filter(|&&t| t <= end && end - t < window).count())
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn window_maximum_on_scripted_arrivals() {
        let w = secs(60.0);
        assert_eq!(max_in_window(&[], w), 0);
        assert_eq!(max_in_window(&[secs(5.0)], w), 1);
        // (t − W, t] is open on the left: an arrival exactly W earlier is outside.
        assert_eq!(max_in_window(&[secs(0.0), secs(60.0)], w), 1);
        assert_eq!(max_in_window(&[secs(0.0), secs(59.999)], w), 2);
        // Simultaneous arrivals all count.
        let burst = vec![secs(10.0); 7];
        assert_eq!(max_in_window(&burst, w), 7);
        // Unsorted input; the fullest window is (40, 100] with 61, 70, 99.5, 100.
        let ts = [100.0, 0.0, 61.0, 30.0, 70.0, 99.5, 40.0].map(secs);
        assert_eq!(max_in_window(&ts, w), 4);
        assert_eq!(max_in_window(&ts, secs(1.0)), 2);
        assert_eq!(max_in_window(&ts, secs(1000.0)), 7);
        assert_eq!(max_in_window(&ts, Duration::ZERO), 0);
    }

    #[test]
    fn sliding_window_counts_admission_and_peak() {
        let mut w = SlidingWindow::new(secs(10.0));
        w.add(secs(0.0), 5);
        w.add(secs(9.0), 3);
        assert_eq!(w.count_at(secs(9.5)), 8);
        assert_eq!(
            w.count_at(secs(10.0)),
            3,
            "the arrival at 0 left at exactly W"
        );
        w.add(secs(12.0), 4);
        assert_eq!(w.peak(), (8, secs(9.0)));
        w.add(secs(12.0), 2);
        assert_eq!(w.peak(), (9, secs(12.0)));
        assert_eq!(w.count_at(secs(100.0)), 0);
    }

    proptest! {
        #[test]
        fn incremental_window_agrees_with_pure_function(
            mut gaps in proptest::collection::vec((0u64..30, 1u32..4), 0..60),
            window_ms in 0u64..200,
        ) {
            let window = Duration::from_millis(window_ms);
            let mut sliding = SlidingWindow::new(window);
            let mut now = Duration::ZERO;
            let mut flat = Vec::new();
            for (gap, n) in gaps.drain(..) {
                now += Duration::from_millis(gap);
                sliding.add(now, n);
                flat.extend(std::iter::repeat_n(now, n as usize));
            }
            let exact = max_in_window(&flat, window);
            prop_assert_eq!(exact, brute_force(&flat, window));
            prop_assert_eq!(sliding.peak().0 as usize, exact);
        }
    }

    // ---- shapes (pure) ----

    #[test]
    fn parse_reports_what_is_wrong() {
        let ok = track_body(APP, &items("alice", "k", 2));
        assert_eq!(
            parse_bulk_track(ok.to_string().as_bytes()).unwrap().1.len(),
            2
        );
        let cases = [
            (serde_json::json!({"app_id": "11"}), "`events` is missing"),
            (serde_json::json!({"app_id": 11, "events": []}), "`app_id`"),
            (serde_json::json!({"app_id": "11", "events": []}), "0 items"),
            (
                serde_json::json!({"app_id": "11", "identity": "a", "event": "e"}),
                "single-item",
            ),
            (
                serde_json::json!({"app_id": "11", "library": "x", "events": [item("a", "k")]}),
                "unknown top-level field `library`",
            ),
            (
                serde_json::json!({"app_id": "11", "events": [{"identity": "a", "event": "e",
                    "timestamp": "2026-11-28T10:00:00Z", "idempotency_key": "k",
                    "session_id": "s"}]}),
                "events[0]: unknown field `session_id`",
            ),
            (
                serde_json::json!({"app_id": "11", "events": [{"identity": "a", "event": "e",
                    "timestamp": "2026-11-28T10:00:00Z", "idempotency_key": "k",
                    "properties": {"flag": true}}]}),
                "boolean",
            ),
            (
                serde_json::json!({"app_id": "11", "events": [item("null", "k")]}),
                "placeholder identity",
            ),
        ];
        for (body, want) in cases {
            let err = parse_bulk_track(body.to_string().as_bytes()).unwrap_err();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
        assert!(
            parse_bulk_track(b"not json")
                .unwrap_err()
                .contains("not JSON")
        );
        let users = serde_json::json!({"app_id": "11",
            "users": [{"identity": "bob", "properties": {"email": "b@x"}}]});
        assert_eq!(
            parse_bulk_user_properties(users.to_string().as_bytes())
                .unwrap()
                .1
                .len(),
            1
        );
    }

    /// `heap-api.md` §(c): 1000 events per bulk track request, 1000 users per bulk
    /// add-user-properties request; an empty bulk is refused too.
    #[test]
    fn bulk_requests_hold_1_to_1000_items() {
        let track = |n: usize| {
            parse_bulk_track(
                track_body(APP, &items("alice", "k", n))
                    .to_string()
                    .as_bytes(),
            )
        };
        assert_eq!(track(MAX_BULK_ITEMS).unwrap().1.len(), MAX_BULK_ITEMS);
        assert!(
            track(MAX_BULK_ITEMS + 1)
                .unwrap_err()
                .contains("1001 items")
        );
        assert!(track(0).unwrap_err().contains("0 items"));
        let users = |n: usize| {
            let users: Vec<Value> = (0..n)
                .map(|i| serde_json::json!({"identity": format!("u{i}")}))
                .collect();
            let body = serde_json::json!({"app_id": APP, "users": users});
            parse_bulk_user_properties(body.to_string().as_bytes())
        };
        assert_eq!(users(MAX_BULK_ITEMS).unwrap().1.len(), MAX_BULK_ITEMS);
        assert!(
            users(MAX_BULK_ITEMS + 1)
                .unwrap_err()
                .contains("1001 items")
        );
        assert!(users(0).unwrap_err().contains("0 items"));
        // One bad item refuses the whole request, and the message says which.
        let mut events = items("alice", "k", 3);
        events[2].event = "e".repeat(1025);
        let err = parse_bulk_track(track_body(APP, &events).to_string().as_bytes()).unwrap_err();
        assert!(err.starts_with("events[2]: `event`"), "{err}");
    }

    // ---- over HTTP ----

    #[tokio::test]
    async fn shapes_are_enforced_over_http() {
        let heap = HeapStandIn::start(StandInConfig::heap());
        let http = Http::new(&heap);

        let at_cap = items("alice", "cap", MAX_BULK_ITEMS);
        assert_eq!(http.track(&at_cap).await.unwrap().status, 200);
        let too_many = items("bob", "over", MAX_BULK_ITEMS + 1);
        let got = http.track(&too_many).await.unwrap();
        assert_eq!(got.status, 400);
        assert!(got.body.contains("1001 items"), "{}", got.body);

        let mut bad_identity = item("x", "bad-id");
        bad_identity.identity = Some("é".repeat(256));
        let got = http.track(&[bad_identity]).await.unwrap();
        assert_eq!(got.status, 400);
        assert!(got.body.contains("events[0]: `identity`"), "{}", got.body);

        let mut both = item("alice", "both");
        both.user_id = Some("42".into());
        assert_eq!(http.track(&[both]).await.unwrap().status, 400);

        let nested = serde_json::json!({"app_id": APP, "events": [{
            "identity": "alice", "event": "e", "timestamp": "2026-11-28T10:00:00Z",
            "idempotency_key": "nested", "properties": {"user": {"plan": "pro"}}}]});
        let got = http.post(TRACK_PATH, &nested).await.unwrap();
        assert_eq!(got.status, 400);
        assert!(got.body.contains("nested object"), "{}", got.body);

        for app_id in ["my-app", "", "12a"] {
            let body = track_body(app_id, &[item("alice", "app")]);
            assert_eq!(http.status(TRACK_PATH, &body).await, 400, "{app_id:?}");
        }

        let body = serde_json::to_vec(&track_body(APP, &[item("dave", "ct")])).unwrap();
        let got = http
            .send(Method::POST, TRACK_PATH, Some("text/plain"), body.clone())
            .await
            .unwrap();
        assert_eq!(got.status, 400);
        assert!(got.body.contains("Content-Type"), "{}", got.body);
        assert_eq!(
            http.send(Method::POST, TRACK_PATH, None, body.clone())
                .await
                .unwrap()
                .status,
            400
        );
        let charset = Some("application/json; charset=utf-8");
        assert_eq!(
            http.send(Method::POST, TRACK_PATH, charset, body)
                .await
                .unwrap()
                .status,
            200
        );
        assert_eq!(
            http.send(Method::GET, TRACK_PATH, charset, Vec::new())
                .await
                .unwrap()
                .status,
            400
        );

        let got = http
            .post("/api/v1/track", &serde_json::json!({}))
            .await
            .unwrap();
        assert_eq!(got.status, 404);

        let users = |users: Value| serde_json::json!({"app_id": APP, "users": users});
        let ok = users(
            serde_json::json!([{"identity": "bob", "properties": {"email": "b@x", "age": 3}}]),
        );
        assert_eq!(http.status(USER_PROPERTIES_PATH, &ok).await, 200);
        let email = users(serde_json::json!([{"identity": "bob", "properties": {"Email": "b@x"}}]));
        assert_eq!(http.status(USER_PROPERTIES_PATH, &email).await, 400);
        let many: Vec<Value> = (0..=MAX_BULK_ITEMS)
            .map(|i| serde_json::json!({"identity": format!("u{i}")}))
            .collect();
        assert_eq!(
            http.status(USER_PROPERTIES_PATH, &users(Value::Array(many)))
                .await,
            400
        );

        let report = heap.report();
        assert_eq!(report.events_accepted, 1001);
        assert_eq!(report.user_property_items_accepted, 1);
        assert_eq!(report.shape_violation_count, 12);
        assert_eq!(report.shape_violations.len(), 12);
        assert_eq!(report.requests_with(TRACK_PATH, 200), 2);
        assert_eq!(report.requests_with(TRACK_PATH, 400), 10);
        assert_eq!(report.requests_with("/api/v1/track", 404), 1);
        assert_eq!(report.requests_with(USER_PROPERTIES_PATH, 400), 2);
        let (app, user) = report.user_property_items().next().unwrap();
        assert_eq!((app, user.identity.as_str()), (APP, "bob"));
        heap.shutdown().await;
    }

    #[tokio::test]
    async fn records_keys_duplicates_identities_and_windows() {
        let heap = HeapStandIn::start(StandInConfig {
            window: HOUR,
            ..measure_only()
        });
        let http = Http::new(&heap);
        let mut first = items("alice", "a", 3);
        first.push(TrackItem {
            identity: None,
            user_id: Some("42".into()),
            ..item("", "anon")
        });
        assert_eq!(http.track(&first).await.unwrap().status, 200);
        // A retry of two of them, and a second app.
        assert_eq!(http.track(&first[..2]).await.unwrap().status, 200);
        let other = track_body("22", &items("bob", "b", 2));
        assert_eq!(http.status(TRACK_PATH, &other).await, 200);

        let report = heap.report();
        assert_eq!(report.events_accepted, 8);
        assert_eq!(report.key_count("a0"), 2);
        assert_eq!(report.key_count("a2"), 1);
        assert_eq!(report.key_count("nope"), 0);
        assert_eq!(report.duplicates(), BTreeMap::from([("a0", 2), ("a1", 2)]));
        assert_eq!(report.duplicate_deliveries(), 2);
        assert_eq!(
            report.received_keys(),
            BTreeSet::from(["a0", "a1", "a2", "anon", "b0", "b1"])
        );
        let err = report
            .check_exactly_once(["a0", "a1", "a2", "anon", "b0", "zz"])
            .unwrap_err();
        assert!(err.starts_with("1 missing"), "{err}");
        assert!(err.contains("2 duplicated"), "{err}");
        assert!(err.contains("1 unexpected"), "{err}");
        assert_eq!(report.identity_events(APP, "alice"), 5);
        assert_eq!(report.identity_events(APP, "42"), 1);
        assert_eq!(report.identity_events("22", "bob"), 2);
        assert_eq!(report.apps[APP].events, 6);
        assert_eq!(report.track_items().count(), 8);
        // Everything arrived within an hour.
        assert_eq!(report.max_app_window.events, 6);
        assert_eq!(report.max_app_window.app_id, APP);
        assert_eq!(report.max_identity_window.events, 5);
        assert_eq!(
            report.max_identity_window.identity.as_deref(),
            Some("alice")
        );
        assert_eq!(
            max_in_window(&report.app_arrivals(APP), HOUR),
            report.max_app_window.events as usize
        );
        assert_eq!(
            max_in_window(&report.identity_arrivals(APP, "alice"), HOUR),
            5
        );
        assert!(report.first_arrival <= report.last_arrival);
        assert!(!report.over_budget());

        heap.reset_records();
        assert_eq!(heap.report().events_accepted, 0);
        assert!(heap.report().keys.is_empty());
    }

    #[tokio::test]
    async fn enforce_answers_429_and_records_nothing() {
        let config = StandInConfig {
            events_per_window: 5,
            identity_events_per_window: 3,
            window: HOUR,
            enforce: true,
        };
        let heap = HeapStandIn::start(config);
        let http = Http::new(&heap);
        assert_eq!(
            http.track(&items("alice", "a", 3)).await.unwrap().status,
            200
        );
        // Alice's window is full.
        let got = http.track(&items("alice", "a-more", 1)).await.unwrap();
        assert_eq!(got.status, 429);
        assert_eq!(got.retry_after, None);
        assert!(got.body.contains("alice"), "{}", got.body);
        assert_eq!(http.track(&items("bob", "b", 2)).await.unwrap().status, 200);
        // The app's window is full.
        let got = http.track(&items("carol", "c", 1)).await.unwrap();
        assert_eq!(got.status, 429);
        assert!(got.body.contains("budget 5"), "{}", got.body);

        let report = heap.report();
        assert_eq!(report.limit_rejections, 2);
        assert_eq!(report.events_accepted, 5);
        assert_eq!(report.key_count("a-more0"), 0);
        assert_eq!(report.key_count("c0"), 0);
        assert_eq!(report.max_app_window.events, 5);
        assert_eq!(report.max_identity_window.events, 3);
        assert!(!report.over_budget());
        assert_eq!(report.requests_with(TRACK_PATH, 429), 2);
        // What was *sent* went over both budgets: the offered windows count the refused
        // requests too (3 + 1 + 2 + 1 events; alice 3 + 1).
        assert_eq!(report.max_offered_app_window.events, 7);
        assert_eq!(report.max_offered_identity_window.events, 4);
        assert_eq!(
            report.max_offered_identity_window.identity.as_deref(),
            Some("alice")
        );
        assert!(report.offered_over_budget());
        let refused: Vec<usize> = report
            .refused_track_batches
            .iter()
            .map(|b| b.events.len())
            .collect();
        assert_eq!(refused, [1, 1]);
        assert_eq!(
            max_in_window(&report.offered_app_arrivals(APP), HOUR),
            7,
            "the offered arrivals agree with the incremental peak"
        );

        // The same traffic, measured only: accepted, and the report says it is over budget.
        heap.set_enforce(false);
        assert_eq!(
            http.track(&items("alice", "x", 2)).await.unwrap().status,
            200
        );
        let report = heap.report();
        assert_eq!(report.max_app_window.events, 7);
        assert_eq!(report.max_identity_window.events, 5);
        assert!(report.over_budget());
    }

    #[tokio::test]
    async fn status_faults_are_fifo_then_normal() {
        let heap = HeapStandIn::start(StandInConfig::heap());
        let http = Http::new(&heap);
        heap.push_faults([
            Fault::Status {
                code: 503,
                retry_after: Some("7".into()),
                body: "busy".into(),
            },
            Fault::status(500),
        ]);
        assert_eq!(heap.pending_faults(), 2);
        let got = http.track(&items("alice", "k", 1)).await.unwrap();
        assert_eq!(
            (got.status, got.retry_after.as_deref(), got.body.as_str()),
            (503, Some("7"), "busy")
        );
        let got = http.track(&items("alice", "k", 1)).await.unwrap();
        assert_eq!((got.status, got.retry_after), (500, None));
        assert_eq!(heap.report().events_accepted, 0);
        assert_eq!(
            http.track(&items("alice", "k", 1)).await.unwrap().status,
            200
        );

        heap.push_fault(Fault::StatusAfterProcessing {
            code: 502,
            retry_after: None,
            body: "bad gateway".into(),
        });
        let got = http.track(&items("bob", "late", 1)).await.unwrap();
        assert_eq!(got.status, 502);
        let report = heap.report();
        assert_eq!(report.key_count("late0"), 1, "processed despite the 502");
        assert_eq!(report.faults_injected, 3);
        assert_eq!(report.requests_with(TRACK_PATH, 503), 1);
        assert_eq!(report.requests_with(TRACK_PATH, 500), 1);
        assert_eq!(heap.pending_faults(), 0);
    }

    #[tokio::test]
    async fn drop_faults_close_the_connection() {
        let heap = HeapStandIn::start(StandInConfig::heap());
        let http = Http::new(&heap);
        heap.push_faults([Fault::DropAfterProcessing, Fault::DropBeforeProcessing]);
        let err = http.track(&items("alice", "after", 2)).await.unwrap_err();
        assert!(!err.is_empty());
        assert_eq!(
            heap.report().key_count("after0"),
            1,
            "recorded, not acknowledged"
        );
        http.track(&items("alice", "before", 2)).await.unwrap_err();
        let report = heap.report();
        assert_eq!(report.key_count("before0"), 0);
        assert_eq!(report.dropped_connections[TRACK_PATH], 2);
        assert_eq!(report.requests.values().sum::<u64>(), 0);
        assert_eq!(
            http.track(&items("alice", "then", 1)).await.unwrap().status,
            200
        );
    }

    #[tokio::test]
    async fn delay_processes_at_once_and_answers_late() {
        let heap = HeapStandIn::start(StandInConfig::heap());
        let http = Http::new(&heap);
        let short = Duration::from_millis(50);
        heap.push_fault(Fault::Delay(short));
        let started = Instant::now();
        assert_eq!(
            http.track(&items("alice", "d", 1)).await.unwrap().status,
            200
        );
        assert!(started.elapsed() >= short);

        // A delay far beyond the client's patience: the items are recorded, no answer comes.
        heap.push_fault(Fault::Delay(HOUR));
        let slow = tokio::time::timeout(
            Duration::from_millis(300),
            http.track(&items("alice", "slow", 1)),
        )
        .await;
        assert!(slow.is_err(), "answered before the delay");
        let deadline = Instant::now() + Duration::from_secs(30);
        while heap.report().key_count("slow0") == 0 {
            assert!(
                Instant::now() < deadline,
                "the slow request was never processed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn sticky_modes() {
        let heap = HeapStandIn::start(StandInConfig::heap());
        let http = Http::new(&heap);
        heap.set_down(true);
        let got = http.track(&items("alice", "k", 1)).await.unwrap();
        assert_eq!(got.status, 503);
        assert_eq!(http.status("/elsewhere", &serde_json::json!({})).await, 503);
        assert_eq!(
            http.track(&items("alice", "k", 1)).await.unwrap().status,
            503
        );
        heap.set_mode(Mode::DropConnections);
        http.track(&items("alice", "k", 1)).await.unwrap_err();
        heap.set_down(false);
        assert_eq!(
            http.track(&items("alice", "k", 1)).await.unwrap().status,
            200
        );
        let report = heap.report();
        assert_eq!(report.requests_with(TRACK_PATH, 503), 2);
        assert_eq!(report.dropped_connections[TRACK_PATH], 1);
        assert_eq!(report.key_count("k0"), 1);
        assert_eq!(report.faults_injected, 0);
    }

    #[tokio::test]
    async fn poisoned_key_rejects_its_request() {
        let heap = HeapStandIn::start(StandInConfig::heap());
        let http = Http::new(&heap);
        heap.poison("p1");
        let got = http.track(&items("alice", "p", 3)).await.unwrap();
        assert_eq!(got.status, 400);
        assert!(got.body.contains("\"p1\""), "{}", got.body);
        assert_eq!(heap.report().events_accepted, 0);
        let mut others = items("alice", "p", 3);
        others.remove(1);
        assert_eq!(http.track(&others).await.unwrap().status, 200);
        heap.unpoison("p1");
        assert_eq!(
            http.track(&items("alice", "p", 3)).await.unwrap().status,
            200
        );
        let report = heap.report();
        assert_eq!(report.poison_rejections, 1);
        assert_eq!(report.shape_violation_count, 0);
        assert_eq!(report.key_count("p0"), 2);
        assert_eq!(report.key_count("p1"), 1);
        // The refused request was received all the same: it counts in the offered windows.
        assert_eq!(report.limit_rejections, 0);
        assert_eq!(report.refused_track_batches.len(), 1);
        assert_eq!(report.max_app_window.events, 5);
        assert_eq!(report.max_offered_app_window.events, 8);
    }

    #[tokio::test]
    async fn thirty_thousand_events_exactly_once() {
        let heap = HeapStandIn::start(StandInConfig {
            window: HOUR,
            ..measure_only()
        });
        let http = Arc::new(Http::new(&heap));
        let identities = 40;
        let mut tasks = tokio::task::JoinSet::new();
        for batch in 0..30 {
            let http = Arc::clone(&http);
            tasks.spawn(async move {
                let events: Vec<TrackItem> = (0..1000)
                    .map(|i| item(&format!("user-{}", i % identities), &format!("{batch}-{i}")))
                    .collect();
                http.track(&events).await.unwrap().status
            });
        }
        while let Some(status) = tasks.join_next().await {
            assert_eq!(status.unwrap(), 200);
        }
        let report = heap.report();
        let expected: Vec<String> = (0..30)
            .flat_map(|b| (0..1000).map(move |i| format!("{b}-{i}")))
            .collect();
        report
            .check_exactly_once(expected.iter().map(String::as_str))
            .unwrap();
        assert_eq!(report.events_accepted, 30_000);
        assert_eq!(report.apps[APP].identities.len(), identities);
        assert_eq!(report.max_identity_window.events, 750);
        assert_eq!(report.max_app_window.events, 30_000);
        assert!(
            report.over_budget(),
            "30,000 events in an hour is over 15,000"
        );
    }

    #[tokio::test]
    async fn stopped_stand_in_refuses_connections() {
        let heap = HeapStandIn::start(StandInConfig::heap());
        let http = Http::new(&heap);
        assert_eq!(
            http.track(&items("alice", "k", 1)).await.unwrap().status,
            200
        );
        heap.shutdown().await;
        assert!(http.track(&items("alice", "k", 1)).await.is_err());
    }
}
