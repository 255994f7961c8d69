//! What the store keeps for deletions (product.md §7): the identity map, the tombstones and the
//! deletion ledger, all changed inside the writer's transactions.
//!
//! - `identity_map (route, braze_user_id, kind, value, last_seen)`: every Heap user the
//!   forwarder sends (or would send) for a Braze user on a route. A new mapping is appended to
//!   `identity_log` in the append transaction (a row at the end of a B-tree: writing it into the
//!   map directly put every new user on a random page of it, measured at 0.39 of the accept rate
//!   with a million users), and the writer merges the log into the map in key order every
//!   10 s; a deletion reads both. A bounded in-memory memo of what was written lately skips
//!   writes that would change nothing (the same user seen again within [`LAST_SEEN_STEP`]), so
//!   a campaign that sends many events per user costs one row per user, not per event.
//!   Mappings not seen for `identity_map_retention` are swept out of the map.
//! - `tombstone (route, braze_user_id, deleted_at)`: a deleted user, kept for the dedup window
//!   and at least 7 days (Braze re-sends for up to 5 days and keeps events 7), so events of
//!   that user that Braze delivers late are acknowledged and dropped. Mirrored in
//!   memory (deletions are few), so an append checks it without a read.
//! - `deletion`: the ledger, one row per accepted `users.UserDeleteRequest`.
//!
//! Why the memo and the mirror only ever lag the database in the safe direction: entries are
//! added to them only after the transaction that wrote the rows committed (a rolled-back
//! transaction leaves them as they were), and a deletion removes its user from the memo at once.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::queue::{
    DeletionQuery, DeletionReceipt, DeletionRecord, DeletionStatus, DeletionSummary, HeapUser,
    QueueOp,
};

/// `last_seen` is rewritten at most this often per mapping (UNIX ms): a day, against a
/// retention counted in hundreds of days.
pub(crate) const LAST_SEEN_STEP: i64 = 24 * 3600 * 1000;
/// Mappings the memo holds; past it, it starts over (it only saves writes).
const MEMO_CAPACITY: usize = 200_000;
/// A tombstone lives at least this long, whatever the dedup window.
const TOMBSTONE_MIN_LIFE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);
/// Rows pruned per statement, so one prune never holds the writer for long.
const PRUNE_CHUNK: i64 = 20_000;

/// A Braze user on a route, with its [`user_key`] computed once: the memo and the tombstones
/// are looked up by the key (no allocation per event) and confirmed by the ids.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Subject<'a> {
    pub(crate) key: i64,
    pub(crate) route: &'a str,
    pub(crate) braze_user_id: &'a str,
}

impl<'a> Subject<'a> {
    pub(crate) fn new(route: &'a str, braze_user_id: &'a str) -> Self {
        Self {
            key: user_key(route, braze_user_id),
            route,
            braze_user_id,
        }
    }
}

/// A user as the memory keeps it.
#[derive(Debug, Clone)]
struct Held {
    route: Box<str>,
    braze_user_id: Box<str>,
}

impl Held {
    fn of(s: Subject<'_>) -> Self {
        Self {
            route: s.route.into(),
            braze_user_id: s.braze_user_id.into(),
        }
    }

    fn is(&self, s: Subject<'_>) -> bool {
        &*self.route == s.route && &*self.braze_user_id == s.braze_user_id
    }
}

/// A mapping written lately: the user, its Heap user, and the `last_seen` written.
#[derive(Debug, Clone)]
struct Memo {
    user: Held,
    heap_user: HeapUser,
    written: i64,
}

/// The in-memory side: the memo of written mappings and the tombstones.
#[derive(Debug, Default)]
pub(crate) struct Privacy {
    /// By user key.
    memo: HashMap<i64, Memo>,
    /// By user key: the deleted users (and when), as in the `tombstone` table.
    tombstones: HashMap<i64, Vec<(Held, i64)>>,
    /// Where the sweep of the identity map for expired mappings goes on: the last
    /// (route, braze_user_id) looked at (`None`: from the start).
    sweep: Option<(String, String)>,
}

/// Changes of an open transaction, applied to [`Privacy`] once it committed.
#[derive(Debug, Default)]
pub(crate) struct Staged {
    memo: HashMap<i64, Memo>,
    tombstones: Vec<(i64, Held, i64)>,
    /// Deletions whose queued events are still to be removed ([`Privacy::purge_queued`]).
    purges: Vec<Purge>,
}

/// One `users.UserDeleteRequest` to accept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UserDeletion<'a> {
    pub(crate) route: &'a str,
    pub(crate) braze_user_id: &'a str,
    /// The Currents event id of the deletion.
    pub(crate) event_id: &'a str,
    /// The caller's name for it in [`Purged::by_slot`].
    pub(crate) slot: usize,
}

/// What [`Privacy::purge_queued`] removed.
#[derive(Debug, Default)]
pub(crate) struct Purged {
    /// Per deletion slot: the removed `(app_id, seq)`s.
    pub(crate) by_slot: Vec<(usize, Vec<(String, i64)>)>,
    /// Deletion slots whose users were found only in the identity log (not merged yet).
    pub(crate) known: Vec<usize>,
    /// Payload bytes removed in all.
    pub(crate) bytes: i64,
}

/// A deletion waiting for its queue purge.
#[derive(Debug)]
struct Purge {
    user_key: i64,
    user: Held,
    ledger_id: i64,
    /// The caller's name for the deletion (where its receipt is).
    slot: usize,
}

/// The `queue.user_key` of a Braze user on a route: FNV-1a (64 bits) of the route, a
/// separator byte no UTF-8 text holds, and the user id. Stable across versions and restarts
/// (it is stored); a collision only makes a candidate that the row's own ids then refuse.
pub(crate) fn user_key(route: &str, braze_user_id: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in route
        .as_bytes()
        .iter()
        .chain([0xffu8].iter())
        .chain(braze_user_id.as_bytes())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

impl Privacy {
    /// Loads the tombstones still inside the window.
    pub(crate) fn load(conn: &Connection, tombstone_cutoff: i64) -> rusqlite::Result<Self> {
        let mut stmt = conn.prepare(
            "SELECT route, braze_user_id, deleted_at FROM tombstone WHERE deleted_at >= ?1",
        )?;
        let rows = stmt.query_map([tombstone_cutoff], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut tombstones: HashMap<i64, Vec<(Held, i64)>> = HashMap::new();
        for row in rows {
            let (route, user, at) = row?;
            let subject = Subject::new(&route, &user);
            tombstones
                .entry(subject.key)
                .or_default()
                .push((Held::of(subject), at));
        }
        Ok(Self {
            tombstones,
            ..Self::default()
        })
    }

    /// Whether the `tombstone` table holds the user on the route (read in the transaction:
    /// what a maintenance process, which keeps no mirror, checks).
    pub(crate) fn tombstoned_in_store(
        tx: &Transaction<'_>,
        route: &str,
        braze_user_id: &str,
    ) -> rusqlite::Result<bool> {
        tx.prepare_cached("SELECT 1 FROM tombstone WHERE route = ?1 AND braze_user_id = ?2")?
            .query_row(params![route, braze_user_id], |_| Ok(()))
            .optional()
            .map(|r| r.is_some())
    }

    /// Re-reads the tombstones still inside the window: a deletion accepted by a maintenance
    /// process (`dlq replay`) reaches the server's mirror this way.
    /// Only tombstones written since `since` (UNIX ms) are read: each reload costs what is new.
    pub(crate) fn reload_tombstones(
        &mut self,
        conn: &Connection,
        since: i64,
    ) -> rusqlite::Result<()> {
        for (key, held) in Self::load(conn, since)?.tombstones {
            let known = self.tombstones.entry(key).or_default();
            for (h, at) in held {
                if !known
                    .iter()
                    .any(|(k, _)| k.route == h.route && k.braze_user_id == h.braze_user_id)
                {
                    known.push((h, at));
                }
            }
        }
        Ok(())
    }

    /// How long a tombstone is kept: the dedup window, and at least the week Braze may keep
    /// re-sending an event (`braze-currents.md`: retries for up to 5 days, events kept 7).
    pub(crate) fn tombstone_cutoff(now: i64, dedup_window: std::time::Duration) -> i64 {
        let keep = dedup_window.max(TOMBSTONE_MIN_LIFE);
        now.saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX))
    }

    /// Whether the user was deleted on the route (committed, or earlier in `staged`).
    pub(crate) fn is_deleted(&self, staged: &Staged, user: Subject<'_>) -> bool {
        self.tombstones
            .get(&user.key)
            .is_some_and(|held| held.iter().any(|(h, _)| h.is(user)))
            || staged
                .tombstones
                .iter()
                .any(|(k, h, _)| *k == user.key && h.is(user))
    }

    /// Remembers that `heap_user` is sent for the Braze user on the route.
    pub(crate) fn remember(
        &self,
        tx: &Transaction<'_>,
        staged: &mut Staged,
        user: Subject<'_>,
        heap_user: &HeapUser,
        now: i64,
    ) -> rusqlite::Result<()> {
        let known = |m: &Memo| m.user.is(user) && m.heap_user == *heap_user;
        if self
            .memo
            .get(&user.key)
            .is_some_and(|m| known(m) && now - m.written < LAST_SEEN_STEP)
            || staged.memo.get(&user.key).is_some_and(known)
        {
            return Ok(());
        }
        // Appended to the log (sequential, cheap); merged into the map in batches.
        tx.prepare_cached(
            "INSERT INTO identity_log (user_key, route, braze_user_id, kind, value, seen_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            user.key,
            user.route,
            user.braze_user_id,
            heap_user.kind(),
            heap_user.value(),
            now
        ])?;
        staged.memo.insert(
            user.key,
            Memo {
                user: Held::of(user),
                heap_user: heap_user.clone(),
                written: now,
            },
        );
        Ok(())
    }

    /// Accepts a deletion: reads the user's Heap users, removes the user's dead letters and
    /// mappings on the route, leaves a tombstone and a ledger entry. The user's queued events
    /// are removed by [`Self::purge_queued`] at the end of the transaction, for every deletion
    /// of it at once; `slot` names this deletion there.
    pub(crate) fn delete_user(
        &mut self,
        tx: &Transaction<'_>,
        staged: &mut Staged,
        deletion: UserDeletion<'_>,
        now: i64,
    ) -> rusqlite::Result<DeletionReceipt> {
        let UserDeletion {
            route,
            braze_user_id,
            event_id,
            slot,
        } = deletion;
        let users = mapped_users(tx, route, braze_user_id)?;
        let receipt = DeletionReceipt {
            known_user: !users.is_empty(),
            purged_dead_letters: tx
                .prepare_cached("DELETE FROM dead_letter WHERE route = ?1 AND braze_user_id = ?2")?
                .execute(params![route, braze_user_id])? as u64,
            ..DeletionReceipt::default()
        };
        tx.prepare_cached("DELETE FROM identity_map WHERE route = ?1 AND braze_user_id = ?2")?
            .execute(params![route, braze_user_id])?;
        super::continuity::forget_identities(tx, &users)?;
        tx.prepare_cached(
            "INSERT INTO tombstone (route, braze_user_id, deleted_at) VALUES (?1, ?2, ?3)
             ON CONFLICT DO UPDATE SET deleted_at = excluded.deleted_at",
        )?
        .execute(params![route, braze_user_id, now])?;
        let status = if receipt.known_user {
            DeletionStatus::PendingSubmit
        } else {
            DeletionStatus::UnknownUser
        };
        tx.prepare_cached(
            "INSERT INTO deletion (route, braze_user_id, event_id, users, received_at, status,
                                   updated_at, purged_events)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?5, ?7)",
        )?
        .execute(params![
            route,
            braze_user_id,
            event_id,
            encode_users(&users),
            now,
            status.as_str(),
            receipt.purged_dead_letters as i64
        ])?;
        let ledger_id = tx.last_insert_rowid();
        let subject = Subject::new(route, braze_user_id);
        self.memo.remove(&subject.key);
        staged.memo.remove(&subject.key);
        staged.purges.push(Purge {
            user_key: subject.key,
            user: Held::of(subject),
            ledger_id,
            slot,
        });
        staged
            .tombstones
            .push((subject.key, Held::of(subject), now));
        Ok(receipt)
    }

    /// Removes the queued events of every user deleted in this transaction (one scan of
    /// the `queue_lane` index for all of them) and counts them in their ledger entries. Returns, per
    /// deletion slot, the removed `(app_id, seq)`s, and the payload bytes removed in all.
    pub(crate) fn purge_queued(
        tx: &Transaction<'_>,
        staged: &mut Staged,
    ) -> rusqlite::Result<Purged> {
        let purges = std::mem::take(&mut staged.purges);
        if purges.is_empty() {
            return Ok(Purged::default());
        }
        let mut by_key: HashMap<i64, Vec<usize>> = HashMap::new();
        for (i, p) in purges.iter().enumerate() {
            by_key.entry(p.user_key).or_default().push(i);
        }
        let mut candidates = Vec::new();
        {
            let mut scan = tx.prepare_cached(
                "SELECT seq, user_key FROM queue INDEXED BY queue_lane
                 WHERE user_key IS NOT NULL",
            )?;
            let mut rows = scan.query([])?;
            while let Some(r) = rows.next()? {
                if let Some(owners) = by_key.get(&r.get::<_, i64>(1)?) {
                    candidates.push((r.get::<_, i64>(0)?, owners.clone()));
                }
            }
        }
        let mut removed: Vec<Vec<(String, i64)>> = vec![Vec::new(); purges.len()];
        let mut bytes = 0i64;
        let mut delete = tx.prepare_cached(
            "DELETE FROM queue WHERE seq = ?1 AND route = ?2 AND braze_user_id = ?3
             RETURNING app_id, length(payload)",
        )?;
        for (seq, owners) in candidates {
            // The key is a hash: the row's own ids decide.
            for i in owners {
                let user = &purges[i].user;
                let hit = delete
                    .query_row(params![seq, &*user.route, &*user.braze_user_id], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                    })
                    .optional()?;
                if let Some((app_id, len)) = hit {
                    bytes += len;
                    removed[i].push((app_id, seq));
                    break;
                }
            }
        }
        let logged = take_logged_users(tx, &purges, &by_key)?;
        let mut count = tx.prepare_cached(
            "UPDATE deletion SET purged_events = purged_events + ?2 WHERE id = ?1",
        )?;
        let mut out = Vec::with_capacity(purges.len());
        let mut known = Vec::new();
        for ((p, seqs), logged) in purges.iter().zip(removed).zip(logged) {
            if !seqs.is_empty() {
                count.execute(params![p.ledger_id, seqs.len() as i64])?;
            }
            if !logged.is_empty() {
                super::continuity::forget_identities(tx, &logged)?;
                add_ledger_users(tx, p.ledger_id, logged)?;
                known.push(p.slot);
            }
            out.push((p.slot, seqs));
        }
        Ok(Purged {
            by_slot: out,
            known,
            bytes,
        })
    }

    /// Merges the identity log into the map: one transaction, rows in key order, so each page
    /// of the map is written once per merge rather than once per new user. Returns how many
    /// log rows it merged.
    pub(crate) fn merge_log(conn: &mut Connection) -> rusqlite::Result<u64> {
        let tx = conn.transaction()?;
        let last: Option<i64> =
            tx.query_row("SELECT max(seq) FROM identity_log", [], |r| r.get(0))?;
        let Some(last) = last else {
            return Ok(0);
        };
        tx.execute(
            "INSERT INTO identity_map (route, braze_user_id, kind, value, last_seen)
             SELECT route, braze_user_id, kind, value, max(seen_at) FROM identity_log
             WHERE seq <= ?1
             GROUP BY route, braze_user_id, kind, value
             ORDER BY route, braze_user_id, kind, value
             ON CONFLICT DO UPDATE SET last_seen = max(last_seen, excluded.last_seen)",
            [last],
        )?;
        let n = tx.execute("DELETE FROM identity_log WHERE seq <= ?1", [last])?;
        tx.commit()?;
        Ok(n as u64)
    }

    /// Applies what a committed transaction staged.
    pub(crate) fn commit(&mut self, staged: Staged) {
        if self.memo.len() + staged.memo.len() > MEMO_CAPACITY {
            self.memo.clear();
        }
        self.memo.extend(staged.memo);
        for (key, held, at) in staged.tombstones {
            self.tombstones.entry(key).or_default().push((held, at));
        }
    }

    /// Forgets tombstones older than `tombstone_cutoff`, and mappings not seen since
    /// `map_cutoff` in the next chunk of the identity map's sweep (it goes on at the next
    /// call).
    pub(crate) fn prune(
        &mut self,
        conn: &mut Connection,
        tombstone_cutoff: i64,
        map_cutoff: i64,
    ) -> rusqlite::Result<()> {
        self.tombstones.retain(|_, held| {
            held.retain(|(_, at)| *at >= tombstone_cutoff);
            !held.is_empty()
        });
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM tombstone WHERE deleted_at < ?1",
            [tombstone_cutoff],
        )?;
        // No index on `last_seen` (it would put every new mapping on a second random page):
        // the map is swept in key order, a chunk per call, from where the last call stopped.
        let from = self.sweep.clone().unwrap_or_default();
        let upto: Option<(String, String)> = tx
            .query_row(
                "SELECT route, braze_user_id FROM identity_map
                 WHERE (route, braze_user_id) > (?1, ?2)
                 ORDER BY route, braze_user_id LIMIT 1 OFFSET ?3",
                params![from.0, from.1, PRUNE_CHUNK - 1],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let n = match &upto {
            Some(upto) => tx.execute(
                "DELETE FROM identity_map WHERE (route, braze_user_id) > (?1, ?2)
                     AND (route, braze_user_id) <= (?3, ?4) AND last_seen < ?5",
                params![from.0, from.1, upto.0, upto.1, map_cutoff],
            )?,
            None => tx.execute(
                "DELETE FROM identity_map WHERE (route, braze_user_id) > (?1, ?2)
                     AND last_seen < ?3",
                params![from.0, from.1, map_cutoff],
            )?,
        };
        tx.commit()?;
        // At the end of the map, the next sweep starts over.
        self.sweep = upto;
        if n > 0 {
            self.memo.retain(|_, m| m.written >= map_cutoff);
        }
        Ok(())
    }
}

/// The Heap users mapped for a Braze user on a route, sorted.
fn mapped_users(
    tx: &Transaction<'_>,
    route: &str,
    braze_user_id: &str,
) -> rusqlite::Result<Vec<HeapUser>> {
    let mut stmt = tx.prepare_cached(
        "SELECT kind, value FROM identity_map WHERE route = ?1 AND braze_user_id = ?2
         ORDER BY kind, value",
    )?;
    let rows = stmt.query_map(params![route, braze_user_id], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut users = Vec::new();
    for row in rows {
        let (kind, value) = row?;
        users.extend(HeapUser::from_parts(&kind, value));
    }
    Ok(users)
}

/// The Heap users of each deleted user that the identity log holds (mappings not merged into
/// the map yet), removed from the log: one scan of it for every deletion of the transaction.
fn take_logged_users(
    tx: &Transaction<'_>,
    purges: &[Purge],
    by_key: &HashMap<i64, Vec<usize>>,
) -> rusqlite::Result<Vec<Vec<HeapUser>>> {
    let mut found: Vec<Vec<HeapUser>> = vec![Vec::new(); purges.len()];
    let mut taken = Vec::new();
    {
        let mut scan = tx.prepare_cached(
            "SELECT seq, user_key, route, braze_user_id, kind, value FROM identity_log",
        )?;
        let mut rows = scan.query([])?;
        while let Some(r) = rows.next()? {
            let Some(owners) = by_key.get(&r.get::<_, i64>(1)?) else {
                continue;
            };
            let (route, user): (String, String) = (r.get(2)?, r.get(3)?);
            let subject = Subject::new(&route, &user);
            for i in owners {
                if purges[*i].user.is(subject) {
                    if let Some(u) = HeapUser::from_parts(&r.get::<_, String>(4)?, r.get(5)?)
                        && !found[*i].contains(&u)
                    {
                        found[*i].push(u);
                    }
                    taken.push(r.get::<_, i64>(0)?);
                    break;
                }
            }
        }
    }
    let mut forget = tx.prepare_cached("DELETE FROM identity_log WHERE seq = ?1")?;
    for seq in taken {
        forget.execute([seq])?;
    }
    Ok(found)
}

/// Adds `users` to a ledger entry; one that had none (`unknown_user`) is owed to Heap now.
fn add_ledger_users(tx: &Transaction<'_>, id: i64, users: Vec<HeapUser>) -> rusqlite::Result<()> {
    let current: String = tx.query_row("SELECT users FROM deletion WHERE id = ?1", [id], |r| {
        r.get(0)
    })?;
    let mut all = decode_users(&current);
    for u in users {
        if !all.contains(&u) {
            all.push(u);
        }
    }
    all.sort();
    tx.prepare_cached(
        "UPDATE deletion SET users = ?2,
             status = CASE WHEN status = 'unknown_user' THEN 'pending_submit' ELSE status END
         WHERE id = ?1",
    )?
    .execute(params![id, encode_users(&all)])?;
    Ok(())
}

/// The ledger's `users` column: `[["identity","alice"],["user_id","123"]]`.
pub(crate) fn encode_users(users: &[HeapUser]) -> String {
    let pairs: Vec<[&str; 2]> = users.iter().map(|u| [u.kind(), u.value()]).collect();
    serde_json::to_string(&pairs).unwrap_or_else(|_| "[]".into())
}

pub(crate) fn decode_users(text: &str) -> Vec<HeapUser> {
    serde_json::from_str::<Vec<(String, String)>>(text)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(kind, value)| HeapUser::from_parts(&kind, value))
        .collect()
}

/// Applies a ledger change; `None` when `op` is not one.
pub(crate) fn apply_ledger_op(
    tx: &Transaction<'_>,
    op: &QueueOp,
    now: i64,
) -> rusqlite::Result<Option<u64>> {
    let rows = match op {
        QueueOp::DeletionsSubmitted { ids, request_id } => {
            let mut upd = tx.prepare_cached(
                "UPDATE deletion SET status = 'submitted', request_id = ?2, updated_at = ?3
                 WHERE id = ?1 AND status IN ('pending_submit', 'unconfigured', 'failed')",
            )?;
            let mut n = 0;
            for id in ids {
                n += upd.execute(params![id, request_id, now])? as u64;
            }
            n
        }
        QueueOp::DeletionsCompleted { request_id } => {
            tx.prepare_cached(
                "UPDATE deletion SET status = 'complete', updated_at = ?2, last_error = NULL
                 WHERE request_id = ?1 AND status = 'submitted'",
            )?
            .execute(params![request_id, now])? as u64
        }
        QueueOp::DeletionsAttempt { ids, error, failed } => {
            let mut upd = tx.prepare_cached(
                "UPDATE deletion SET attempts = attempts + 1, last_error = ?2, updated_at = ?3,
                     status = CASE WHEN ?4 THEN 'failed' ELSE status END
                 WHERE id = ?1 AND status NOT IN ('complete', 'unknown_user')",
            )?;
            let mut n = 0;
            for id in ids {
                n += upd.execute(params![id, error, now, failed])? as u64;
            }
            n
        }
        QueueOp::DeletionsMove {
            from,
            to,
            ids,
            routes,
        } => {
            let mut sql = String::from(
                "UPDATE deletion SET status = ?1, updated_at = ?2,
                     request_id = CASE WHEN ?1 = 'pending_submit' THEN NULL ELSE request_id END
                 WHERE status = ?3",
            );
            let mut values: Vec<rusqlite::types::Value> = vec![
                to.as_str().to_owned().into(),
                now.into(),
                from.as_str().to_owned().into(),
            ];
            if let Some(ids) = ids {
                sql.push_str(&format!(" AND id IN ({})", vec!["?"; ids.len()].join(",")));
                values.extend(ids.iter().map(|i| rusqlite::types::Value::Integer(*i)));
            }
            if let Some(routes) = routes {
                sql.push_str(&format!(
                    " AND route IN ({})",
                    vec!["?"; routes.len()].join(",")
                ));
                values.extend(routes.iter().map(|r| r.clone().into()));
            }
            tx.execute(&sql, rusqlite::params_from_iter(values.iter()))? as u64
        }
        _ => return Ok(None),
    };
    Ok(Some(rows))
}

impl super::store::Reader {
    /// A page of the ledger, by id.
    pub fn deletions(&self, q: &DeletionQuery) -> rusqlite::Result<Vec<DeletionRecord>> {
        let mut sql = String::from(
            "SELECT id, route, braze_user_id, event_id, users, received_at, status, request_id,
                    updated_at, attempts, last_error, purged_events
             FROM deletion WHERE id > ?",
        );
        let mut values: Vec<rusqlite::types::Value> = vec![q.after.into()];
        if !q.statuses.is_empty() {
            sql.push_str(&format!(
                " AND status IN ({})",
                vec!["?"; q.statuses.len()].join(",")
            ));
            values.extend(q.statuses.iter().map(|s| s.as_str().to_owned().into()));
        }
        if let Some(routes) = &q.routes {
            sql.push_str(&format!(
                " AND route IN ({})",
                vec!["?"; routes.len()].join(",")
            ));
            values.extend(routes.iter().map(|r| r.clone().into()));
        }
        sql.push_str(" ORDER BY id LIMIT ?");
        values.push((q.limit.min(i64::MAX as usize) as i64).into());
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(values.iter()), |r| {
            let status: String = r.get(6)?;
            Ok(DeletionRecord {
                id: r.get(0)?,
                route: r.get(1)?,
                braze_user_id: r.get(2)?,
                event_id: r.get(3)?,
                users: decode_users(&r.get::<_, String>(4)?),
                received_at: r.get(5)?,
                // Written by this module only; an unknown value reads as still owed.
                status: DeletionStatus::parse(&status).unwrap_or(DeletionStatus::PendingSubmit),
                request_id: r.get(7)?,
                updated_at: r.get(8)?,
                attempts: r.get(9)?,
                last_error: r.get(10)?,
                purged_events: r.get(11)?,
            })
        })?;
        rows.collect()
    }

    /// Open ledger entries per route and status: how many, how many received before
    /// `overdue_before`, and the oldest `received_at`. Read through the status index, so a
    /// scrape costs what is open, not the whole history.
    pub fn deletion_summary(&self, overdue_before: i64) -> rusqlite::Result<Vec<DeletionSummary>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT route, status, count(*), sum(received_at < ?1), min(received_at)
             FROM deletion
             WHERE status IN ('pending_submit', 'submitted', 'failed', 'unconfigured')
             GROUP BY route, status ORDER BY route, status",
        )?;
        let rows = stmt.query_map([overdue_before], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (route, status, count, overdue, oldest) = row?;
            if let Some(status) = DeletionStatus::parse(&status) {
                out.push(DeletionSummary {
                    route,
                    status,
                    count: count.max(0) as u64,
                    overdue: overdue.max(0) as u64,
                    oldest_received_at: oldest,
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let store = super::super::Store::open(dir.path()).unwrap();
        let conn = store.connect().unwrap();
        (dir, conn)
    }

    #[test]
    fn mappings_not_seen_within_the_retention_and_old_tombstones_are_pruned() {
        let (_dir, mut conn) = store();
        let mut privacy = Privacy::default();
        let mut staged = Staged::default();
        let tx = conn.transaction().unwrap();
        let alice = HeapUser::Identity("alice".into());
        let bob = HeapUser::Identity("bob".into());
        privacy
            .remember(&tx, &mut staged, Subject::new("r", "old"), &alice, 1_000)
            .unwrap();
        privacy
            .remember(&tx, &mut staged, Subject::new("r", "recent"), &bob, 9_000)
            .unwrap();
        let gone = UserDeletion {
            route: "r",
            braze_user_id: "gone",
            event_id: "del-1",
            slot: 0,
        };
        privacy.delete_user(&tx, &mut staged, gone, 2_000).unwrap();
        Privacy::purge_queued(&tx, &mut staged).unwrap();
        tx.commit().unwrap();
        privacy.commit(staged);
        assert!(privacy.is_deleted(&Staged::default(), Subject::new("r", "gone")));

        assert_eq!(Privacy::merge_log(&mut conn).unwrap(), 2);
        privacy.prune(&mut conn, 5_000, 5_000).unwrap();
        let users: Vec<String> = conn
            .prepare("SELECT braze_user_id FROM identity_map")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(users, ["recent"]);
        assert!(!privacy.is_deleted(&Staged::default(), Subject::new("r", "gone")));
        let tombstones: i64 = conn
            .query_row("SELECT count(*) FROM tombstone", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tombstones, 0);
        // The memo forgot the pruned mapping: seeing the user again writes it again.
        let mut staged = Staged::default();
        let tx = conn.transaction().unwrap();
        privacy
            .remember(&tx, &mut staged, Subject::new("r", "old"), &alice, 10_000)
            .unwrap();
        tx.commit().unwrap();
        Privacy::merge_log(&mut conn).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM identity_map", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
    }

    #[test]
    fn a_mapping_is_rewritten_only_when_it_changes_or_a_day_passed() {
        let (_dir, mut conn) = store();
        let mut privacy = Privacy::default();
        let user = HeapUser::Identity("alice".into());
        let mut write = |at: i64| {
            let mut staged = Staged::default();
            let tx = conn.transaction().unwrap();
            privacy
                .remember(&tx, &mut staged, Subject::new("r", "a"), &user, at)
                .unwrap();
            let n = staged.memo.len();
            tx.commit().unwrap();
            privacy.commit(staged);
            n
        };
        assert_eq!(write(0), 1);
        assert_eq!(write(1_000), 0, "seen again within a day: no write");
        assert_eq!(write(LAST_SEEN_STEP + 1), 1);
    }

    #[test]
    fn a_deletion_finds_the_users_merged_into_the_map_and_those_still_in_the_log() {
        let (_dir, mut conn) = store();
        let mut privacy = Privacy::default();
        let a = Subject::new("r", "a");
        let mut staged = Staged::default();
        let tx = conn.transaction().unwrap();
        let alice = HeapUser::Identity("alice".into());
        privacy.remember(&tx, &mut staged, a, &alice, 1).unwrap();
        tx.commit().unwrap();
        privacy.commit(staged);
        assert_eq!(Privacy::merge_log(&mut conn).unwrap(), 1);
        let mut staged = Staged::default();
        let tx = conn.transaction().unwrap();
        let synthetic = HeapUser::UserId("42".into());
        privacy
            .remember(&tx, &mut staged, a, &synthetic, 2)
            .unwrap();
        let deletion = UserDeletion {
            route: "r",
            braze_user_id: "a",
            event_id: "del",
            slot: 7,
        };
        let receipt = privacy.delete_user(&tx, &mut staged, deletion, 3).unwrap();
        assert!(receipt.known_user, "from the map");
        let purged = Privacy::purge_queued(&tx, &mut staged).unwrap();
        assert_eq!(purged.known, [7], "and from the log");
        tx.commit().unwrap();
        let users: String = conn
            .query_row("SELECT users FROM deletion", [], |r| r.get(0))
            .unwrap();
        assert_eq!(decode_users(&users), [alice, synthetic]);
        let left: i64 = conn
            .query_row(
                "SELECT (SELECT count(*) FROM identity_map) + (SELECT count(*) FROM identity_log)",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            left, 0,
            "nothing of the deleted user stays in the map or the log"
        );
    }
}
