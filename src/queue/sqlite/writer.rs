//! The single writer thread: group commit, dedup, quota and disk-space checks.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::dedup::DedupIndex;
use super::ops;
use super::privacy::{Privacy, Staged};
use super::store::{QueueStats, Store, StoreError};
use crate::queue::{
    AppendError, AppendReceipt, NewEvent, OpOutcome, QueueError, QueueOp, unix_millis,
};

/// Upper bound of events committed in one transaction; keeps one commit's latency bounded.
const MAX_EVENTS_PER_COMMIT: usize = 20_000;
/// Requests waiting for the writer; more are refused with `Busy` (→ 503) instead of queuing in
/// memory.
const CHANNEL_CAPACITY: usize = 256;
/// How often the free space of the data directory is re-read.
const DISK_CHECK_EVERY: Duration = Duration::from_millis(500);
/// How often expired dedup entries are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub max_queue_bytes: u64,
    pub min_free_disk_bytes: u64,
    pub dedup_window: Duration,
    /// Most event ids remembered at once (bounds the dedup map's memory).
    pub dedup_capacity: usize,
    /// How long a Braze user → Heap user mapping is kept after it was last seen.
    pub identity_map_retention: Duration,
}

enum Command {
    Append {
        events: Vec<NewEvent>,
        reply: oneshot::Sender<Result<AppendReceipt, AppendError>>,
    },
    Op {
        op: QueueOp,
        reply: oneshot::Sender<Result<OpOutcome, QueueError>>,
    },
    Close,
}

impl Command {
    fn len(&self) -> usize {
        match self {
            Command::Append { events, .. } => events.len(),
            Command::Op { .. } => 1,
            Command::Close => 0,
        }
    }
}

/// Cloneable handle to the writer thread.
#[derive(Clone)]
pub struct Writer {
    tx: SyncSender<Command>,
}

/// Owns the writer thread; [`WriterHandle::close`] flushes, checkpoints and joins it.
pub struct WriterHandle {
    tx: SyncSender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer thread on its own connection to `store`.
    pub fn spawn(
        store: &Store,
        config: WriterConfig,
    ) -> Result<(Writer, WriterHandle), StoreError> {
        let sql = |source| StoreError::sqlite(store.path(), source);
        let conn = store.connect().map_err(sql)?;
        let cutoff = unix_millis() - config.dedup_window.as_millis() as i64;
        let dedup = DedupIndex::load(&conn, cutoff, config.dedup_capacity).map_err(sql)?;
        let privacy = Privacy::load(
            &conn,
            Privacy::tombstone_cutoff(unix_millis(), config.dedup_window),
        )
        .map_err(sql)?;
        Self::start(store, config, conn, Some(dedup), privacy)
    }

    /// A writer for maintenance (`dlq`): queue operations only. It neither loads nor prunes
    /// the dedup window, and refuses appends.
    pub fn spawn_maintenance(store: &Store) -> Result<(Writer, WriterHandle), StoreError> {
        let conn = store.connect().map_err(|source| StoreError::Sqlite {
            path: store.path().to_owned(),
            source,
        })?;
        let config = WriterConfig {
            max_queue_bytes: 0,
            min_free_disk_bytes: 0,
            dedup_window: Duration::ZERO,
            dedup_capacity: 1,
            identity_map_retention: Duration::MAX,
        };
        Self::start(store, config, conn, None, Privacy::default())
    }

    fn start(
        store: &Store,
        config: WriterConfig,
        conn: Connection,
        dedup: Option<DedupIndex>,
        privacy: Privacy,
    ) -> Result<(Writer, WriterHandle), StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(CHANNEL_CAPACITY);
        let data_dir = store
            .path()
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut state = WriterState {
            conn,
            dedup,
            privacy,
            config,
            stats: Arc::clone(store.stats()),
            data_dir,
            free_bytes: u64::MAX,
            free_checked: None,
            last_prune: Instant::now(),
            last_prune_at: unix_millis(),
            stamp_cursor: i64::MIN,
        };
        state.publish_dedup_size();
        let thread = std::thread::Builder::new()
            .name("queue-writer".into())
            .spawn(move || state.run(rx))
            .map_err(|e| StoreError::DataDir {
                path: store.path().to_owned(),
                source: e,
            })?;
        Ok((
            Writer { tx: tx.clone() },
            WriterHandle {
                tx,
                thread: Some(thread),
            },
        ))
    }

    /// Appends `events` durably: returns once they are committed and fsync'd.
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<AppendReceipt, AppendError> {
        if events.is_empty() {
            return Ok(AppendReceipt::default());
        }
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(Command::Append { events, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(AppendError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(AppendError::Closed),
        }
        rx.await.unwrap_or(Err(AppendError::Closed))
    }

    /// Applies a delivery-side change; waits (without blocking the runtime) while the writer's
    /// channel is full, since these changes free space rather than use it.
    pub async fn apply(&self, op: QueueOp) -> Result<OpOutcome, QueueError> {
        let (reply, rx) = oneshot::channel();
        let mut cmd = Command::Op { op, reply };
        loop {
            match self.tx.try_send(cmd) {
                Ok(()) => break,
                Err(TrySendError::Full(c)) => {
                    cmd = c;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(TrySendError::Disconnected(_)) => return Err(QueueError::Closed),
            }
        }
        rx.await.unwrap_or(Err(QueueError::Closed))
    }
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for WriterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterHandle")
            .field("running", &self.thread.is_some())
            .finish_non_exhaustive()
    }
}

impl WriterHandle {
    /// Commits what is pending, checkpoints the WAL into the database and stops the thread.
    /// Blocking; call from a blocking context.
    pub fn close(mut self) {
        let _ = self.tx.send(Command::Close);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub(super) struct WriterState {
    pub(super) conn: Connection,
    /// None for a maintenance writer.
    pub(super) dedup: Option<DedupIndex>,
    /// The identity-map memo and the tombstones (empty for a maintenance writer).
    pub(super) privacy: Privacy,
    pub(super) config: WriterConfig,
    pub(super) stats: Arc<QueueStats>,
    data_dir: PathBuf,
    pub(super) free_bytes: u64,
    pub(super) free_checked: Option<Instant>,
    last_prune: Instant,
    /// UNIX ms of the last prune round (tombstones written since are re-read).
    last_prune_at: i64,
    /// Where the sweep of user-property stamps past their retention goes on (a slice per round).
    stamp_cursor: i64,
}

pub(super) type Reply = oneshot::Sender<Result<AppendReceipt, AppendError>>;

impl WriterState {
    fn run(&mut self, rx: Receiver<Command>) {
        let mut closing = false;
        while !closing {
            let first = match rx.recv_timeout(PRUNE_EVERY) {
                Ok(c) => c,
                Err(RecvTimeoutError::Timeout) => {
                    self.maybe_prune();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut group = Vec::new();
            let mut op_group = Vec::new();
            let mut n = first.len();
            let mut push = |cmd: Command, closing: &mut bool| match cmd {
                Command::Append { events, reply } => group.push((events, reply)),
                Command::Op { op, reply } => op_group.push((op, reply)),
                Command::Close => *closing = true,
            };
            push(first, &mut closing);
            while !closing && n < MAX_EVENTS_PER_COMMIT {
                match rx.try_recv() {
                    Ok(cmd) => {
                        n += cmd.len();
                        push(cmd, &mut closing);
                    }
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            if !group.is_empty() {
                self.commit_group(group);
            }
            if !op_group.is_empty() {
                self.apply_ops(op_group);
            }
            self.maybe_prune();
            self.publish_dedup_size();
        }
        // Anything sent after Close is refused (senders see `Closed` when the channel drops).
        if let Err(e) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            tracing::warn!(message = "WAL checkpoint at shutdown failed.", error = %e);
        }
        tracing::info!(message = "Queue store closed.");
    }

    fn publish_dedup_size(&self) {
        let n = self.dedup.as_ref().map_or(0, DedupIndex::len);
        self.stats.dedup_ids.store(n as u64, Ordering::Relaxed);
    }

    pub(super) fn free_disk_bytes(&mut self) -> u64 {
        let stale = self
            .free_checked
            .is_none_or(|t| t.elapsed() >= DISK_CHECK_EVERY);
        if stale {
            match rustix::fs::statvfs(&self.data_dir) {
                Ok(s) => self.free_bytes = s.f_bavail.saturating_mul(s.f_frsize),
                Err(e) => tracing::warn!(message = "Cannot read free disk space.", error = %e),
            }
            self.free_checked = Some(Instant::now());
        }
        self.free_bytes
    }

    /// Applies delivery-side operations in one transaction.
    fn apply_ops(&mut self, group: Vec<(QueueOp, oneshot::Sender<Result<OpOutcome, QueueError>>)>) {
        let now = unix_millis();
        let mut staged = Staged::default();
        let result = (|| {
            let tx = self.conn.transaction()?;
            let mut outcomes = Vec::with_capacity(group.len());
            for (op, _) in &group {
                outcomes.push(ops::apply(&tx, op, now, &mut self.privacy, &mut staged)?);
            }
            tx.commit()?;
            Ok::<_, rusqlite::Error>(outcomes)
        })();
        match result {
            Ok(outcomes) => {
                self.privacy.commit(staged);
                for o in &outcomes {
                    add_signed(&self.stats.events, o.queue_events_delta);
                    add_signed(&self.stats.bytes, o.queue_bytes_delta);
                }
                for ((_, reply), o) in group.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(o));
                }
            }
            Err(e) => {
                tracing::error!(message = "Queue update failed.", error = %e);
                for (_, reply) in group {
                    let _ = reply.send(Err(QueueError::Unavailable(e.to_string())));
                }
            }
        }
    }

    /// Every [`PRUNE_EVERY`]: re-reads the queue totals (a `dlq replay` from another process
    /// changes them) and forgets expired dedup ids.
    fn maybe_prune(&mut self) {
        if self.last_prune.elapsed() < PRUNE_EVERY {
            return;
        }
        self.last_prune = Instant::now();
        match self
            .conn
            .query_row("SELECT events, bytes FROM stats WHERE id = 1", [], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
            }) {
            Ok((events, bytes)) => {
                self.stats
                    .events
                    .store(events.max(0) as u64, Ordering::Relaxed);
                self.stats
                    .bytes
                    .store(bytes.max(0) as u64, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(message = "Cannot re-read the queue totals.", error = %e),
        }
        let Some(dedup) = self.dedup.as_mut() else {
            return;
        };
        let now = unix_millis();
        let cutoff = now - self.config.dedup_window.as_millis() as i64;
        let map_cutoff = now.saturating_sub(
            i64::try_from(self.config.identity_map_retention.as_millis()).unwrap_or(i64::MAX),
        );
        // Tombstones a maintenance process (`dlq replay`) wrote since the last round.
        let since = self.last_prune_at.saturating_sub(60_000);
        self.last_prune_at = now;
        if let Err(e) = self.privacy.reload_tombstones(&self.conn, since) {
            tracing::warn!(message = "Cannot re-read the tombstones.", error = %e);
        }
        if let Err(e) = Privacy::merge_log(&mut self.conn) {
            tracing::warn!(message = "Merging the identity log failed.", error = %e);
        }
        let tombstone_cutoff = Privacy::tombstone_cutoff(now, self.config.dedup_window);
        if let Err(e) = self
            .privacy
            .prune(&mut self.conn, tombstone_cutoff, map_cutoff)
        {
            tracing::warn!(message = "Pruning the identity map failed.", error = %e);
        }
        match super::continuity::prune_stamps(&self.conn, map_cutoff, self.stamp_cursor) {
            Ok(next) => self.stamp_cursor = next,
            Err(e) => {
                tracing::warn!(message = "Pruning the user-property stamps failed.", error = %e)
            }
        }
        match dedup.prune(&mut self.conn, cutoff) {
            // More to do: continue at the next opportunity.
            Ok(true) => self.last_prune = Instant::now() - PRUNE_EVERY,
            Ok(false) => {}
            Err(e) => tracing::warn!(message = "Pruning the dedup window failed.", error = %e),
        }
    }
}

pub(super) fn add_signed(counter: &std::sync::atomic::AtomicU64, delta: i64) {
    if delta >= 0 {
        counter.fetch_add(delta as u64, Ordering::Relaxed);
    } else {
        counter.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
    }
}
