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

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::store::Reader;
use crate::queue::{PropertyStamp, SavedIdentity, SavedLane};

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

/// Forgets stamps not updated since `cutoff` (UNIX ms). Returns how many.
pub(super) fn prune_stamps(conn: &Connection, cutoff: i64) -> rusqlite::Result<usize> {
    conn.execute("DELETE FROM property_stamp WHERE stamped_at < ?1", [cutoff])
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
