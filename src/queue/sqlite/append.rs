//! Appends: one transaction for every request waiting, with dedup, the backlog quota and the
//! free-disk reserve checked per request, so a request is stored whole or refused whole. The
//! identity map, the tombstones and deletions ([`super::privacy`]) change in the same
//! transaction, so a deletion and the purge it causes are acknowledged together.

use std::sync::atomic::Ordering;

use rusqlite::{ErrorCode, params};

use super::dedup::Undo;
use super::privacy::{Privacy, Staged, Subject, UserDeletion};
use super::writer::{Reply, WriterState, add_signed};
use crate::queue::{AppendError, AppendReceipt, Appended, DeletionReceipt, NewEvent, unix_millis};

impl WriterState {
    pub(super) fn commit_group(&mut self, group: Vec<(Vec<NewEvent>, Reply)>) {
        if self.dedup.is_none() {
            for (_, reply) in group {
                let _ = reply.send(Err(AppendError::Unavailable("maintenance writer".into())));
            }
            return;
        }
        let mut free = self.free_disk_bytes();
        let outcome = self.write_group(&group, &mut free);
        match outcome {
            Ok((results, delta, staged)) => {
                add_signed(&self.stats.events, delta.events);
                add_signed(&self.stats.bytes, delta.bytes);
                self.stats.healthy.store(true, Ordering::Relaxed);
                self.free_bytes = free;
                self.privacy.commit(staged);
                for ((_, reply), result) in group.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                let err = classify(&e);
                if err == AppendError::DiskFull {
                    tracing::warn!(message = "Commit failed: disk full.", error = %e);
                    self.free_checked = None;
                } else {
                    tracing::error!(message = "Commit failed.", error = %e);
                    self.stats.healthy.store(false, Ordering::Relaxed);
                }
                for (_, reply) in group {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }

    /// One transaction for the whole group. Returns per-request results, the change of the
    /// queue totals, and what the privacy memo learns once it commits.
    #[allow(clippy::type_complexity)]
    fn write_group(
        &mut self,
        group: &[(Vec<NewEvent>, Reply)],
        free: &mut u64,
    ) -> rusqlite::Result<(Vec<Result<AppendReceipt, AppendError>>, Delta, Staged)> {
        let now = unix_millis();
        let cutoff = now - self.config.dedup_window.as_millis() as i64;
        let mut undo = Undo::default();
        let mut staged = Staged::default();
        let result = self.write_group_tx(group, free, now, cutoff, &mut undo, &mut staged);
        if let (Err(_), Some(dedup)) = (&result, self.dedup.as_mut()) {
            dedup.rollback(undo);
        }
        result.map(|(results, delta)| (results, delta, staged))
    }

    #[allow(clippy::type_complexity)]
    fn write_group_tx(
        &mut self,
        group: &[(Vec<NewEvent>, Reply)],
        free: &mut u64,
        now: i64,
        cutoff: i64,
        undo: &mut Undo,
        staged: &mut Staged,
    ) -> rusqlite::Result<(Vec<Result<AppendReceipt, AppendError>>, Delta)> {
        let mut queued_bytes = self.stats.bytes() as i64;
        let mut delta = Delta::default();
        let mut results: Vec<Result<AppendReceipt, AppendError>> = Vec::with_capacity(group.len());
        // Where each deletion's receipt is: (request, event).
        let mut slots: Vec<(usize, usize)> = Vec::new();
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO queue (route, app_id, workspace, event_id, event_type, identity,
                                    event_time, received_at, payload, braze_user_id, user_key)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            let mut insert_dead = tx.prepare_cached(
                "INSERT INTO dead_letter (route, app_id, workspace, event_id, event_type, identity,
                                          event_time, received_at, attempts, reason, dead_at, payload,
                                          braze_user_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, ?9, ?8, ?10, ?11)",
            )?;
            for (events, _) in group {
                let dedup = self
                    .dedup
                    .as_mut()
                    .expect("commit_group refuses appends without a dedup index");
                // Only events new to the dedup window count against the quota and the disk: a
                // pure re-send adds nothing and is acknowledged even with a full backlog.
                let mut incoming = 0i64;
                for e in events {
                    if !e.deletion && !dedup.is_duplicate(&tx, &e.event_id, cutoff)? {
                        incoming += e.payload.len() as i64;
                    }
                }
                if incoming > 0
                    && queued_bytes.saturating_add(incoming) as u64 > self.config.max_queue_bytes
                {
                    results.push(Err(AppendError::OverQuota {
                        max: self.config.max_queue_bytes,
                    }));
                    continue;
                }
                // Room for the rows plus their WAL copy and index entries.
                let needed = (incoming as u64).saturating_mul(3);
                if incoming > 0 && *free < self.config.min_free_disk_bytes.saturating_add(needed) {
                    results.push(Err(AppendError::DiskFull));
                    continue;
                }
                let mut outcomes = Vec::with_capacity(events.len());
                for ev in events {
                    let dedup = self
                        .dedup
                        .as_mut()
                        .expect("commit_group refuses appends without a dedup index");
                    if !dedup.check_and_record(&tx, &ev.event_id, now, cutoff, undo)? {
                        outcomes.push(Appended::Duplicate);
                        continue;
                    }
                    let user = ev.braze_user_id.as_deref();
                    let subject = user.map(|u| Subject::new(&ev.route, u));
                    if let (Some(user), Some(subject), true) =
                        (user, subject, ev.dead_letter.is_none())
                    {
                        if ev.deletion {
                            let slot = slots.len();
                            slots.push((results.len(), outcomes.len()));
                            let deletion = UserDeletion {
                                route: &ev.route,
                                braze_user_id: user,
                                event_id: &ev.event_id,
                                slot,
                            };
                            let receipt = self.privacy.delete_user(&tx, staged, deletion, now)?;
                            outcomes.push(Appended::Deletion(receipt));
                            continue;
                        }
                        if self.privacy.is_deleted(staged, subject) {
                            outcomes.push(Appended::DeletedUser);
                            continue;
                        }
                        if let Some(heap_user) = &ev.heap_user {
                            self.privacy
                                .remember(&tx, staged, subject, heap_user, now)?;
                        }
                    }
                    if let Some(reason) = ev.dead_letter {
                        insert_dead.execute(params![
                            &*ev.route,
                            &*ev.app_id,
                            ev.workspace.as_deref(),
                            ev.event_id,
                            ev.event_type,
                            ev.identity,
                            ev.event_time,
                            now,
                            reason,
                            &ev.payload[..],
                            user,
                        ])?;
                    } else {
                        insert.execute(params![
                            &*ev.route,
                            &*ev.app_id,
                            ev.workspace.as_deref(),
                            ev.event_id,
                            ev.event_type,
                            ev.identity,
                            ev.event_time,
                            now,
                            &ev.payload[..],
                            user,
                            subject.map(|s| s.key),
                        ])?;
                        let len = ev.payload.len() as i64;
                        delta.events += 1;
                        delta.bytes += len;
                        queued_bytes += len;
                        *free = free.saturating_sub(len as u64 * 2);
                    }
                    outcomes.push(Appended::Queued);
                }
                results.push(Ok(AppendReceipt { outcomes }));
            }
            // The queued events of the users deleted above, all in one scan.
            let purged = Privacy::purge_queued(&tx, staged)?;
            delta.bytes -= purged.bytes;
            for (slot, seqs) in purged.by_slot {
                delta.events -= seqs.len() as i64;
                let known = purged.known.contains(&slot);
                if let Some(d) = deletion_receipt(&mut results, slots[slot]) {
                    d.purged_queued = seqs;
                    d.known_user |= known;
                }
            }
            if delta.events != 0 || delta.bytes != 0 {
                tx.execute(
                    "UPDATE stats SET events = events + ?1, bytes = bytes + ?2 WHERE id = 1",
                    params![delta.events, delta.bytes],
                )?;
            }
        }
        tx.commit()?;
        Ok((results, delta))
    }
}

/// The receipt of the deletion at `(request, event)` in `results`.
fn deletion_receipt(
    results: &mut [Result<AppendReceipt, AppendError>],
    (request, event): (usize, usize),
) -> Option<&mut DeletionReceipt> {
    match results
        .get_mut(request)?
        .as_mut()
        .ok()?
        .outcomes
        .get_mut(event)?
    {
        Appended::Deletion(d) => Some(d),
        _ => None,
    }
}

/// How an append changed the queue totals (a deletion removes events).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Delta {
    events: i64,
    bytes: i64,
}

fn classify(e: &rusqlite::Error) -> AppendError {
    match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::DiskFull => {
            AppendError::DiskFull
        }
        other => AppendError::Unavailable(other.to_string()),
    }
}
