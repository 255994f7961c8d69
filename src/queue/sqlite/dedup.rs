//! The dedup window: "was this event id accepted within the last `--dedup-window`?"
//!
//! Why not a SQLite index on the id: Braze ids are random UUIDs, so every insert lands on a
//! random page of a B-tree that grows with the window; each commit then rewrites thousands of
//! pages (measured: 67k → 18k events/s as the window filled to 2M ids). Instead:
//!
//! - `dedup_log (seq, seen_at, event_id)` is append-only, written in the same transaction as the
//!   queue rows, so it costs one sequential row per event and survives crashes with them;
//! - an in-memory map from a 32-bit fingerprint of the id to the low 32 bits of its
//!   `dedup_log.seq` answers lookups (9 bytes per slot); a hit is confirmed against the exact id
//!   in the log row (one rowid read), so a fingerprint collision can never make a new event look
//!   like a duplicate — the only possible error is a missed duplicate (a colliding older id loses
//!   its slot), which Heap's `idempotency_key` absorbs downstream;
//! - the map is rebuilt from the log at start-up, and both are pruned together: by age (the
//!   window) and by size (`capacity` ids, about 10–20 bytes each; past it the oldest ids are
//!   forgotten early, with a warning).

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

use rusqlite::{Connection, OptionalExtension, Transaction, params};

/// The map's keys are already hashes; hashing them again would only cost time.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u32(&mut self, n: u32) {
        // Spread to the high bits, which hashbrown uses for its control bytes.
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Rows pruned per statement, so one prune never holds the writer for long.
const PRUNE_CHUNK: i64 = 50_000;

pub(crate) struct DedupIndex {
    /// Fingerprint → low 32 bits of the `dedup_log.seq` of the id (see [`Self::full_seq`]).
    map: HashMap<u32, u32, BuildHasherDefault<Prehashed>>,
    /// Per-process random keys: fingerprints cannot be chosen by a sender.
    hasher: RandomState,
    capacity: usize,
    next_seq: i64,
    /// Lowest `dedup_log.seq` still stored.
    oldest_seq: i64,
}

/// Map changes of an open transaction, undone if it does not commit.
#[derive(Default)]
pub(crate) struct Undo(Vec<(u32, Option<u32>)>);

impl DedupIndex {
    /// Rebuilds the map from the log rows still inside the window (at most `capacity`).
    pub(crate) fn load(conn: &Connection, cutoff: i64, capacity: usize) -> rusqlite::Result<Self> {
        let mut index = DedupIndex {
            map: HashMap::default(),
            hasher: RandomState::new(),
            capacity: capacity.clamp(1, 1 << 31),
            next_seq: 1,
            oldest_seq: 1,
        };
        let (min_seq, max_seq): (Option<i64>, Option<i64>) =
            conn.query_row("SELECT min(seq), max(seq) FROM dedup_log", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        index.next_seq = max_seq.unwrap_or(0) + 1;
        index.oldest_seq = min_seq.unwrap_or(index.next_seq);
        let first_seq = index.next_seq - index.capacity as i64;
        let mut stmt = conn.prepare(
            "SELECT seq, event_id FROM dedup_log WHERE seq >= ?1 AND seen_at >= ?2 ORDER BY seq",
        )?;
        let mut rows = stmt.query(params![first_seq, cutoff])?;
        while let Some(row) = rows.next()? {
            let seq: i64 = row.get(0)?;
            let id: String = row.get(1)?;
            let fp = index.fingerprint(&id);
            index.map.insert(fp, seq as u32);
        }
        Ok(index)
    }

    /// The full seq of a live row from its low 32 bits: live rows are the last `capacity`
    /// (< 2^31) seqs below `next_seq`, so the high bits are those of `next_seq`, or one less.
    fn full_seq(&self, low: u32) -> i64 {
        let candidate = (self.next_seq & !0xffff_ffff) | i64::from(low);
        if candidate >= self.next_seq {
            candidate - (1 << 32)
        } else {
            candidate
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    fn fingerprint(&self, id: &str) -> u32 {
        self.hasher.hash_one(id) as u32
    }

    /// True if `id` was accepted at or after `cutoff` (nothing is recorded).
    pub(crate) fn is_duplicate(
        &self,
        tx: &Transaction<'_>,
        id: &str,
        cutoff: i64,
    ) -> rusqlite::Result<bool> {
        match self.map.get(&self.fingerprint(id)) {
            Some(low) => self.logged_since(tx, self.full_seq(*low), id, cutoff),
            None => Ok(false),
        }
    }

    /// Whether log row `seq` holds exactly `id`, seen at or after `cutoff`.
    fn logged_since(
        &self,
        tx: &Transaction<'_>,
        seq: i64,
        id: &str,
        cutoff: i64,
    ) -> rusqlite::Result<bool> {
        let mut stmt =
            tx.prepare_cached("SELECT seen_at, event_id FROM dedup_log WHERE seq = ?1")?;
        let row: Option<(i64, String)> = stmt
            .query_row([seq], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        Ok(row.is_some_and(|(seen_at, logged)| seen_at >= cutoff && logged == id))
    }

    /// True if `id` is new (and is now recorded in the open transaction); false if it was
    /// accepted at or after `cutoff`.
    pub(crate) fn check_and_record(
        &mut self,
        tx: &Transaction<'_>,
        id: &str,
        now: i64,
        cutoff: i64,
        undo: &mut Undo,
    ) -> rusqlite::Result<bool> {
        let fp = self.fingerprint(id);
        let previous = self.map.get(&fp).copied();
        if let Some(low) = previous
            && self.logged_since(tx, self.full_seq(low), id, cutoff)?
        {
            return Ok(false);
        }
        let seq = self.next_seq;
        tx.prepare_cached("INSERT INTO dedup_log (seq, seen_at, event_id) VALUES (?1, ?2, ?3)")?
            .execute(params![seq, now, id])?;
        self.next_seq += 1;
        self.map.insert(fp, seq as u32);
        undo.0.push((fp, previous));
        Ok(true)
    }

    /// Reverts the map changes of a transaction that rolled back.
    pub(crate) fn rollback(&mut self, undo: Undo) {
        for (fp, previous) in undo.0.into_iter().rev() {
            self.next_seq -= 1;
            match previous {
                Some(seq) => self.map.insert(fp, seq),
                None => self.map.remove(&fp),
            };
        }
    }

    /// Forgets ids older than `cutoff`, then the oldest ids beyond `capacity`, one chunk at a
    /// time. Returns true when there may be more to prune.
    pub(crate) fn prune(&mut self, conn: &mut Connection, cutoff: i64) -> rusqlite::Result<bool> {
        let live_rows = self.next_seq - self.oldest_seq;
        let over_capacity = (live_rows - self.capacity as i64).max(0);
        let tx = conn.transaction()?;
        let mut removed = 0usize;
        let mut last_seq = None;
        {
            let mut stmt = tx.prepare_cached(
                "SELECT seq, seen_at, event_id FROM dedup_log ORDER BY seq LIMIT ?1",
            )?;
            let mut rows = stmt.query([PRUNE_CHUNK])?;
            while let Some(row) = rows.next()? {
                let seq: i64 = row.get(0)?;
                let seen_at: i64 = row.get(1)?;
                if seen_at >= cutoff && removed as i64 >= over_capacity {
                    break;
                }
                let id: String = row.get(2)?;
                let fp = self.fingerprint(&id);
                if self.map.get(&fp) == Some(&(seq as u32)) {
                    self.map.remove(&fp);
                }
                removed += 1;
                last_seq = Some(seq);
            }
        }
        if let Some(last) = last_seq {
            tx.execute("DELETE FROM dedup_log WHERE seq <= ?1", [last])?;
        }
        tx.commit()?;
        if let Some(last) = last_seq {
            self.oldest_seq = last + 1;
        }
        if over_capacity > 0 && removed > 0 {
            tracing::warn!(
                message =
                    "Dedup capacity reached: forgetting the oldest ids before the window ends.",
                capacity = self.capacity,
                forgotten = over_capacity,
            );
        }
        Ok(removed as i64 == PRUNE_CHUNK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE dedup_log (seq INTEGER PRIMARY KEY, seen_at INTEGER NOT NULL, event_id TEXT NOT NULL);",
        )
        .unwrap();
        c
    }

    fn record(
        index: &mut DedupIndex,
        conn: &mut Connection,
        id: &str,
        now: i64,
        cutoff: i64,
    ) -> bool {
        let tx = conn.transaction().unwrap();
        let mut undo = Undo::default();
        let fresh = index
            .check_and_record(&tx, id, now, cutoff, &mut undo)
            .unwrap();
        tx.commit().unwrap();
        fresh
    }

    #[test]
    fn detects_duplicates_within_the_window_only() {
        let mut conn = db();
        let mut idx = DedupIndex::load(&conn, 0, 100).unwrap();
        assert!(record(&mut idx, &mut conn, "a", 10, 0));
        assert!(!record(&mut idx, &mut conn, "a", 11, 0));
        assert!(record(&mut idx, &mut conn, "b", 12, 0));
        // "a" was seen at 10; with the window starting at 11 it is new again.
        assert!(record(&mut idx, &mut conn, "a", 20, 11));
    }

    #[test]
    fn a_fingerprint_collision_never_hides_a_new_event() {
        let mut conn = db();
        let mut idx = DedupIndex::load(&conn, 0, 100).unwrap();
        assert!(record(&mut idx, &mut conn, "a", 10, 0));
        // Force "b" onto the fingerprint of "a".
        let fp_b = idx.fingerprint("b");
        let seq_a = idx.map[&idx.fingerprint("a")];
        idx.map.insert(fp_b, seq_a);
        assert_eq!(idx.full_seq(seq_a), 1);
        assert!(record(&mut idx, &mut conn, "b", 11, 0));
        assert!(!record(&mut idx, &mut conn, "b", 12, 0));
    }

    #[test]
    fn rollback_forgets_uncommitted_ids() {
        let mut conn = db();
        let mut idx = DedupIndex::load(&conn, 0, 100).unwrap();
        {
            let tx = conn.transaction().unwrap();
            let mut undo = Undo::default();
            assert!(idx.check_and_record(&tx, "a", 1, 0, &mut undo).unwrap());
            drop(tx);
            idx.rollback(undo);
        }
        assert_eq!(idx.len(), 0);
        assert!(record(&mut idx, &mut conn, "a", 2, 0));
    }

    #[test]
    fn survives_reload_and_prunes_by_age_and_capacity() {
        let mut conn = db();
        let mut idx = DedupIndex::load(&conn, 0, 3).unwrap();
        for (i, id) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            assert!(record(&mut idx, &mut conn, id, i as i64, 0));
        }
        let mut reloaded = DedupIndex::load(&conn, 0, 3).unwrap();
        assert_eq!(
            reloaded.len(),
            3,
            "only the newest `capacity` ids are loaded"
        );
        assert!(!record(&mut reloaded, &mut conn, "e", 9, 0));

        idx.prune(&mut conn, 0).unwrap();
        assert_eq!(idx.len(), 3);
        idx.prune(&mut conn, 4).unwrap();
        assert_eq!(idx.len(), 1);
        let left: i64 = conn
            .query_row("SELECT count(*) FROM dedup_log", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 1);
    }
}
