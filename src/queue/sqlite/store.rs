//! Opening the database, its schema, and read-only queries.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::queue::{DeadLetter, QueuedEvent, Ready, ReadyRequest, StoredEvent};

use super::continuity::SCHEMA_CONTINUITY;
use super::schema::{DB_FILE, SCHEMA, SCHEMA_DELETIONS, SCHEMA_VERSION, migrate};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "store {path} was written by a newer version (schema {found}, this build knows {SCHEMA_VERSION})"
    )]
    NewerSchema { path: PathBuf, found: i64 },
    #[error(
        "data directory {path} is in use by another `currents-heap serve` (it holds {path}/LOCK); \
         run one process per data directory"
    )]
    Locked { path: PathBuf },
    #[error(
        "store {path} is damaged ({detail}); currents-heap will not start on it and changed nothing. \
         Keep a copy, then try `sqlite3 {path} .recover | sqlite3 recovered.sqlite3` and put the result \
         in its place, or move the file aside to start with an empty queue"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error("store {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

impl StoreError {
    /// A SQLite error on the store at `path`; damage (corrupt or not a database) gets its own
    /// variant, with what to do about it.
    pub(crate) fn sqlite(path: &Path, source: rusqlite::Error) -> Self {
        match source.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => {
                StoreError::Corrupt {
                    path: path.to_owned(),
                    detail: source.to_string(),
                }
            }
            _ => StoreError::Sqlite {
                path: path.to_owned(),
                source,
            },
        }
    }
}

/// Live totals of the queue, updated by the writer after each commit.
#[derive(Debug, Default)]
pub struct QueueStats {
    pub events: AtomicU64,
    pub bytes: AtomicU64,
    /// Event ids the dedup window remembers.
    pub dedup_ids: AtomicU64,
    /// False after a commit failed for a reason other than a full disk; true again after the
    /// next successful commit. `/readyz` reports it.
    pub healthy: AtomicBool,
}

impl QueueStats {
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
    pub fn dedup_ids(&self) -> u64 {
        self.dedup_ids.load(Ordering::Relaxed)
    }
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

/// An exclusive lock on a data directory, held by `serve` for its lifetime: two forwarders on
/// one queue would deliver the same events twice and fight over the dedup window.
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

impl DataDirLock {
    pub fn acquire(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_owned(),
            source,
        })?;
        let path = data_dir.join("LOCK");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| StoreError::DataDir {
                path: path.clone(),
                source,
            })?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |_| StoreError::Locked {
                path: data_dir.to_owned(),
            },
        )?;
        Ok(Self { _file: file })
    }
}

/// A handle on the database in a data directory.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
    stats: Arc<QueueStats>,
}

impl Store {
    /// Creates the directory and schema if needed and loads the running totals.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_owned(),
            source,
        })?;
        let path = data_dir.join(DB_FILE);
        let sql = |source| StoreError::sqlite(&path, source);
        let conn = Connection::open(&path).map_err(sql)?;
        configure(&conn).map_err(sql)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path: path.clone(),
                found: version,
            });
        }
        // One transaction: a migration that fails leaves the store as it was.
        conn.execute_batch("BEGIN IMMEDIATE").map_err(sql)?;
        conn.execute_batch(SCHEMA).map_err(sql)?;
        migrate(&conn, version).map_err(sql)?;
        conn.execute_batch(SCHEMA_DELETIONS).map_err(sql)?;
        conn.execute_batch(SCHEMA_CONTINUITY).map_err(sql)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sql)?;
        conn.execute_batch("COMMIT").map_err(sql)?;
        let (events, bytes): (i64, i64) = conn
            .query_row("SELECT events, bytes FROM stats WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(sql)?;
        let stats = Arc::new(QueueStats {
            events: AtomicU64::new(events.max(0) as u64),
            bytes: AtomicU64::new(bytes.max(0) as u64),
            dedup_ids: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
        });
        Ok(Self { path, stats })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stats(&self) -> &Arc<QueueStats> {
        &self.stats
    }

    /// A new read-write connection with the store's pragmas (used by the writer thread).
    pub(crate) fn connect(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open(&self.path)?;
        configure(&conn)?;
        Ok(conn)
    }

    /// A read-only connection for queries beside the writer.
    pub fn reader(&self) -> Result<Reader, StoreError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|c| {
            c.busy_timeout(std::time::Duration::from_secs(5))?;
            Ok(c)
        })
        .map_err(|source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        })?;
        Ok(Reader { conn })
    }
}

/// `synchronous = FULL`, as SQLite reports it.
const SYNCHRONOUS_FULL: i64 = 2;

pub(super) fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // WAL + FULL: a commit returns only after the WAL is fsync'd, so an acknowledged batch
    // survives a crash or power loss.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // SQLite keeps another journal mode without an error where WAL is impossible (some
    // network filesystems): every 200 rests on these two, so they are read back.
    let (journal, synchronous) = durability(conn)?;
    if !journal.eq_ignore_ascii_case("wal") || synchronous != SYNCHRONOUS_FULL {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
            Some(format!(
                "the store must be journal_mode=wal, synchronous=full (2); this connection is \
                 journal_mode={journal}, synchronous={synchronous}"
            )),
        ));
    }
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    // Bounded page cache (KiB when negative): memory does not grow with the backlog.
    conn.pragma_update(None, "cache_size", -16_384)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(())
}

/// A connection's `journal_mode` and `synchronous`, read back from SQLite.
pub(crate) fn durability(conn: &Connection) -> rusqlite::Result<(String, i64)> {
    Ok((
        conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?,
        conn.pragma_query_value(None, "synchronous", |r| r.get(0))?,
    ))
}

/// Read-only queries.
#[derive(Debug)]
pub struct Reader {
    pub(super) conn: Connection,
}

/// The columns of a queued event: `seq`, the event (1 to 10), `not_before` (11) and the
/// payload's length (12).
const QUEUED_COLUMNS: &str = "seq, route, app_id, workspace, event_id, event_type, identity, \
     event_time, received_at, attempts, payload, not_before, length(payload)";
/// The columns of a dead letter: `seq`, the event (1 to 10), `reason` (11), `detail` (12),
/// `dead_at` (13) and the payload's length (14).
const DEAD_LETTER_COLUMNS: &str = "seq, route, app_id, workspace, event_id, event_type, identity, \
     event_time, received_at, attempts, payload, reason, detail, dead_at, length(payload)";

/// The event in columns 1 to 10 of a row.
fn stored_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        route: r.get(1)?,
        app_id: r.get(2)?,
        workspace: r.get(3)?,
        event_id: r.get(4)?,
        event_type: r.get(5)?,
        identity: r.get(6)?,
        event_time: r.get(7)?,
        received_at: r.get(8)?,
        attempts: r.get(9)?,
        payload: r.get(10)?,
    })
}

fn queued_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<QueuedEvent> {
    Ok(QueuedEvent {
        seq: r.get(0)?,
        not_before: r.get(11)?,
        event: stored_event(r)?,
    })
}

fn dead_letter(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeadLetter> {
    Ok(DeadLetter {
        seq: r.get(0)?,
        reason: r.get(11)?,
        detail: r.get(12)?,
        dead_at: r.get(13)?,
        event: stored_event(r)?,
    })
}

/// What a bounded read took so far: rows and payload bytes, and whether it stopped at the
/// byte bound. One read of several queries (`ready`: due, then fresh) shares one.
#[derive(Debug, Default)]
struct Taken {
    rows: usize,
    bytes: usize,
    /// The next row would have taken the bytes over the bound: nothing more is read.
    full: bool,
}

/// Reads `rows` (without a `LIMIT` when some may be passed over, so those do not count) until
/// `limit` rows are taken or the next payload would take the total over `max_bytes`; the first
/// row of the read is always taken. `taken` counts what the read took so far, in earlier
/// queries too. Rows whose `seq` is in `held` are passed over. The checks read `seq` and the
/// length (column `len_column`) only, never copying a payload that is not taken.
fn collect_within<T>(
    mut rows: rusqlite::Rows<'_>,
    bounds: (usize, usize),
    held: &HashSet<i64>,
    len_column: usize,
    read: fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    taken: &mut Taken,
) -> rusqlite::Result<Vec<T>> {
    let (limit, max_bytes) = bounds;
    let mut out = Vec::new();
    while taken.rows < limit
        && !taken.full
        && let Some(row) = rows.next()?
    {
        if held.contains(&row.get::<_, i64>(0)?) {
            continue;
        }
        let len = usize::try_from(row.get::<_, i64>(len_column)?).unwrap_or(0);
        if taken.rows > 0 && taken.bytes.saturating_add(len) > max_bytes {
            taken.full = true;
            break;
        }
        taken.bytes = taken.bytes.saturating_add(len);
        taken.rows += 1;
        out.push(read(row)?);
    }
    Ok(out)
}

impl Reader {
    /// A lane's ready events: due parked ones first, then fresh ones after the cursor, within
    /// the request's bounds together.
    pub fn ready(&self, req: &ReadyRequest) -> rusqlite::Result<Ready> {
        // One budget for both: the first fresh event is not read past the bounds when due
        // events came first.
        let mut taken = Taken::default();
        let bounds = (req.max_events, req.max_bytes);
        let due = self.due_within(&req.app_id, req.now, bounds, &req.held, &mut taken)?;
        let fresh = self.lane_within(&req.app_id, req.after, bounds, &req.held, &mut taken)?;
        Ok(Ready { due, fresh })
    }

    /// `received_at` (UNIX ms) of the oldest queued event.
    pub fn oldest_received_at(&self) -> rusqlite::Result<Option<i64>> {
        self.conn
            .query_row(
                "SELECT received_at FROM queue ORDER BY seq LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()
    }

    /// Queued events for a Heap app id in FIFO order, starting after `after_seq`.
    pub fn queued(
        &self,
        app_id: &str,
        after_seq: i64,
        limit: usize,
    ) -> rusqlite::Result<Vec<QueuedEvent>> {
        self.queued_within(app_id, after_seq, limit, usize::MAX, &HashSet::new())
    }

    /// As [`Self::queued`], and stops before the payloads read would exceed `max_bytes` (the
    /// first row is always read, however large, so a huge event still makes progress). Rows
    /// are read one at a time, so no more than the bound is ever copied out of SQLite. Rows
    /// whose `seq` is in `held` (the caller has them already) are passed over without reading
    /// their payload, and count neither against `limit` nor `max_bytes`.
    pub fn queued_within(
        &self,
        app_id: &str,
        after_seq: i64,
        limit: usize,
        max_bytes: usize,
        held: &HashSet<i64>,
    ) -> rusqlite::Result<Vec<QueuedEvent>> {
        let bounds = (limit, max_bytes);
        self.lane_within(app_id, after_seq, bounds, held, &mut Taken::default())
    }

    fn lane_within(
        &self,
        app_id: &str,
        after_seq: i64,
        bounds: (usize, usize),
        held: &HashSet<i64>,
        taken: &mut Taken,
    ) -> rusqlite::Result<Vec<QueuedEvent>> {
        if taken.full || taken.rows >= bounds.0 {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {QUEUED_COLUMNS} FROM queue WHERE app_id = ?1 AND seq > ?2 ORDER BY seq"
        ))?;
        let rows = stmt.query(rusqlite::params![app_id, after_seq])?;
        collect_within(rows, bounds, held, 12, queued_event, taken)
    }

    /// Heap app ids that have queued events (one index scan).
    pub fn queued_app_ids(&self) -> rusqlite::Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT DISTINCT app_id FROM queue ORDER BY app_id")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect()
    }

    /// Deferred or retried events of an app id whose `not_before` has passed, soonest first;
    /// bounded like [`Self::queued_within`], rows in `held` passed over.
    pub fn due_deferred(
        &self,
        app_id: &str,
        now: i64,
        limit: usize,
        max_bytes: usize,
        held: &HashSet<i64>,
    ) -> rusqlite::Result<Vec<QueuedEvent>> {
        self.due_within(app_id, now, (limit, max_bytes), held, &mut Taken::default())
    }

    fn due_within(
        &self,
        app_id: &str,
        now: i64,
        bounds: (usize, usize),
        held: &HashSet<i64>,
        taken: &mut Taken,
    ) -> rusqlite::Result<Vec<QueuedEvent>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {QUEUED_COLUMNS} FROM queue
             WHERE app_id = ?1 AND not_before > 0 AND not_before <= ?2
             ORDER BY not_before, seq"
        ))?;
        let rows = stmt.query(rusqlite::params![app_id, now])?;
        collect_within(rows, bounds, held, 12, queued_event, taken)
    }

    /// Dead letters, oldest first, optionally of one reason, starting after `after_seq`.
    pub fn dead_letters(
        &self,
        reason: Option<&str>,
        after_seq: i64,
        limit: usize,
    ) -> rusqlite::Result<Vec<DeadLetter>> {
        self.dead_letters_within(reason, after_seq, limit, usize::MAX)
    }

    /// As [`Self::dead_letters`], stopping before the payloads read would exceed `max_bytes`
    /// (the first row is always read): a page of 900 KB events stays bounded in memory.
    pub fn dead_letters_within(
        &self,
        reason: Option<&str>,
        after_seq: i64,
        limit: usize,
        max_bytes: usize,
    ) -> rusqlite::Result<Vec<DeadLetter>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letter
             WHERE (?1 IS NULL OR reason = ?1) AND seq > ?2 ORDER BY seq LIMIT ?3"
        ))?;
        let rows = stmt.query(rusqlite::params![reason, after_seq, limit as i64])?;
        let bounds = (limit, max_bytes);
        let held = HashSet::new();
        collect_within(rows, bounds, &held, 14, dead_letter, &mut Taken::default())
    }

    /// Dead letters by reason.
    pub fn dead_letter_counts(&self) -> rusqlite::Result<Vec<(String, u64)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT reason, count(*) FROM dead_letter GROUP BY reason ORDER BY reason",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        rows.collect()
    }

    /// Number of rows in the queue, counted (not the running total).
    pub fn count_queued(&self) -> rusqlite::Result<u64> {
        self.conn
            .query_row("SELECT count(*) FROM queue", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
    }
}
