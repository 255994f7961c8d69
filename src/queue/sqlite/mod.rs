//! The default store: one SQLite database in `--data-dir`.
//!
//! Why SQLite: Heap drains ~250 events/s while Braze can burst millions, so the backlog lives on
//! disk for hours and must survive `kill -9` and power loss. SQLite in WAL mode with
//! `synchronous=FULL` gives atomic, fsync'd commits, a format every SRE can inspect with the
//! `sqlite3` shell, and bounded memory however large the backlog grows.
//!
//! Why one writer thread: every write (appends; acks, retries and dead letters from the
//! delivery loop) goes through [`Writer`], which owns the only read-write connection. It takes
//! every request waiting in its channel, applies them in **one** transaction and syncs once, so
//! many concurrent ingest requests share one fsync (group commit), and the single owner makes
//! dedup and quota checks race-free. Reads use a small pool of read-only connections; WAL lets
//! them run beside the writer.
//!
//! Layout (schema version 3; `schema.rs` migrates older stores):
//! - `queue`: one row per queued event — `seq` (FIFO order), `route`, `event_id`, `event_type`,
//!   `identity`, `event_time`, `received_at`, `attempts`, `not_before`, `last_error`, `payload`
//!   (the raw Currents event JSON as received), `braze_user_id` and its `user_key` (for a
//!   deletion's purge; `user_key` rides in the lane index `(app_id, seq, user_key)`).
//! - `dead_letter`: the same event columns plus `reason`, `detail` and `dead_at`.
//! - `dedup_log`: event ids accepted within the dedup window, append-only, with the time they
//!   were first seen; see [`dedup`] for why it is not an index.
//! - `stats`: running totals of the queue (events, payload bytes), kept in the same transactions
//!   as the rows they count, so start-up never has to scan the backlog.
//! - `identity_log`, `identity_map`, `tombstone`, `deletion`: what deletions need (product.md
//!   §7); see `privacy.rs`.
//! - `lane_state`, `lane_identity`, `property_stamp`: what shapes the next requests to Heap
//!   across restarts (product.md §9); see `continuity.rs`.

mod append;
mod continuity;
pub(crate) mod dedup;
mod ops;
mod privacy;
mod schema;
mod store;
mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub(crate) use privacy::user_key;
pub use store::{DataDirLock, QueueStats, Reader, Store, StoreError};
pub use writer::{Writer, WriterConfig, WriterHandle};

use super::{
    AppendError, AppendReceipt, DeadLetter, DeadLetterQuery, DeletionQuery, DeletionRecord,
    DeletionSummary, NewEvent, OpOutcome, PropertyStamp, Queue, QueueError, QueueFuture, QueueOp,
    QueueTotals, Ready, ReadyRequest, SavedLane,
};

/// The SQLite [`Queue`]: the writer thread for every change, pooled read-only connections
/// for reads (each read runs on the blocking pool).
#[derive(Debug)]
pub struct SqliteQueue {
    store: Store,
    writer: Writer,
    handle: Mutex<Option<WriterHandle>>,
    readers: Arc<Mutex<Vec<Reader>>>,
    /// Set by [`Queue::close`]: reads are refused from then on, as writes are.
    closed: Arc<AtomicBool>,
    /// Held by `serve` until the queue closes: one process per data directory.
    lock: Mutex<Option<DataDirLock>>,
}

impl SqliteQueue {
    /// The queue of `serve`: locks the data directory (a second forwarder on it is refused),
    /// opens or creates the database, loads the dedup window and starts the writer.
    pub fn open(data_dir: &Path, config: WriterConfig) -> Result<Self, StoreError> {
        let lock = DataDirLock::acquire(data_dir)?;
        let store = Store::open(data_dir)?;
        let (writer, handle) = Writer::spawn(&store, config)?;
        Ok(Self::with(store, writer, handle, Some(lock)))
    }

    /// The queue of maintenance commands (`dlq`): no lock, so it also works beside a running
    /// server (SQLite serializes the writes); appends are refused.
    pub fn open_maintenance(data_dir: &Path) -> Result<Self, StoreError> {
        let store = Store::open(data_dir)?;
        let (writer, handle) = Writer::spawn_maintenance(&store)?;
        Ok(Self::with(store, writer, handle, None))
    }

    fn with(store: Store, writer: Writer, handle: WriterHandle, lock: Option<DataDirLock>) -> Self {
        Self {
            store,
            writer,
            handle: Mutex::new(Some(handle)),
            readers: Arc::new(Mutex::new(Vec::new())),
            closed: Arc::new(AtomicBool::new(false)),
            lock: Mutex::new(lock),
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        self.store.path()
    }

    /// Runs `f` on a pooled read-only connection, on the blocking pool. A connection that
    /// failed is dropped rather than returned to the pool.
    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Reader) -> rusqlite::Result<T> + Send + 'static,
    ) -> QueueFuture<'_, T> {
        let pool = Arc::clone(&self.readers);
        let store = self.store.clone();
        let closed = Arc::clone(&self.closed);
        Box::pin(async move {
            if closed.load(Ordering::SeqCst) {
                return Err(QueueError::Closed);
            }
            tokio::task::spawn_blocking(move || {
                let pooled = pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
                let reader = match pooled {
                    Some(r) => r,
                    None => store
                        .reader()
                        .map_err(|e| QueueError::Unavailable(e.to_string()))?,
                };
                let result = f(&reader).map_err(|e| QueueError::Unavailable(e.to_string()));
                if result.is_ok() {
                    pool.lock().unwrap_or_else(|p| p.into_inner()).push(reader);
                }
                result
            })
            .await
            .map_err(|e| QueueError::Unavailable(e.to_string()))?
        })
    }
}

impl Queue for SqliteQueue {
    fn append(&self, events: Vec<NewEvent>) -> QueueFuture<'_, AppendReceipt, AppendError> {
        Box::pin(self.writer.append(events))
    }

    fn ready(&self, request: ReadyRequest) -> QueueFuture<'_, Ready> {
        self.read(move |r| r.ready(&request))
    }

    fn apply(&self, op: QueueOp) -> QueueFuture<'_, OpOutcome> {
        Box::pin(self.writer.apply(op))
    }

    fn dead_letters(&self, query: DeadLetterQuery) -> QueueFuture<'_, Vec<DeadLetter>> {
        self.read(move |r| {
            r.dead_letters_within(
                query.reason.as_deref(),
                query.after,
                query.limit,
                query.max_bytes,
            )
        })
    }

    fn dead_letter_counts(&self) -> QueueFuture<'_, Vec<(String, u64)>> {
        self.read(|r| r.dead_letter_counts())
    }

    fn queued_app_ids(&self) -> QueueFuture<'_, Vec<String>> {
        self.read(|r| r.queued_app_ids())
    }

    fn oldest_received_at(&self) -> QueueFuture<'_, Option<i64>> {
        self.read(|r| r.oldest_received_at())
    }

    fn deletions(&self, query: DeletionQuery) -> QueueFuture<'_, Vec<DeletionRecord>> {
        self.read(move |r| r.deletions(&query))
    }

    fn deletion_summary(&self, overdue_before: i64) -> QueueFuture<'_, Vec<DeletionSummary>> {
        self.read(move |r| r.deletion_summary(overdue_before))
    }

    fn saved_lane(&self, app_id: &str) -> QueueFuture<'_, Option<SavedLane>> {
        let app_id = app_id.to_owned();
        self.read(move |r| r.saved_lane(&app_id))
    }

    fn property_stamps(&self, keys: Vec<i64>) -> QueueFuture<'_, Vec<PropertyStamp>> {
        self.read(move |r| r.property_stamps(&keys))
    }

    fn totals(&self) -> QueueTotals {
        let stats = self.store.stats();
        QueueTotals {
            events: stats.events(),
            bytes: stats.bytes(),
            dedup_ids: stats.dedup_ids(),
            healthy: stats.is_healthy(),
        }
    }

    fn close(&self) -> QueueFuture<'_, ()> {
        self.closed.store(true, Ordering::SeqCst);
        let handle = self.handle.lock().unwrap_or_else(|p| p.into_inner()).take();
        let readers = Arc::clone(&self.readers);
        Box::pin(async move {
            readers.lock().unwrap_or_else(|p| p.into_inner()).clear();
            if let Some(handle) = handle {
                tokio::task::spawn_blocking(move || handle.close())
                    .await
                    .map_err(|e| QueueError::Unavailable(e.to_string()))?;
            }
            // Only now may another process open the directory.
            drop(self.lock.lock().unwrap_or_else(|p| p.into_inner()).take());
            Ok(())
        })
    }
}

/// What only the SQLite store does; what every store does is in `tests/queue/`.
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;

    fn config() -> WriterConfig {
        WriterConfig {
            max_queue_bytes: 1 << 30,
            min_free_disk_bytes: 0,
            dedup_window: Duration::from_secs(3600),
            dedup_capacity: 1000,
            identity_map_retention: Duration::from_secs(3600),
        }
    }

    fn event(id: &str) -> NewEvent {
        NewEvent {
            route: Arc::from("default"),
            app_id: Arc::from("1"),
            workspace: None,
            dead_letter: None,
            event_id: id.into(),
            event_type: "users.messages.email.Send".into(),
            identity: Some("u".into()),
            event_time: 1,
            payload: Bytes::from_static(b"{}"),
            braze_user_id: None,
            heap_user: None,
            deletion: false,
        }
    }

    #[tokio::test]
    async fn below_the_free_disk_reserve_appends_are_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let config = WriterConfig {
            min_free_disk_bytes: u64::MAX / 2,
            ..config()
        };
        let q = SqliteQueue::open(dir.path(), config).unwrap();
        assert_eq!(q.append(vec![event("a")]).await, Err(AppendError::DiskFull));
        assert_eq!(q.totals().events, 0);
    }

    /// Every 200 rests on these two settings of the connections that write (the writer of
    /// `serve` and of maintenance commands takes its connection from `Store::connect`).
    #[tokio::test]
    async fn every_connection_that_writes_is_wal_with_a_full_sync() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let conn = store.connect().unwrap();
        assert_eq!(
            store::durability(&conn).unwrap(),
            ("wal".to_owned(), 2),
            "journal_mode, synchronous"
        );
        let q = SqliteQueue::open(dir.path(), config()).unwrap();
        q.append(vec![event("a")]).await.unwrap();
        q.close().await.unwrap();
        let m = SqliteQueue::open_maintenance(dir.path()).unwrap();
        m.close().await.unwrap();
        // Where WAL is impossible, SQLite keeps another mode without an error: refused.
        let memory = rusqlite::Connection::open_in_memory().unwrap();
        let refused = store::configure(&memory).unwrap_err().to_string();
        assert!(refused.contains("journal_mode=memory"), "{refused}");
    }

    #[tokio::test]
    async fn one_server_per_data_directory_and_maintenance_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let q = SqliteQueue::open(dir.path(), config()).unwrap();
        assert!(matches!(
            SqliteQueue::open(dir.path(), config()),
            Err(StoreError::Locked { .. })
        ));
        let m = SqliteQueue::open_maintenance(dir.path()).unwrap();
        assert!(matches!(
            m.append(vec![event("a")]).await,
            Err(AppendError::Unavailable(_))
        ));
        q.close().await.unwrap();
        m.close().await.unwrap();
        // Closing released the directory.
        SqliteQueue::open(dir.path(), config()).unwrap();
    }

    /// The schema of version 1 (before deletions), as that version created it.
    const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS queue (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    route       TEXT    NOT NULL,
    app_id      TEXT    NOT NULL,
    workspace   TEXT,
    event_id    TEXT    NOT NULL,
    event_type  TEXT    NOT NULL,
    identity    TEXT,
    event_time  INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    not_before  INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    payload     BLOB    NOT NULL
);
-- One delivery lane per Heap app id reads its events in FIFO order.
CREATE INDEX IF NOT EXISTS queue_app_seq ON queue (app_id, seq);
-- Only deferred or retried rows (not_before > 0) are indexed, so appends never touch it.
CREATE INDEX IF NOT EXISTS queue_deferred ON queue (app_id, not_before) WHERE not_before > 0;
CREATE TABLE IF NOT EXISTS dead_letter (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    route       TEXT    NOT NULL,
    app_id      TEXT    NOT NULL,
    workspace   TEXT,
    event_id    TEXT    NOT NULL,
    event_type  TEXT    NOT NULL,
    identity    TEXT,
    event_time  INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    attempts    INTEGER NOT NULL,
    reason      TEXT    NOT NULL,
    detail      TEXT,
    dead_at     INTEGER NOT NULL,
    payload     BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letter_reason ON dead_letter (reason, seq);
CREATE TABLE IF NOT EXISTS dedup_log (
    seq      INTEGER PRIMARY KEY,
    seen_at  INTEGER NOT NULL,
    event_id TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS stats (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    events INTEGER NOT NULL,
    bytes  INTEGER NOT NULL
);
INSERT OR IGNORE INTO stats (id, events, bytes) VALUES (1, 0, 0);
";

    #[tokio::test]
    async fn a_version_1_store_is_migrated_keeping_its_events() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = rusqlite::Connection::open(dir.path().join("queue.sqlite3")).unwrap();
            conn.execute_batch(SCHEMA_V1).unwrap();
            conn.execute_batch(
                "PRAGMA user_version = 1;
                 INSERT INTO queue (route, app_id, event_id, event_type, event_time, received_at,
                                    payload)
                 VALUES ('default', '1', 'old', 'users.messages.email.Send', 1, 1, '{}');
                 UPDATE stats SET events = 1, bytes = 2;",
            )
            .unwrap();
        }
        let q = SqliteQueue::open(dir.path(), config()).unwrap();
        assert_eq!(q.totals().events, 1);
        let new = NewEvent {
            braze_user_id: Some("braze-a".into()),
            heap_user: Some(crate::queue::HeapUser::Identity("ext-a".into())),
            ..event("new")
        };
        q.append(vec![new]).await.unwrap();
        let deletion = NewEvent {
            braze_user_id: Some("braze-a".into()),
            deletion: true,
            ..event("del")
        };
        let r = q.append(vec![deletion]).await.unwrap();
        let crate::queue::Appended::Deletion(d) = &r.outcomes[0] else {
            panic!("{r:?}");
        };
        assert!(d.known_user);
        assert_eq!(d.purged_queued.len(), 1, "the new event is purged");
        assert_eq!(q.totals().events, 1, "the old event (no Braze id) stays");
        q.close().await.unwrap();
        let conn = rusqlite::Connection::open(dir.path().join("queue.sqlite3")).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, 3);
        let lane_index: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'queue_lane'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(lane_index, 1);
    }
}
