//! The schema of the store, and how an older store is brought up to it.
//!
//! Version 1: `queue`, `dead_letter`, `dedup_log`, `stats`. Version 2 (deletions, product.md
//! §7): `braze_user_id` on queued events and dead letters, `user_key` on queued events (in the
//! lane index), the identity map, the tombstones
//! and the deletion ledger (see [`super::privacy`]). Version 3 (continuity across restarts,
//! product.md §9): the lanes' saved state and the user-property stamps (see
//! [`super::continuity`]); new tables only.

use rusqlite::Connection;

pub(super) const SCHEMA_VERSION: i64 = 3;
pub(crate) const DB_FILE: &str = "queue.sqlite3";

pub(super) const SCHEMA: &str = "
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
    payload     BLOB    NOT NULL,
    braze_user_id TEXT,
    user_key    INTEGER
);
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
    payload     BLOB    NOT NULL,
    braze_user_id TEXT
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

/// Schema version 2 (deletions): the tables and indexes over `braze_user_id`, created after
/// version-1 stores got that column.
pub(super) const SCHEMA_DELETIONS: &str = "
-- One delivery lane per Heap app id reads its events in FIFO order. The index also carries
-- `user_key` (a 64-bit key of route and braze_user_id): a deletion finds its user's events with
-- one scan of this narrow index, at no cost to an append but 8 bytes. (An index on the user
-- itself would put every append on a random page: measured, it halved the accept rate; a
-- second index in `seq` order cost an insert per event.) Version 1 had it without `user_key`.
DROP INDEX IF EXISTS queue_app_seq;
CREATE INDEX IF NOT EXISTS queue_lane ON queue (app_id, seq, user_key);
-- Dead letters are few and written off the accept path: indexed by user.
CREATE INDEX IF NOT EXISTS dead_letter_braze_user ON dead_letter (route, braze_user_id)
    WHERE braze_user_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS identity_map (
    route         TEXT    NOT NULL,
    braze_user_id TEXT    NOT NULL,
    kind          TEXT    NOT NULL,
    value         TEXT    NOT NULL,
    last_seen     INTEGER NOT NULL,
    PRIMARY KEY (route, braze_user_id, kind, value)
) WITHOUT ROWID;
DROP INDEX IF EXISTS identity_map_last_seen;
-- New mappings, appended in the ingest transaction (sequential: a new user costs a row at the
-- end of a B-tree, not a random page of the map) and merged into `identity_map` in batches by
-- the writer. A deletion reads both.
CREATE TABLE IF NOT EXISTS identity_log (
    seq           INTEGER PRIMARY KEY,
    user_key      INTEGER NOT NULL,
    route         TEXT    NOT NULL,
    braze_user_id TEXT    NOT NULL,
    kind          TEXT    NOT NULL,
    value         TEXT    NOT NULL,
    seen_at       INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tombstone (
    route         TEXT    NOT NULL,
    braze_user_id TEXT    NOT NULL,
    deleted_at    INTEGER NOT NULL,
    PRIMARY KEY (route, braze_user_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deletion (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    route         TEXT    NOT NULL,
    braze_user_id TEXT    NOT NULL,
    event_id      TEXT    NOT NULL,
    users         TEXT    NOT NULL,
    received_at   INTEGER NOT NULL,
    status        TEXT    NOT NULL,
    request_id    TEXT,
    updated_at    INTEGER NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    purged_events INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS deletion_status ON deletion (status, id);
CREATE INDEX IF NOT EXISTS deletion_request ON deletion (request_id) WHERE request_id IS NOT NULL;
";

/// Brings a version-1 store to version 2: `braze_user_id` (and `user_key`) on queued events,
/// `braze_user_id` on dead letters
/// (older rows keep it NULL: events stored by an older version are not purged by a deletion).
pub(super) fn migrate(conn: &Connection, from: i64) -> rusqlite::Result<()> {
    if from == 1 {
        for (table, column, ty) in [
            ("queue", "braze_user_id", "TEXT"),
            ("queue", "user_key", "INTEGER"),
            ("dead_letter", "braze_user_id", "TEXT"),
        ] {
            let has: bool = conn.query_row(
                &format!(
                    "SELECT count(*) > 0 FROM pragma_table_info('{table}') WHERE name = '{column}'"
                ),
                [],
                |r| r.get(0),
            )?;
            if !has {
                conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {ty}"))?;
            }
        }
    }
    Ok(())
}
