//! The queue seam: what ingest, delivery, `dlq` and the metrics need from the durable queue,
//! as one trait ([`Queue`]), and the stores behind it.
//!
//! Why a seam: the queue is the one piece whose home changes with the deployment. One
//! process on one volume keeps it in SQLite ([`sqlite::SqliteQueue`], the default); several
//! replicas keep it in a replicated store. The rest of the forwarder sees only this trait, so
//! a store plugs in here without touching ingest, delivery or the mapping (what several
//! replicas add on top — one holder per lane, budget state that travels with it — belongs to
//! the lanes), and one conformance suite (`tests/queue/`) holds every store to the same
//! promises:
//!
//! - **append** is atomic per request and durable before it returns (the 200 follows it);
//!   an event id accepted within the dedup window is not queued again;
//! - **ready** reads a lane's due parked events, then its fresh ones in FIFO order, bounded in
//!   count and bytes;
//! - **apply** changes queued events and dead letters ([`QueueOp`]) atomically: acknowledge,
//!   park until a time, count a failed attempt, dead-letter, replay, purge;
//! - the **totals** stay exact across every change and every restart;
//! - a **closed** queue refuses reads and writes alike;
//! - **deletions** (product.md §7) change it in the transaction that acknowledges them: the
//!   append remembers which Heap user each event is for (the identity map), a deletion removes
//!   the user's queued and dead-lettered events on its route, leaves a tombstone for the dedup
//!   window (later events of the user are acknowledged and dropped) and a ledger entry, whose
//!   status [`QueueOp`]s move it on;
//! - what shapes the next requests to Heap outlives the process (product.md §9): a lane's
//!   [`SavedLane`] (budget state, pause, deferred identities) and, per identity and user
//!   property, the Braze event time of the value Heap last accepted ([`PropertyStamp`],
//!   recorded by the [`QueueOp::Ack`] of that update).
//!
//! A `seq` names one queued event (or one dead letter) for as long as it stays where it is;
//! fresh events of a lane come in increasing `seq` order, which the lane's cursor relies on.
//!
//! The trait is object-safe (futures are boxed), so the process holds one
//! `Arc<dyn Queue>` chosen at start-up.

pub mod jetstream;
mod model;
pub mod sqlite;

use std::future::Future;
use std::pin::Pin;

pub use model::{
    AppendError, AppendReceipt, Appended, DeadLetter, DeadLetterItem, DeadLetterQuery,
    DeletionQuery, DeletionReceipt, DeletionRecord, DeletionStatus, DeletionSummary, HeapUser,
    NewEvent, OpOutcome, PropertyStamp, QueueError, QueueOp, QueueTotals, QueuedEvent, Ready,
    ReadyRequest, ReplayItem, SavedIdentity, SavedLane, StoredEvent, unix_micros, unix_millis,
};

/// The future a [`Queue`] method returns.
pub type QueueFuture<'a, T, E = QueueError> =
    Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'a>>;

/// The durable queue: queued events per delivery lane, their delivery state, the dead
/// letters, and the dedup memory of accepted event ids.
pub trait Queue: Send + Sync + std::fmt::Debug {
    /// Stores a request's events atomically (all or none) and durably: when this returns
    /// `Ok`, a crash loses none of them. Ids accepted within the dedup window are
    /// acknowledged without being stored again (`false` in the receipt). Events with
    /// [`NewEvent::dead_letter`] go straight to the dead letters.
    fn append(&self, events: Vec<NewEvent>) -> QueueFuture<'_, AppendReceipt, AppendError>;

    /// The ready events of one lane (see [`ReadyRequest`] and [`Ready`]).
    fn ready(&self, request: ReadyRequest) -> QueueFuture<'_, Ready>;

    /// Applies one change atomically and returns what it changed. Changes to events that are
    /// gone (acknowledged or moved meanwhile) change nothing and are not errors.
    fn apply(&self, op: QueueOp) -> QueueFuture<'_, OpOutcome>;

    /// A page of dead letters, oldest first.
    fn dead_letters(&self, query: DeadLetterQuery) -> QueueFuture<'_, Vec<DeadLetter>>;

    /// Dead letters by reason, sorted by reason.
    fn dead_letter_counts(&self) -> QueueFuture<'_, Vec<(String, u64)>>;

    /// The Heap app ids that have queued events, sorted.
    fn queued_app_ids(&self) -> QueueFuture<'_, Vec<String>>;

    /// `received_at` (UNIX ms) of the oldest queued event.
    fn oldest_received_at(&self) -> QueueFuture<'_, Option<i64>>;

    /// A page of the deletion ledger, by id.
    fn deletions(&self, query: DeletionQuery) -> QueueFuture<'_, Vec<DeletionRecord>>;

    /// Open ledger entries ([`DeletionStatus::OPEN`]) per route and status: how many, how many
    /// were received before `overdue_before` (UNIX ms), and the oldest.
    fn deletion_summary(&self, overdue_before: i64) -> QueueFuture<'_, Vec<DeletionSummary>>;

    /// What the lane of `app_id` saved last ([`QueueOp::SaveLane`]), if anything.
    fn saved_lane(&self, app_id: &str) -> QueueFuture<'_, Option<SavedLane>>;

    /// The stamps recorded for these keys ([`PropertyStamp::key`]); keys never stamped are
    /// left out.
    fn property_stamps(&self, keys: Vec<i64>) -> QueueFuture<'_, Vec<PropertyStamp>>;

    /// The running totals, without I/O.
    fn totals(&self) -> QueueTotals;

    /// Makes everything acknowledged durable and releases the store. Later calls fail with
    /// [`QueueError::Closed`] (appends with [`AppendError::Closed`]).
    fn close(&self) -> QueueFuture<'_, ()>;
}
