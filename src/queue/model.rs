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
}

/// What happened to each event of an append, in order: `true` = queued, `false` = duplicate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppendReceipt {
    pub queued: Vec<bool>,
}

impl AppendReceipt {
    pub fn accepted(&self) -> usize {
        self.queued.iter().filter(|q| **q).count()
    }
    pub fn duplicates(&self) -> usize {
        self.queued.len() - self.accepted()
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
/// when it comes back as due.
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
    /// Heap answered 2xx (or the event was skipped): remove the events from the queue.
    Ack { seqs: Vec<i64> },
    /// Not before `not_before` (UNIX ms): an identity over its budget, or a retry.
    /// `(seq, not_before)` pairs.
    Park { items: Vec<(i64, i64)> },
    /// A delivery attempt failed: count it and keep the error for operators.
    Attempt { seqs: Vec<i64>, error: String },
    /// Move events to the dead-letter store.
    DeadLetter { items: Vec<DeadLetterItem> },
    /// Move every queued event of a Heap app id to the dead-letter store (no lane serves it).
    DeadLetterApp { app_id: String, reason: String },
    /// Move dead letters back to the queue as fresh events.
    Replay { items: Vec<ReplayItem> },
    /// Delete dead letters (all, one reason, and/or these `seq`s).
    Purge {
        reason: Option<String>,
        ids: Option<Vec<i64>>,
    },
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
