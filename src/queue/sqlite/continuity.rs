//! What shapes the next requests to Heap, kept across restarts (product.md §9): each lane's
//! [`SavedLane`] and the [`PropertyStamp`]s of the user properties Heap accepted.
//!
//! Why in the store: a restart (or a crash loop) that forgot them would start every lane with
//! a whole budget on top of what Heap counted in the last minute, send into a `Retry-After`
//! pause Heap asked for, and let a late, older user-property update overwrite a newer value.
//! Both tables are written by the writer thread in the same group commits as everything else:
//! a lane's state before the request that spends it, a stamp in the transaction that
//! acknowledges its update.
//!
//! - `lane_state`, `lane_identity`: one row per lane, and its identities whose budget state
//!   matters (a few: those spent beyond what a fresh start may add, or deferred); a save
//!   replaces the lane's rows.
//! - `property_stamp`: one row per (app id, identity, user property), keyed by a 64-bit hash of
//!   the three, with the Braze event time of the value Heap last accepted. It holds no
//!   identity: a stamp is kept as long as the identity map keeps a user
//!   (`--identity-map-retention`), counted from its last update.
//!
//! A user deletion removes the user's identities from `lane_identity`; stamps name nobody in
//! clear and stay until their retention ends.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::store::Reader;
use crate::queue::{HeapUser, PropertyStamp, SavedIdentity, SavedLane};

pub(super) const SCHEMA_CONTINUITY: &str = "
CREATE TABLE IF NOT EXISTS lane_state (
    app_id                 TEXT    PRIMARY KEY,
    app_budget_refilled_at INTEGER NOT NULL,
    paused_until           INTEGER NOT NULL,
    saved_at               INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lane_identity (
    app_id             TEXT    NOT NULL,
    identity           TEXT    NOT NULL,
    budget_refilled_at INTEGER NOT NULL,
    deferred_until     INTEGER NOT NULL,
    next_slot          INTEGER NOT NULL,
    PRIMARY KEY (app_id, identity)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS property_stamp (
    key        INTEGER PRIMARY KEY,
    event_time INTEGER NOT NULL,
    stamped_at INTEGER NOT NULL
);
";

/// Replaces the saved state of `lane.app_id`. Returns the rows written.
pub(super) fn save_lane(tx: &Transaction<'_>, lane: &SavedLane, now: i64) -> rusqlite::Result<u64> {
    tx.prepare_cached(
        "INSERT INTO lane_state (app_id, app_budget_refilled_at, paused_until, saved_at)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (app_id) DO UPDATE SET
             app_budget_refilled_at = excluded.app_budget_refilled_at,
             paused_until = excluded.paused_until, saved_at = excluded.saved_at",
    )?
    .execute(params![
        lane.app_id,
        lane.app_budget_refilled_at,
        lane.paused_until,
        now
    ])?;
    tx.prepare_cached("DELETE FROM lane_identity WHERE app_id = ?1")?
        .execute([&lane.app_id])?;
    let mut insert = tx.prepare_cached(
        "INSERT OR REPLACE INTO lane_identity
             (app_id, identity, budget_refilled_at, deferred_until, next_slot)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for i in &lane.identities {
        insert.execute(params![
            lane.app_id,
            i.identity,
            i.budget_refilled_at,
            i.deferred_until,
            i.next_slot
        ])?;
    }
    Ok(1 + lane.identities.len() as u64)
}

/// Forgets a deleted user's Heap identities in every lane's saved state (product.md §7).
pub(super) fn forget_identities(tx: &Transaction<'_>, users: &[HeapUser]) -> rusqlite::Result<()> {
    let mut forget = tx.prepare_cached("DELETE FROM lane_identity WHERE identity = ?1")?;
    for user in users {
        forget.execute([user.value()])?;
    }
    Ok(())
}

/// Records that Heap accepted these values: each key keeps the latest event time. `now` is
/// UNIX ms.
pub(super) fn stamp(
    tx: &Transaction<'_>,
    stamps: &[PropertyStamp],
    now: i64,
) -> rusqlite::Result<()> {
    if stamps.is_empty() {
        return Ok(());
    }
    let mut upsert = tx.prepare_cached(
        "INSERT INTO property_stamp (key, event_time, stamped_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (key) DO UPDATE SET
             event_time = max(event_time, excluded.event_time), stamped_at = excluded.stamped_at",
    )?;
    for s in stamps {
        upsert.execute(params![s.key, s.event_time, now])?;
    }
    Ok(())
}

/// Stamps one prune round looks at: a slice of the table in key order, so the writer (and
/// every commit waiting on it) never stalls on a long table.
const PRUNE_SLICE: i64 = 50_000;

/// Forgets the stamps not updated since `cutoff` (UNIX ms) among the next slice of keys from
/// `from`. Returns where the next slice starts (`i64::MIN` again after the last key).
pub(super) fn prune_stamps(conn: &Connection, cutoff: i64, from: i64) -> rusqlite::Result<i64> {
    let end: Option<i64> = conn.query_row(
        "SELECT max(key) FROM
             (SELECT key FROM property_stamp WHERE key >= ?1 ORDER BY key LIMIT ?2)",
        params![from, PRUNE_SLICE],
        |r| r.get(0),
    )?;
    let Some(end) = end else {
        return Ok(i64::MIN);
    };
    conn.execute(
        "DELETE FROM property_stamp WHERE key >= ?1 AND key <= ?2 AND stamped_at < ?3",
        params![from, end, cutoff],
    )?;
    Ok(end.checked_add(1).unwrap_or(i64::MIN))
}

impl Reader {
    pub fn saved_lane(&self, app_id: &str) -> rusqlite::Result<Option<SavedLane>> {
        let Some((refilled, paused)) = self
            .conn
            .prepare_cached(
                "SELECT app_budget_refilled_at, paused_until FROM lane_state WHERE app_id = ?1",
            )?
            .query_row([app_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
        else {
            return Ok(None);
        };
        let identities = self
            .conn
            .prepare_cached(
                "SELECT identity, budget_refilled_at, deferred_until, next_slot
                 FROM lane_identity WHERE app_id = ?1 ORDER BY identity",
            )?
            .query_map([app_id], |r| {
                Ok(SavedIdentity {
                    identity: r.get(0)?,
                    budget_refilled_at: r.get(1)?,
                    deferred_until: r.get(2)?,
                    next_slot: r.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(Some(SavedLane {
            app_id: app_id.to_owned(),
            app_budget_refilled_at: refilled,
            paused_until: paused,
            identities,
        }))
    }

    pub fn property_stamps(&self, keys: &[i64]) -> rusqlite::Result<Vec<PropertyStamp>> {
        let mut get = self
            .conn
            .prepare_cached("SELECT event_time FROM property_stamp WHERE key = ?1")?;
        let mut found = Vec::new();
        for &key in keys {
            if let Some(event_time) = get.query_row([key], |r| r.get(0)).optional()? {
                found.push(PropertyStamp { key, event_time });
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::sqlite::Store;

    #[test]
    fn stamps_past_their_retention_are_swept_a_slice_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut conn = store.connect().unwrap();
        let n = PRUNE_SLICE * 2 + 10;
        let tx = conn.transaction().unwrap();
        let old: Vec<PropertyStamp> = (0..n)
            .map(|i| PropertyStamp {
                key: i * 3 - n,
                event_time: 1,
            })
            .collect();
        stamp(&tx, &old, 1_000).unwrap();
        stamp(
            &tx,
            &[PropertyStamp {
                key: 7,
                event_time: 2,
            }],
            5_000,
        )
        .unwrap();
        tx.commit().unwrap();
        let count = |c: &Connection| -> i64 {
            c.query_row("SELECT count(*) FROM property_stamp", [], |r| r.get(0))
                .unwrap()
        };
        let mut from = i64::MIN;
        let mut rounds = 0;
        loop {
            from = prune_stamps(&conn, 2_000, from).unwrap();
            rounds += 1;
            if from == i64::MIN {
                break;
            }
        }
        assert_eq!(rounds, 4, "three slices, then the end");
        assert_eq!(
            count(&conn),
            1,
            "only the stamp updated after the cutoff is left"
        );
    }
}
