//! What goes in and out of a [`super::Queue`], whichever store holds it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// Milliseconds since the UNIX epoch: the time unit of every stored time.
pub fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Microseconds since the UNIX epoch: saved budget refill times, finer than a budget period.
pub fn unix_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// An event to append, already validated. `payload` is the raw Currents event JSON.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The route name (configuration), or empty when unroutable.
    pub route: Arc<str>,
    /// The Heap app id whose delivery lane sends it (empty when unroutable).
    pub app_id: Arc<str>,
    /// The `workspace` query parameter of the request, kept so a replay can route again.
    pub workspace: Option<Arc<str>>,
    /// Store straight into the dead-letter store with this reason (e.g. `unroutable`).
    pub dead_letter: Option<&'static str>,
    pub event_id: String,
    pub event_type: String,
    pub identity: Option<String>,
    pub event_time: i64,
    pub payload: Bytes,
    /// `user.user_id` (the Braze id): the key of the identity map, the tombstones and a
    /// deletion's purge.
    pub braze_user_id: Option<String>,
    /// The Heap user the route's mapping sends this event for, remembered in the identity map
    /// under `braze_user_id`.
    pub heap_user: Option<HeapUser>,
    /// A `users.UserDeleteRequest` with a `braze_user_id`: not queued; it purges the user's
    /// events on its route, leaves a tombstone and a ledger entry (product.md §7).
    pub deletion: bool,
}

/// What happened to one event of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Stored: queued, or dead-lettered when the event asked for it.
    Queued,
    /// Accepted within the dedup window already: acknowledged, not stored again.
    Duplicate,
    /// Its Braze user was deleted (a tombstone): acknowledged and dropped, never delivered.
    DeletedUser,
    /// A deletion, recorded in the ledger.
    Deletion(DeletionReceipt),
}

/// What happened to each event of an append, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppendReceipt {
    pub outcomes: Vec<Appended>,
}

impl AppendReceipt {
    /// Events new to the dedup window (everything but duplicates).
    pub fn accepted(&self) -> usize {
        self.outcomes.len() - self.duplicates()
    }
    /// Per event: whether it was new to the dedup window (not a duplicate).
    pub fn fresh(&self) -> Vec<bool> {
        self.outcomes
            .iter()
            .map(|o| *o != Appended::Duplicate)
            .collect()
    }
    pub fn duplicates(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| **o == Appended::Duplicate)
            .count()
    }
}

/// Why an append was refused. Every variant is transient: nothing was stored and the sender
/// should retry later (503).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AppendError {
    #[error("the backlog is over its quota of {max} bytes")]
    OverQuota { max: u64 },
    #[error("the disk of the data directory is full or below its free-space reserve")]
    DiskFull,
    #[error("the store is busy: too many requests are waiting for a commit")]
    Busy,
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("the store is closed")]
    Closed,
}

/// Why a read or a change of the queue failed. Nothing was changed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum QueueError {
    /// The queue was closed (shutdown): the change is left for the next start.
    #[error("the queue is closed")]
    Closed,
    /// The store failed; trying again later may succeed.
    #[error("the queue is unavailable: {0}")]
    Unavailable(String),
}

/// An event as stored: what ingest received and where it goes. Queued events and dead
/// letters both carry one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub route: String,
    pub app_id: String,
    pub workspace: Option<String>,
    pub event_id: String,
    pub event_type: String,
    pub identity: Option<String>,
    pub event_time: i64,
    pub received_at: i64,
    /// Delivery attempts that failed so far.
    pub attempts: i64,
    /// The raw Currents event JSON.
    pub payload: Vec<u8>,
}

/// One queued event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEvent {
    /// Its position in the queue: FIFO order, and the key of every change to it.
    pub seq: i64,
    /// Parked until then (UNIX ms); 0 when never parked.
    pub not_before: i64,
    pub event: StoredEvent,
}

/// One dead-lettered event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its own sequence in the dead-letter store (the `seq` that `dlq list` prints).
    pub seq: i64,
    pub reason: String,
    pub detail: Option<String>,
    pub dead_at: i64,
    pub event: StoredEvent,
}

/// What a delivery lane asks for: its ready events, bounded in count and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyRequest {
    /// The lane: one Heap app id.
    pub app_id: String,
    /// Fresh events are those after this `seq` (the lane's cursor).
    pub after: i64,
    /// Parked events whose `not_before` is at or before `now` (UNIX ms) are due.
    pub now: i64,
    pub max_events: usize,
    /// Stop before the payloads read would exceed this; the first event is always read, so
    /// one event larger than the bound still makes progress.
    pub max_bytes: usize,
    /// Events the lane holds already: passed over, counting neither as events nor bytes.
    pub held: HashSet<i64>,
}

/// The answer to a [`ReadyRequest`]: due parked events first (soonest first), then fresh ones
/// in FIFO order, together within the request's bounds. A fresh event may still be parked
/// in the future (parked before a restart): the lane moves its cursor past it and takes it
/// when it comes back as due. An event both due and after the cursor may be in both lists
/// (the lane loads it once).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ready {
    pub due: Vec<QueuedEvent>,
    pub fresh: Vec<QueuedEvent>,
}

/// A page of dead letters, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterQuery {
    /// Only this reason.
    pub reason: Option<String>,
    /// Dead letters after this `seq`.
    pub after: i64,
    pub limit: usize,
    /// Bounded like [`ReadyRequest::max_bytes`]: a page of 900 KB events stays small.
    pub max_bytes: usize,
}

/// Moves a dead letter back to the queue, to the route and app id the configuration gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayItem {
    /// The dead letter's `seq`.
    pub seq: i64,
    pub route: String,
    pub app_id: String,
    /// A `users.UserDeleteRequest` (dead-lettered as unroutable, say): replaying it accepts
    /// the deletion on `route` (purge, tombstone, ledger entry) instead of queueing it.
    pub deletion: bool,
    /// The Heap user the route's mapping sends the event for: remembered in the identity map
    /// as at ingest (an event dead-lettered as unroutable never was).
    pub heap_user: Option<HeapUser>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterItem {
    /// The queued event's `seq`.
    pub seq: i64,
    /// A bounded label: `rejected`, `expired`, `anonymous`, `unroutable`, ...
    pub reason: String,
    /// Free text for operators (Heap's response body, say); never a metric label.
    pub detail: Option<String>,
}

/// One change requested by the delivery loop or the `dlq` command, applied atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueOp {
    /// Heap answered 2xx (or the event was skipped): remove the events from the queue, and
    /// remember the Braze event time of each user property they set in Heap (`stamps`), so a
    /// late, older update of the same property is not sent (product.md §9).
    Ack {
        seqs: Vec<i64>,
        stamps: Vec<PropertyStamp>,
    },
    /// Not before `not_before` (UNIX ms): an identity over its budget, or a retry.
    /// `(seq, not_before)` pairs.
    Park { items: Vec<(i64, i64)> },
    /// A delivery attempt failed: count it and keep the error for operators.
    Attempt { seqs: Vec<i64>, error: String },
    /// Move events to the dead-letter store.
    DeadLetter { items: Vec<DeadLetterItem> },
    /// Move every queued event of a Heap app id to the dead-letter store (no lane serves it).
    DeadLetterApp { app_id: String, reason: String },
    /// Move dead letters back to the queue as fresh events (no failed attempts, not parked,
    /// `received_at` now); an event of a user deleted on its new route is dropped instead, a
    /// deletion is accepted.
    Replay { items: Vec<ReplayItem> },
    /// Delete dead letters (all, one reason, and/or these `seq`s).
    Purge {
        reason: Option<String>,
        ids: Option<Vec<i64>>,
    },
    /// Heap accepted a deletion request for these ledger entries: `submitted`, with its id.
    DeletionsSubmitted { ids: Vec<i64>, request_id: String },
    /// Heap reports the request complete: its `submitted` entries become `complete`.
    DeletionsCompleted { request_id: String },
    /// A failed attempt to send these entries: counted, Heap's answer kept; `failed` when the
    /// answer is final (a refused key, a refused request), else the status stays.
    DeletionsAttempt {
        ids: Vec<i64>,
        error: String,
        failed: bool,
    },
    /// Replaces a lane's saved [`SavedLane`]: written before a request that spends its budget,
    /// and when a pause starts, so a restart continues from it.
    SaveLane(SavedLane),
    /// Moves entries from one status to another: `deletions retry` (`failed` →
    /// `pending_submit`), a key configured (`unconfigured` → `pending_submit`) or missing
    /// (`pending_submit` → `unconfigured`), a request id Heap no longer knows (`submitted` →
    /// `pending_submit`). Only entries in `from` change; `ids` and `routes` narrow it further.
    DeletionsMove {
        from: DeletionStatus,
        to: DeletionStatus,
        ids: Option<Vec<i64>>,
        routes: Option<Vec<String>>,
    },
}

impl QueueOp {
    /// Acknowledges events that set no user property in Heap.
    pub fn ack(seqs: Vec<i64>) -> Self {
        QueueOp::Ack {
            seqs,
            stamps: Vec::new(),
        }
    }
}

/// The Braze event time (UNIX seconds) of the latest value of one user property that Heap
/// accepted, for one Heap app id and identity. `key` is [`PropertyStamp::key`] of the three:
/// the store keeps no identity or property name, only this 64-bit key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PropertyStamp {
    pub key: i64,
    pub event_time: i64,
}

impl PropertyStamp {
    /// The key of one user property of one identity in one Heap app: FNV-1a (64 bits) over
    /// the three, each length-prefixed so no two triples share their bytes. Two triples share
    /// a key with odds of about n²/2⁶⁵ for n stamped properties (10⁻⁶ at 6 million); a
    /// collision can only hold back an update that is older than the other property's.
    pub fn key(app_id: &str, identity: &str, property: &str) -> i64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for part in [app_id, identity, property] {
            for b in (part.len() as u64)
                .to_le_bytes()
                .iter()
                .chain(part.as_bytes())
            {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        h as i64
    }
}

/// What a delivery lane (one Heap app id) saves so that a restart, or a crash loop, continues
/// where it stopped instead of starting with a fresh budget (product.md §9). Times are
/// wall-clock UNIX time, so they mean the same to the next process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavedLane {
    pub app_id: String,
    /// When the app budget is whole again (its GCRA state), UNIX µs; 0 or past: it is whole.
    pub app_budget_refilled_at: i64,
    /// End of a `Retry-After` or backoff pause, UNIX ms; 0 or past: none.
    pub paused_until: i64,
    /// The identities whose budget state matters to the next start: spent beyond what a fresh
    /// start may add, or deferred. Replaces the lane's saved identities.
    pub identities: Vec<SavedIdentity>,
}

/// One identity's part of a [`SavedLane`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavedIdentity {
    pub identity: String,
    /// When its budget is whole again, UNIX µs.
    pub budget_refilled_at: i64,
    /// Deferred until then (UNIX ms; 0: not deferred), its next park slot from `next_slot`.
    pub deferred_until: i64,
    pub next_slot: i64,
}

/// What an operation changed: rows affected and the queue totals' deltas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpOutcome {
    pub rows: u64,
    pub queue_events_delta: i64,
    pub queue_bytes_delta: i64,
}

/// Running totals, cheap to read (no I/O): what the gauges and `/readyz` show.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueTotals {
    pub events: u64,
    /// Payload bytes of the queued events (the quota counts these).
    pub bytes: u64,
    /// Event ids the dedup window remembers.
    pub dedup_ids: u64,
    /// False while the store fails to commit (for a reason other than a full disk).
    pub healthy: bool,
}

/// The Heap user an event is sent for, as the identity map and the deletion ledger keep it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HeapUser {
    /// A Heap `identity` (`user.external_user_id`).
    Identity(String),
    /// A synthetic Heap `user_id` (decimal, below 2^53).
    UserId(String),
}

impl HeapUser {
    /// The stored kind: `identity` or `user_id`.
    pub fn kind(&self) -> &'static str {
        match self {
            HeapUser::Identity(_) => "identity",
            HeapUser::UserId(_) => "user_id",
        }
    }

    pub fn value(&self) -> &str {
        match self {
            HeapUser::Identity(v) | HeapUser::UserId(v) => v,
        }
    }

    /// From a stored kind and value; `None` for an unknown kind.
    pub fn from_parts(kind: &str, value: String) -> Option<Self> {
        match kind {
            "identity" => Some(HeapUser::Identity(value)),
            "user_id" => Some(HeapUser::UserId(value)),
            _ => None,
        }
    }
}

/// Where one deletion stands (product.md §7). The names are the ledger's and `deletions list`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeletionStatus {
    /// Recorded; waiting to be sent to Heap.
    PendingSubmit,
    /// Heap accepted the request (its id is recorded); waiting for `complete`.
    Submitted,
    /// Heap reports the deletion complete.
    Complete,
    /// Heap refused it (its answer is recorded); `deletions retry` sends it again.
    Failed,
    /// No Heap API key for its route: purged locally, sent once a key is configured.
    Unconfigured,
    /// The Braze user was never seen: nothing to send to Heap (the local tombstone applies).
    UnknownUser,
}

impl DeletionStatus {
    pub const ALL: [DeletionStatus; 6] = [
        DeletionStatus::PendingSubmit,
        DeletionStatus::Submitted,
        DeletionStatus::Complete,
        DeletionStatus::Failed,
        DeletionStatus::Unconfigured,
        DeletionStatus::UnknownUser,
    ];

    /// The statuses of a deletion Heap still owes (not `complete`, not `unknown_user`).
    pub const OPEN: [DeletionStatus; 4] = [
        DeletionStatus::PendingSubmit,
        DeletionStatus::Submitted,
        DeletionStatus::Failed,
        DeletionStatus::Unconfigured,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            DeletionStatus::PendingSubmit => "pending_submit",
            DeletionStatus::Submitted => "submitted",
            DeletionStatus::Complete => "complete",
            DeletionStatus::Failed => "failed",
            DeletionStatus::Unconfigured => "unconfigured",
            DeletionStatus::UnknownUser => "unknown_user",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == s)
    }

    pub fn is_open(&self) -> bool {
        Self::OPEN.contains(self)
    }
}

impl std::fmt::Display for DeletionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of the deletion ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletionRecord {
    /// Its position in the ledger.
    pub id: i64,
    pub route: String,
    pub braze_user_id: String,
    /// The Currents event id of the `users.UserDeleteRequest`.
    pub event_id: String,
    /// Every Heap user the forwarder sent (or would send) for this Braze user on this route.
    pub users: Vec<HeapUser>,
    /// UNIX ms.
    pub received_at: i64,
    pub status: DeletionStatus,
    /// Heap's `deletion_request_id`, once Heap accepted the request.
    pub request_id: Option<String>,
    /// UNIX ms of the last change.
    pub updated_at: i64,
    /// Failed attempts to send it (transient errors included).
    pub attempts: i64,
    /// Heap's answer (or the connection error) of the last failed attempt.
    pub last_error: Option<String>,
    /// Queued and dead-lettered events of the user removed when the deletion was accepted.
    pub purged_events: i64,
}

/// A page of the deletion ledger, by `id`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeletionQuery {
    /// Only these statuses (empty: all).
    pub statuses: Vec<DeletionStatus>,
    /// Only these routes (`None`: all).
    pub routes: Option<Vec<String>>,
    /// Entries after this `id`.
    pub after: i64,
    pub limit: usize,
}

/// Ledger entries of one route in one status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletionSummary {
    pub route: String,
    pub status: DeletionStatus,
    pub count: u64,
    /// How many of them were received before the `overdue_before` of the query.
    pub overdue: u64,
    /// `received_at` (UNIX ms) of the oldest of them.
    pub oldest_received_at: i64,
}

/// What accepting one `users.UserDeleteRequest` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeletionReceipt {
    /// Whether the identity map knew the user (else the ledger says `unknown_user`).
    pub known_user: bool,
    /// Queued events removed, as `(app_id, seq)`: a lane holding one in memory drops it.
    pub purged_queued: Vec<(String, i64)>,
    /// Dead letters removed.
    pub purged_dead_letters: u64,
}
