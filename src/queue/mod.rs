//! The durable local queue: queued events, their delivery state, dead letters, and the
//! dedup memory of accepted event ids — one SQLite database in `--data-dir`.
//!
//! Why SQLite: Heap drains ~250 events/s while Braze can burst millions, so the backlog lives on
//! disk for hours and must survive `kill -9` and power loss. SQLite in WAL mode with
//! `synchronous=FULL` gives atomic, fsync'd commits, a format every SRE can inspect with the
//! `sqlite3` shell, and bounded memory however large the backlog grows.
//!
//! Why one writer thread: every write (appends now; acks, retries and dead letters from the
//! delivery loop) goes through [`Writer`], which owns the only read-write connection. It takes
//! every request waiting in its channel, applies them in **one** transaction and syncs once, so
//! many concurrent ingest requests share one fsync (group commit), and the single owner makes
//! dedup and quota checks race-free. Readers use their own connections; WAL lets them run
//! beside the writer.
//!
//! Layout (schema version 1):
//! - `queue`: one row per queued event — `seq` (FIFO order), `route`, `event_id`, `event_type`,
//!   `identity`, `event_time`, `received_at`, `attempts`, `not_before`, `last_error`, `payload`
//!   (the raw Currents event JSON as received).
//! - `dead_letter`: the same event columns plus `reason`, `detail` and `dead_at`.
//! - `dedup_log`: event ids accepted within the dedup window, append-only, with the time they
//!   were first seen; see [`dedup`] for why it is not an index.
//! - `stats`: running totals of the queue (events, payload bytes), kept in the same transactions
//!   as the rows they count, so start-up never has to scan the backlog.

pub(crate) mod dedup;
mod ops;
mod store;
mod writer;

pub use ops::{DeadLetterItem, OpOutcome, QueueOp, ReplayItem};
pub use store::{
    DataDirLock, DeadLetter, QueueStats, QueuedEvent, Reader, Store, StoreError, unix_millis,
};
pub use writer::{AppendError, AppendReceipt, NewEvent, Writer, WriterConfig, WriterHandle};
