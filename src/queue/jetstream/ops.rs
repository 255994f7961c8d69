//! Changes of the queue ([`QueueOp`]) on JetStream, each per event, many in flight at once.
//!
//! An event that moves (to the dead letters, back to a lane) is written at its new place
//! first, with a message id derived from its old place, and removed from the old one after:
//! a crash in between leaves it in both places (the repeat of the change is then a duplicate
//! at the new place), never in neither.

use futures_util::{StreamExt, TryStreamExt, stream};

use crate::queue::{
    DeadLetterItem, OpOutcome, PropertyStamp, QueueError, QueueOp, ReplayItem, SavedLane,
    unix_millis,
};

use super::layout::user_token;
use super::read::{CONCURRENCY, Msg, SavedLaneRecord, Scanner, get, last};
use super::record;
use super::{Inner, unavailable};

impl Inner {
    pub(crate) async fn apply(&self, op: QueueOp) -> Result<OpOutcome, QueueError> {
        match op {
            QueueOp::Ack { seqs, stamps } => {
                // Stamps first: an event acknowledged is never sent again, so its stamp must
                // be there before it goes.
                self.write_stamps(stamps).await?;
                let removed = self.remove_queued(seqs_u64(&seqs)).await?;
                Ok(removed_outcome(removed))
            }
            QueueOp::Park { items } => {
                let changes = items
                    .into_iter()
                    .filter_map(|(seq, nb)| Some((u64::try_from(seq).ok()?, nb)))
                    .map(|(seq, nb)| (seq, Change::Park(nb)))
                    .collect();
                self.change_states(changes).await
            }
            QueueOp::Attempt { seqs, error } => {
                let changes = seqs_u64(&seqs)
                    .into_iter()
                    .map(|seq| (seq, Change::Attempt(error.clone())))
                    .collect();
                self.change_states(changes).await
            }
            QueueOp::DeadLetter { items } => {
                let seqs: Vec<i64> = items.iter().map(|i| i.seq).collect();
                let found: Vec<Option<Msg>> = stream::iter(seqs)
                    .map(|seq| async move {
                        match u64::try_from(seq) {
                            Ok(seq) => self.get_queued(seq).await,
                            Err(_) => Ok(None),
                        }
                    })
                    .buffered(CONCURRENCY)
                    .try_collect()
                    .await?;
                let moves = found
                    .into_iter()
                    .zip(&items)
                    .filter_map(|(m, item)| Some((m?, item.clone())))
                    .collect();
                Ok(removed_outcome(self.dead_letter_all(moves).await?))
            }
            QueueOp::DeadLetterApp { app_id, reason } => {
                let mut scanner =
                    Scanner::open(self, &self.queue, self.layout.lane(&app_id), 1).await?;
                let mut moved = 0;
                loop {
                    let page = scanner.next_page(self, 500).await?;
                    if page.is_empty() {
                        break;
                    }
                    let moves = page
                        .into_iter()
                        .map(|m| {
                            let item = DeadLetterItem {
                                seq: m.seq as i64,
                                reason: reason.clone(),
                                detail: None,
                            };
                            (m, item)
                        })
                        .collect();
                    moved += self.dead_letter_all(moves).await?;
                }
                scanner.close();
                Ok(removed_outcome(moved))
            }
            QueueOp::Replay { items } => self.replay(items).await,
            QueueOp::Purge { reason, ids } => self.purge_dead(reason, ids).await,
            QueueOp::SaveLane(lane) => self.save_lane(&lane).await,
            ledger => Ok(self.apply_ledger_op(&ledger).await?.unwrap_or_default()),
        }
    }

    /// Deletes queued events and their records; how many were there.
    pub(crate) async fn remove_queued(&self, seqs: Vec<u64>) -> Result<u64, QueueError> {
        let removed: Vec<bool> = stream::iter(seqs.iter().copied())
            .map(|seq| async move { self.delete(&self.queue, seq).await })
            .buffered(CONCURRENCY)
            .try_collect()
            .await?;
        self.remove_states(&seqs).await?;
        Ok(removed.iter().filter(|r| **r).count() as u64)
    }

    /// Deletes one message; false when it was not there.
    pub(super) async fn delete(
        &self,
        stream: &async_nats::jetstream::stream::Stream,
        seq: u64,
    ) -> Result<bool, QueueError> {
        use async_nats::jetstream::stream::DeleteMessageErrorKind;
        match stream.delete_message(seq).await {
            Ok(done) => Ok(done),
            // JetStream answered, and refused: the message is not there.
            Err(e) if matches!(e.kind(), DeleteMessageErrorKind::JetStream(_)) => Ok(false),
            Err(e) => Err(unavailable(self, e)),
        }
    }

    /// Removes the delivery records of these seqs, in JetStream and in memory.
    async fn remove_states(&self, seqs: &[u64]) -> Result<(), QueueError> {
        let subjects: Vec<String> = {
            let lanes = self.lanes.lock().expect("lane states lock");
            seqs.iter()
                .filter_map(|seq| Some(self.layout.event_state(lanes.app_of.get(seq)?, *seq)))
                .collect()
        };
        stream::iter(subjects)
            .map(|subject| async move {
                self.state
                    .purge()
                    .filter(subject)
                    .await
                    .map(|_| ())
                    .map_err(|e| unavailable(self, e))
            })
            .buffered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        self.forget_states(seqs);
        Ok(())
    }

    /// Parks or counts attempts: a new record per event, written before memory follows it.
    async fn change_states(&self, changes: Vec<(u64, Change)>) -> Result<OpOutcome, QueueError> {
        let done: Vec<bool> = stream::iter(changes)
            .map(|(seq, change)| async move { self.change_state(seq, change).await })
            .buffered(CONCURRENCY)
            .try_collect()
            .await?;
        Ok(OpOutcome {
            rows: done.iter().filter(|d| **d).count() as u64,
            ..OpOutcome::default()
        })
    }

    async fn change_state(&self, seq: u64, change: Change) -> Result<bool, QueueError> {
        // The event must still be queued, and its subject names its lane.
        let Some(m) = self.get_queued(seq).await? else {
            self.forget_states(&[seq]);
            return Ok(false);
        };
        let Some(app) = self.layout.app_of(&m.subject) else {
            return Ok(false);
        };
        let mut state = {
            let lanes = self.lanes.lock().expect("lane states lock");
            lanes
                .by_app
                .get(&app)
                .and_then(|s| s.get(&seq))
                .cloned()
                .unwrap_or_default()
        };
        match change {
            Change::Park(nb) => state.not_before = nb,
            Change::Attempt(error) => {
                state.attempts += 1;
                state.error = Some(error);
            }
        }
        let body = serde_json::to_vec(&state).expect("a state always serializes");
        self.js
            .publish(self.layout.event_state(&app, seq), body.into())
            .await
            .map_err(|e| unavailable(self, e))?
            .await
            .map_err(|e| unavailable(self, e))?;
        let mut lanes = self.lanes.lock().expect("lane states lock");
        lanes.app_of.insert(seq, app.clone());
        lanes.by_app.entry(app).or_default().insert(seq, state);
        Ok(true)
    }

    /// Moves queued events to the dead letters, in the order given (which their dead-letter
    /// seqs follow); how many moved.
    async fn dead_letter_all(&self, moves: Vec<(Msg, DeadLetterItem)>) -> Result<u64, QueueError> {
        let now = unix_millis();
        let mut outgoing = Vec::with_capacity(moves.len());
        let mut seqs = Vec::with_capacity(moves.len());
        for (m, item) in &moves {
            let Some((mut meta, payload)) = record::decode(&m.body) else {
                continue;
            };
            if let Some(app) = self.layout.app_of(&m.subject) {
                let lanes = self.lanes.lock().expect("lane states lock");
                if let Some(state) = lanes.by_app.get(&app).and_then(|s| s.get(&m.seq)) {
                    meta.attempts = state.attempts;
                }
            }
            meta.reason = Some(item.reason.clone());
            meta.detail = item.detail.clone();
            meta.dead_at = now;
            outgoing.push((
                self.layout.dead(&item.reason),
                format!("q-{}", m.seq),
                record::encode(&meta, &payload),
            ));
            seqs.push(m.seq);
        }
        for ack in self.publish_all(outgoing).await {
            ack.map_err(|e| unavailable(self, e))?;
        }
        self.remove_queued(seqs).await
    }

    /// Dead letters by seq, in the order given; `None` where one is gone.
    pub(super) async fn read_dead(&self, seqs: Vec<i64>) -> Result<Vec<Option<Msg>>, QueueError> {
        stream::iter(seqs)
            .map(|seq| async move {
                match u64::try_from(seq) {
                    Ok(seq) => get(self, &self.dead, seq).await,
                    Err(_) => Ok(None),
                }
            })
            .buffered(CONCURRENCY)
            .try_collect()
            .await
    }

    /// Moves dead letters (as read) back to lanes as fresh events, in the order given; how
    /// many moved.
    pub(super) async fn replay_all(
        &self,
        moves: Vec<(Msg, ReplayItem)>,
    ) -> Result<u64, QueueError> {
        let now = unix_millis();
        let mut outgoing = Vec::new();
        let mut moved = Vec::new();
        for (m, item) in moves {
            let Some((mut meta, payload)) = record::decode(&m.body) else {
                continue;
            };
            meta.route = item.route.clone();
            meta.app_id = item.app_id.clone();
            meta.attempts = 0;
            meta.reason = None;
            meta.detail = None;
            meta.dead_at = 0;
            meta.received_at = now;
            meta.set_heap_user(item.heap_user.as_ref());
            self.mark_app(&item.app_id)
                .await
                .map_err(|e| QueueError::Unavailable(e.to_string()))?;
            let subject = self.layout.queued(
                &item.app_id,
                &user_token(&item.route, meta.braze_user_id.as_deref()),
            );
            outgoing.push((
                subject,
                format!("d-{}", m.seq),
                record::encode(&meta, &payload),
            ));
            moved.push(m.seq);
        }
        for ack in self.publish_all(outgoing).await {
            ack.map_err(|e| unavailable(self, e))?;
        }
        let removed: Vec<bool> = stream::iter(moved)
            .map(|seq| async move { self.delete(&self.dead, seq).await })
            .buffered(CONCURRENCY)
            .try_collect()
            .await?;
        Ok(removed.iter().filter(|r| **r).count() as u64)
    }

    async fn purge_dead(
        &self,
        reason: Option<String>,
        ids: Option<Vec<i64>>,
    ) -> Result<OpOutcome, QueueError> {
        let rows = match (ids, reason) {
            (Some(ids), reason) => {
                let reason = reason.as_deref();
                let done: Vec<bool> = stream::iter(seqs_u64(&ids))
                    .map(|seq| async move {
                        if let Some(reason) = reason {
                            let Some(m) = get(self, &self.dead, seq).await? else {
                                return Ok(false);
                            };
                            if self.layout.reason_of(&m.subject).as_deref() != Some(reason) {
                                return Ok(false);
                            }
                        }
                        self.delete(&self.dead, seq).await
                    })
                    .buffered(CONCURRENCY)
                    .try_collect()
                    .await?;
                done.iter().filter(|d| **d).count() as u64
            }
            (None, Some(reason)) => {
                self.dead
                    .purge()
                    .filter(self.layout.dead(&reason))
                    .await
                    .map_err(|e| unavailable(self, e))?
                    .purged
            }
            (None, None) => {
                self.dead
                    .purge()
                    .await
                    .map_err(|e| unavailable(self, e))?
                    .purged
            }
        };
        Ok(OpOutcome {
            rows,
            ..OpOutcome::default()
        })
    }

    async fn save_lane(&self, lane: &SavedLane) -> Result<OpOutcome, QueueError> {
        let body =
            serde_json::to_vec(&SavedLaneRecord::of(lane)).expect("a saved lane always serializes");
        self.js
            .publish(self.layout.saved_lane(&lane.app_id), body.into())
            .await
            .map_err(|e| unavailable(self, e))?
            .await
            .map_err(|e| unavailable(self, e))?;
        Ok(OpOutcome {
            rows: 1,
            ..OpOutcome::default()
        })
    }

    /// Keeps, per key, the newest event time: a stamp older than the one stored changes nothing.
    async fn write_stamps(&self, stamps: Vec<PropertyStamp>) -> Result<(), QueueError> {
        stream::iter(stamps)
            .map(|stamp| async move {
                let subject = self.layout.stamp(stamp.key);
                let stored = last(self, &self.stamps, subject.clone())
                    .await?
                    .and_then(|b| std::str::from_utf8(&b).ok()?.parse::<i64>().ok());
                if stored.is_some_and(|t| t >= stamp.event_time) {
                    return Ok(());
                }
                self.js
                    .publish(subject, stamp.event_time.to_string().into())
                    .await
                    .map_err(|e| unavailable(self, e))?
                    .await
                    .map_err(|e| unavailable(self, e))?;
                Ok::<(), QueueError>(())
            })
            .buffered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }
}

/// A change of one event's delivery record.
#[derive(Debug, Clone)]
enum Change {
    Park(i64),
    Attempt(String),
}

fn seqs_u64(seqs: &[i64]) -> Vec<u64> {
    seqs.iter().filter_map(|s| u64::try_from(*s).ok()).collect()
}

/// `removed` events left the queue. JetStream does not say how many bytes they held; the
/// totals are read again from the stream after the change.
fn removed_outcome(removed: u64) -> OpOutcome {
    OpOutcome {
        rows: removed,
        queue_events_delta: -(removed as i64),
        queue_bytes_delta: 0,
    }
}
