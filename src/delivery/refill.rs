//! Reading the queue into a lane's window, and mapping each event on its way in: what cannot
//! be sent (expired, skipped by the mapping, invalid for Heap) is finished here, before it
//! takes any budget.

use tokio::time::Instant;

use super::lane::{Delivery, Item, PENDING_BATCHES};
use crate::heap::bulk;
use crate::heap::model::{validate_track_item, validate_user_properties_item};
use crate::queue::{DeadLetterItem, QueueError, QueueOp, QueuedEvent, ReadyRequest, unix_millis};
use crate::transform::map_event;

/// One refill reads at most this fraction of the window's bytes: the rows read are held twice
/// for a moment (stored bytes, then mapped items), so reading the window in slices keeps that
/// overlap small. Refill runs again on the next step while the window has room.
const READ_SLICES: usize = 8;

/// Why a stored event will not be sent.
pub(super) enum Unsendable {
    Dead(DeadLetterItem),
    /// Sequence, reason, and whether to keep it as a dead letter.
    Skipped(i64, &'static str, bool),
}

impl Delivery {
    /// Tops up `pending` from the queue: due parked events first, then fresh ones, up to the
    /// window's event count and bytes. The read stops at the bytes left in the window, or a
    /// slice of it (at least one event), so a backlog of huge events is never read whole.
    pub(super) async fn refill(&mut self) -> Result<(), QueueError> {
        let want = (self.max_batch() * PENDING_BATCHES).saturating_sub(self.pending.len());
        if want == 0 || !self.has_room(1) {
            return Ok(());
        }
        let room = self
            .cfg
            .window_bytes
            .saturating_sub(self.held_bytes)
            .min(self.cfg.window_bytes / READ_SLICES)
            .max(1);
        let now = unix_millis();
        // Due events stay due in the queue while they wait here; the read passes them over.
        let ready = self
            .queue
            .ready(ReadyRequest {
                app_id: self.cfg.app_id.clone(),
                after: self.cursor,
                now,
                max_events: want,
                max_bytes: room,
                held: self.in_memory.keys().copied().collect(),
            })
            .await?;
        let mut unsendable = Vec::new();
        let mut loaded = 0usize;
        for row in ready.due {
            if loaded >= want || !self.has_room(row.event.payload.len()) {
                break;
            }
            loaded += usize::from(self.take_row(row, now, &mut unsendable));
        }
        for row in ready.fresh {
            // The cursor moves only past rows handled here, so none is ever stepped over.
            if loaded >= want || !self.has_room(row.event.payload.len()) {
                break;
            }
            self.cursor = self.cursor.max(row.seq);
            // A future-dated row (parked before a restart) comes back as due.
            if row.not_before <= now {
                loaded += usize::from(self.take_row(row, now, &mut unsendable));
            }
        }
        self.finish_unsendable(unsendable).await;
        Ok(())
    }

    /// Loads one row unless it is already in memory; returns whether it was loaded.
    fn take_row(&mut self, row: QueuedEvent, now: i64, unsendable: &mut Vec<Unsendable>) -> bool {
        if self.in_memory.contains_key(&row.seq) {
            return false;
        }
        // Unsendable rows are finished (and forgotten) before refill returns: no weight.
        let weight = match self.prepare(&row, now) {
            Ok(item) => {
                let weight = row
                    .event
                    .payload
                    .len()
                    .max(item.track_bytes + item.props_bytes);
                self.pending.push_back(item);
                weight
            }
            Err(u) => {
                unsendable.push(u);
                0
            }
        };
        self.hold(row.seq, weight);
        true
    }

    /// Maps one stored event, or says why it will not be sent.
    fn prepare(&self, row: &QueuedEvent, now: i64) -> Result<Item, Unsendable> {
        if self.is_expired(row.event.received_at, now) {
            return Err(Unsendable::Dead(self.expired(row.seq)));
        }
        let options = self.cfg.mapping_for(&row.event.route);
        let mapped = map_event(&row.event.payload, &options.mapping).map_err(|reason| {
            Unsendable::Skipped(row.seq, reason.as_str(), options.dead_letter_skipped)
        })?;
        for dropped in &mapped.dropped {
            crate::metrics::count_dropped_value(dropped.reason);
        }
        let invalid = validate_track_item(&mapped.track).err().or_else(|| {
            mapped
                .user_properties
                .as_ref()
                .and_then(|u| validate_user_properties_item(u).err())
        });
        if let Some(why) = invalid {
            return Err(Unsendable::Dead(DeadLetterItem {
                seq: row.seq,
                reason: "invalid_mapping".into(),
                detail: Some(why),
            }));
        }
        Ok(Item {
            seq: row.seq,
            received_at: row.event.received_at,
            event_time: crate::transform::target::event_seconds(row.event.event_time),
            loaded_at: Instant::now(),
            track_bytes: bulk::serialized_len(&mapped.track),
            props_bytes: mapped
                .user_properties
                .as_ref()
                .map_or(0, bulk::serialized_len),
            track: mapped.track,
            user_properties: mapped.user_properties,
            track_done: false,
        })
    }

    pub(super) fn is_expired(&self, received_at: i64, now: i64) -> bool {
        now.saturating_sub(received_at) > self.cfg.max_event_age.as_millis() as i64
    }

    /// The dead letter of an event older than `--max-event-age`.
    pub(super) fn expired(&self, seq: i64) -> DeadLetterItem {
        DeadLetterItem {
            seq,
            reason: "expired".into(),
            detail: Some(format!("not delivered within {:?}", self.cfg.max_event_age)),
        }
    }

    /// Dead-letters, or drops after counting, the unsendable events; then forgets them.
    /// Returns how many became dead letters.
    pub(super) async fn finish_unsendable(&mut self, unsendable: Vec<Unsendable>) -> usize {
        let mut dead = Vec::new();
        let mut acks = Vec::new();
        for u in unsendable {
            match u {
                Unsendable::Dead(d) => dead.push(d),
                Unsendable::Skipped(seq, reason, keep) => {
                    self.metrics.skipped(reason);
                    if keep {
                        dead.push(DeadLetterItem {
                            seq,
                            reason: reason.to_owned(),
                            detail: None,
                        });
                    } else {
                        acks.push(seq);
                    }
                }
            }
        }
        for d in &dead {
            self.metrics.dead_lettered(&d.reason);
        }
        let dead_count = dead.len();
        let seqs: Vec<i64> = dead
            .iter()
            .map(|d| d.seq)
            .chain(acks.iter().copied())
            .collect();
        if !dead.is_empty() {
            self.apply(QueueOp::DeadLetter { items: dead }).await;
        }
        if !acks.is_empty() {
            self.apply(QueueOp::ack(acks)).await;
        }
        for seq in seqs {
            self.release(seq);
        }
        dead_count
    }
}
