//! Delivery-side changes to the queue, applied by the writer thread: acknowledge (delete, and
//! stamp the user properties it set), park, record a failed attempt, dead-letter, replay dead
//! letters, save a lane's state.
//!
//! Each operation keeps the running totals in `stats` exact, in the same transaction.

use rusqlite::{OptionalExtension, Transaction, params};

use super::continuity;
use super::privacy::{self, Privacy, Staged};
use crate::queue::{OpOutcome, QueueOp};

fn filter_sql(
    reason: &Option<String>,
    ids: &Option<Vec<i64>>,
) -> (String, Vec<rusqlite::types::Value>) {
    let mut clauses = Vec::new();
    let mut values: Vec<rusqlite::types::Value> = Vec::new();
    if let Some(r) = reason {
        clauses.push("reason = ?".to_owned());
        values.push(r.clone().into());
    }
    if let Some(ids) = ids {
        let marks = vec!["?"; ids.len()].join(",");
        clauses.push(format!("seq IN ({marks})"));
        values.extend(ids.iter().map(|i| rusqlite::types::Value::Integer(*i)));
    }
    if clauses.is_empty() {
        (String::new(), values)
    } else {
        (format!("WHERE {}", clauses.join(" AND ")), values)
    }
}

pub(crate) fn apply(
    tx: &Transaction<'_>,
    op: &QueueOp,
    now: i64,
    privacy: &mut Privacy,
    staged: &mut Staged,
) -> rusqlite::Result<OpOutcome> {
    let mut out = OpOutcome::default();
    match op {
        QueueOp::Ack { seqs, stamps } => {
            continuity::stamp(tx, stamps, now)?;
            let mut del =
                tx.prepare_cached("DELETE FROM queue WHERE seq = ?1 RETURNING length(payload)")?;
            for seq in seqs {
                if let Some(len) = del.query_row([seq], |r| r.get::<_, i64>(0)).optional()? {
                    out.rows += 1;
                    out.queue_events_delta -= 1;
                    out.queue_bytes_delta -= len;
                }
            }
        }
        QueueOp::Park { items } => {
            let mut upd = tx.prepare_cached("UPDATE queue SET not_before = ?2 WHERE seq = ?1")?;
            for (seq, not_before) in items {
                out.rows += upd.execute(params![seq, not_before])? as u64;
            }
        }
        QueueOp::Attempt { seqs, error } => {
            let mut upd = tx.prepare_cached(
                "UPDATE queue SET attempts = attempts + 1, last_error = ?2 WHERE seq = ?1",
            )?;
            for seq in seqs {
                out.rows += upd.execute(params![seq, error])? as u64;
            }
        }
        QueueOp::DeadLetter { items } => {
            let mut copy = tx.prepare_cached(
                "INSERT INTO dead_letter (route, app_id, workspace, event_id, event_type, identity,
                     event_time, received_at, attempts, reason, detail, dead_at, payload,
                     braze_user_id)
                 SELECT route, app_id, workspace, event_id, event_type, identity, event_time,
                        received_at, attempts, ?2, ?3, ?4, payload, braze_user_id
                 FROM queue WHERE seq = ?1",
            )?;
            let mut del =
                tx.prepare_cached("DELETE FROM queue WHERE seq = ?1 RETURNING length(payload)")?;
            for item in items {
                if copy.execute(params![item.seq, item.reason, item.detail, now])? == 1 {
                    let len: i64 = del.query_row([item.seq], |r| r.get(0))?;
                    out.rows += 1;
                    out.queue_events_delta -= 1;
                    out.queue_bytes_delta -= len;
                }
            }
        }
        QueueOp::DeadLetterApp { app_id, reason } => {
            let (n, bytes): (i64, i64) = tx.query_row(
                "SELECT count(*), coalesce(sum(length(payload)), 0) FROM queue WHERE app_id = ?1",
                [app_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            tx.execute(
                "INSERT INTO dead_letter (route, app_id, workspace, event_id, event_type, identity,
                     event_time, received_at, attempts, reason, detail, dead_at, payload,
                     braze_user_id)
                 SELECT route, app_id, workspace, event_id, event_type, identity, event_time,
                        received_at, attempts, ?2, 'no route delivers to this Heap app id', ?3, payload,
                        braze_user_id
                 FROM queue WHERE app_id = ?1 ORDER BY seq",
                params![app_id, reason, now],
            )?;
            tx.execute("DELETE FROM queue WHERE app_id = ?1", [app_id])?;
            out.rows = n as u64;
            out.queue_events_delta = -n;
            out.queue_bytes_delta = -bytes;
        }
        QueueOp::Replay { items } => {
            let mut copy = tx.prepare_cached(
                "INSERT INTO queue (route, app_id, workspace, event_id, event_type, identity,
                                    event_time, received_at, payload, braze_user_id, user_key)
                 SELECT ?2, ?3, workspace, event_id, event_type, identity, event_time, ?4, payload,
                        braze_user_id, ?5
                 FROM dead_letter WHERE seq = ?1",
            )?;
            let mut del = tx.prepare_cached(
                "DELETE FROM dead_letter WHERE seq = ?1 RETURNING length(payload)",
            )?;
            let mut user_of = tx
                .prepare_cached("SELECT braze_user_id, event_id FROM dead_letter WHERE seq = ?1")?;
            for item in items {
                let Some((user, event_id)) = user_of
                    .query_row([item.seq], |r| {
                        Ok((r.get::<_, Option<String>>(0)?, r.get::<_, String>(1)?))
                    })
                    .optional()?
                else {
                    continue;
                };
                if let Some(user) = &user {
                    if item.deletion {
                        // The dead letter itself is on another route (unroutable): the
                        // purge does not reach it.
                        del.query_row([item.seq], |r| r.get::<_, i64>(0))?;
                        let deletion = privacy::UserDeletion {
                            route: &item.route,
                            braze_user_id: user,
                            event_id: &event_id,
                            slot: 0,
                        };
                        privacy.delete_user(tx, staged, deletion, now)?;
                        let purged = Privacy::purge_queued(tx, staged)?;
                        out.rows += 1;
                        out.queue_events_delta -= purged
                            .by_slot
                            .iter()
                            .map(|(_, seqs)| seqs.len() as i64)
                            .sum::<i64>();
                        out.queue_bytes_delta -= purged.bytes;
                        continue;
                    }
                    if Privacy::tombstoned_in_store(tx, &item.route, user)? {
                        // The user was deleted on that route: dropped, never delivered.
                        del.query_row([item.seq], |r| r.get::<_, i64>(0))?;
                        out.rows += 1;
                        continue;
                    }
                    if let Some(heap_user) = &item.heap_user {
                        let subject = privacy::Subject::new(&item.route, user);
                        privacy.remember(tx, staged, subject, heap_user, now)?;
                    }
                }
                let key = user.as_deref().map(|u| privacy::user_key(&item.route, u));
                if copy.execute(params![item.seq, item.route, item.app_id, now, key])? == 1 {
                    let len: i64 = del.query_row([item.seq], |r| r.get(0))?;
                    out.rows += 1;
                    out.queue_events_delta += 1;
                    out.queue_bytes_delta += len;
                }
            }
        }
        QueueOp::Purge { reason, ids } => {
            let (filter, values) = filter_sql(reason, ids);
            out.rows = tx.execute(
                &format!("DELETE FROM dead_letter {filter}"),
                rusqlite::params_from_iter(values.iter()),
            )? as u64;
        }
        QueueOp::SaveLane(lane) => {
            out.rows = continuity::save_lane(tx, lane, now)?;
        }
        ledger => {
            out.rows = privacy::apply_ledger_op(tx, ledger, now)?.unwrap_or(0);
        }
    }
    if out.queue_events_delta != 0 || out.queue_bytes_delta != 0 {
        tx.execute(
            "UPDATE stats SET events = events + ?1, bytes = bytes + ?2 WHERE id = 1",
            params![out.queue_events_delta, out.queue_bytes_delta],
        )?;
    }
    Ok(out)
}
