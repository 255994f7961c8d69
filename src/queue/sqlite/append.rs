//! Appends: one transaction for every request waiting, with dedup, the backlog quota and the
//! free-disk reserve checked per request, so a request is stored whole or refused whole.

use std::sync::atomic::Ordering;

use rusqlite::{ErrorCode, params};

use super::dedup::Undo;
use super::writer::{Reply, WriterState};
use crate::queue::{AppendError, AppendReceipt, NewEvent, unix_millis};

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
            Ok((results, added_events, added_bytes)) => {
                self.stats.events.fetch_add(added_events, Ordering::Relaxed);
                self.stats.bytes.fetch_add(added_bytes, Ordering::Relaxed);
                self.stats.healthy.store(true, Ordering::Relaxed);
                self.free_bytes = free;
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

    /// One transaction for the whole group. Returns per-request results and what was added.
    #[allow(clippy::type_complexity)]
    fn write_group(
        &mut self,
        group: &[(Vec<NewEvent>, Reply)],
        free: &mut u64,
    ) -> rusqlite::Result<(Vec<Result<AppendReceipt, AppendError>>, u64, u64)> {
        let now = unix_millis();
        let cutoff = now - self.config.dedup_window.as_millis() as i64;
        let mut undo = Undo::default();
        let result = self.write_group_tx(group, free, now, cutoff, &mut undo);
        if let (Err(_), Some(dedup)) = (&result, self.dedup.as_mut()) {
            dedup.rollback(undo);
        }
        result
    }

    #[allow(clippy::type_complexity)]
    fn write_group_tx(
        &mut self,
        group: &[(Vec<NewEvent>, Reply)],
        free: &mut u64,
        now: i64,
        cutoff: i64,
        undo: &mut Undo,
    ) -> rusqlite::Result<(Vec<Result<AppendReceipt, AppendError>>, u64, u64)> {
        let mut queued_bytes = self.stats.bytes();
        let mut added_events = 0u64;
        let mut added_bytes = 0u64;
        let mut results = Vec::with_capacity(group.len());
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO queue (route, app_id, workspace, event_id, event_type, identity,
                                    event_time, received_at, payload)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            let mut insert_dead = tx.prepare_cached(
                "INSERT INTO dead_letter (route, app_id, workspace, event_id, event_type, identity,
                                          event_time, received_at, attempts, reason, dead_at, payload)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, ?9, ?8, ?10)",
            )?;
            for (events, _) in group {
                let dedup = self
                    .dedup
                    .as_mut()
                    .expect("commit_group refuses appends without a dedup index");
                // Only events new to the dedup window count against the quota and the disk: a
                // pure re-send adds nothing and is acknowledged even with a full backlog.
                let mut incoming = 0u64;
                for e in events {
                    if !dedup.is_duplicate(&tx, &e.event_id, cutoff)? {
                        incoming += e.payload.len() as u64;
                    }
                }
                if incoming > 0
                    && queued_bytes.saturating_add(incoming) > self.config.max_queue_bytes
                {
                    results.push(Err(AppendError::OverQuota {
                        max: self.config.max_queue_bytes,
                    }));
                    continue;
                }
                // Room for the rows plus their WAL copy and index entries.
                let needed = incoming.saturating_mul(3);
                if incoming > 0 && *free < self.config.min_free_disk_bytes.saturating_add(needed) {
                    results.push(Err(AppendError::DiskFull));
                    continue;
                }
                let mut queued = Vec::with_capacity(events.len());
                for ev in events {
                    let fresh = dedup.check_and_record(&tx, &ev.event_id, now, cutoff, undo)?;
                    if fresh && let Some(reason) = ev.dead_letter {
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
                        ])?;
                    } else if fresh {
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
                        ])?;
                        added_events += 1;
                        added_bytes += ev.payload.len() as u64;
                        queued_bytes += ev.payload.len() as u64;
                        *free = free.saturating_sub(ev.payload.len() as u64 * 2);
                    }
                    queued.push(fresh);
                }
                results.push(Ok(AppendReceipt { queued }));
            }
            if added_events > 0 {
                tx.execute(
                    "UPDATE stats SET events = events + ?1, bytes = bytes + ?2 WHERE id = 1",
                    params![added_events as i64, added_bytes as i64],
                )?;
            }
        }
        tx.commit()?;
        Ok((results, added_events, added_bytes))
    }
}

fn classify(e: &rusqlite::Error) -> AppendError {
    match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::DiskFull => {
            AppendError::DiskFull
        }
        other => AppendError::Unavailable(other.to_string()),
    }
}
