//! [`Delivery`]: one lane's state and its loop, as a sequence of [`Delivery::step`]s.
//!
//! A step takes one decision — wait out a pause, wait for events, or send one batch — and
//! returns what happened ([`Step`]); [`Delivery::run`] only does the waiting a step asks for.
//! Tests drive the steps on paused time: pauses, linger, deferrals and the budgets run on
//! tokio's clock and timer. Times stored in the queue (park slots, `received_at` for expiry)
//! are wall-clock UNIX milliseconds, so parked events coming due and expiry are not driven by
//! a paused clock.
//!
//! The other files of this module add to `Delivery` by idea: [`super::refill`] (reading the
//! queue into the window), [`super::select`] (what the next batch is, and identity deferral),
//! [`super::answer`] (sending, and what Heap's answer does to the events).
//!
//! Memory is bounded in bytes as well as in events: every event the lane holds (read ahead in
//! `pending`, in a bisected or split part in `forced`, in flight, or back after a failed
//! attempt) is accounted for in `in_memory` with its weight, and refill stops reading the
//! queue once `DeliveryConfig::window_bytes` is reached. A batch is cut to what fits in one
//! request of `DeliveryConfig::max_request_bytes` before its budget is taken.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Budgets, DeliveryConfig, Sender};
use crate::heap::bulk;
use crate::heap::model::{TrackItem, UserPropertiesItem};
use crate::metrics::{LaneMetrics, Metrics};
use crate::queue::{Queue, QueueError, QueueOp};

/// Events held in memory per lane, as a multiple of the batch size.
pub(super) const PENDING_BATCHES: usize = 4;

/// An event on its way to Heap.
#[derive(Debug, Clone)]
pub(super) struct Item {
    pub(super) seq: i64,
    pub(super) received_at: i64,
    /// The Braze event time in UNIX seconds, as Heap is sent it (a time in milliseconds is cut
    /// to the second): which of two user-property updates is newer.
    pub(super) event_time: i64,
    pub(super) loaded_at: Instant,
    pub(super) track: TrackItem,
    pub(super) user_properties: Option<UserPropertiesItem>,
    /// The track part was delivered; only the user properties remain.
    pub(super) track_done: bool,
    /// Serialized length of `track` in a bulk body.
    pub(super) track_bytes: usize,
    /// Serialized length of `user_properties` (0 without).
    pub(super) props_bytes: usize,
}

impl Item {
    /// What it adds to the request it is selected for: its track item, or its user
    /// properties once the track part is done.
    pub(super) fn request_bytes(&self) -> usize {
        if self.track_done {
            self.props_bytes
        } else {
            self.track_bytes
        }
    }
}

/// An identity over its budget: skip it until `until`; its parked events are given
/// `not_before` slots starting at `next_slot` (UNIX ms), one budget period apart.
#[derive(Debug)]
pub(super) struct Deferral {
    pub(super) until: Instant,
    pub(super) next_slot: i64,
}

/// How ingest reaches a lane: events were appended for it, or events it may hold in memory
/// were purged by a deletion (product.md §7) and must not be sent.
#[derive(Debug, Default)]
pub struct LaneBell {
    new_data: Notify,
    purged: std::sync::Mutex<Vec<i64>>,
}

impl LaneBell {
    /// New events were appended.
    pub fn ring(&self) {
        self.new_data.notify_one();
    }

    /// These queued events are gone (their user was deleted): drop them if held.
    pub fn purged(&self, seqs: impl IntoIterator<Item = i64>) {
        self.purged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(seqs);
    }

    fn take_purged(&self) -> Vec<i64> {
        std::mem::take(&mut *self.purged.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The delivery loop of one lane (one Heap app id).
#[derive(Debug)]
pub struct Delivery {
    pub(super) cfg: DeliveryConfig,
    pub(super) budgets: Budgets,
    pub(super) sender: Arc<dyn Sender>,
    pub(super) queue: Arc<dyn Queue>,
    pub(super) metrics: LaneMetrics,
    bell: Arc<LaneBell>,
    pub(super) pending: VecDeque<Item>,
    /// Every event held in memory (`pending`, `forced`, in flight) with its weight in bytes:
    /// the larger of its stored payload and its serialized Heap items.
    pub(super) in_memory: HashMap<i64, usize>,
    /// Sum of the weights in `in_memory`: what `window_bytes` bounds.
    pub(super) held_bytes: usize,
    /// Length of an empty bulk track body of this app id.
    pub(super) track_overhead: usize,
    /// The lane's position in the queue: fresh events after it are read next.
    pub(super) cursor: i64,
    pub(super) deferred: HashMap<String, Deferral>,
    /// Bisected or split parts, sent before anything else.
    pub(super) forced: VecDeque<Vec<Item>>,
    pub(super) paused_until: Option<Instant>,
    /// Consecutive failed requests (the backoff's exponent).
    pub(super) failures: u32,
    last_housekeeping: Instant,
    /// The lane's saved state was restored, or it continues a lane of this process
    /// ([`Self::resume`]): nothing to read at start.
    pub(super) continued: bool,
    /// The last save kept something (a budget owed, a pause, a deferral): the next one must
    /// write, even to clear it.
    pub(super) saved_something: bool,
}

/// What a lane hands to the lane that replaces it (a configuration reload): the budget state
/// and a `Retry-After` pause, so neither starts afresh because the configuration changed.
#[derive(Debug)]
pub struct LaneCarry {
    pub budgets: Budgets,
    pub paused_until: Option<Instant>,
}

/// What one [`Delivery::step`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The lane is paused (`Retry-After` or backoff) until then; nothing was done.
    Paused { until: Instant },
    /// Nothing to send now: wait this long (linger, a deferred identity) or for new events.
    Idle { wait: Duration },
    /// One batch went to Heap (or was finished without a request: expired events).
    Sent(SendReport),
    /// The queue could not be read; nothing changed.
    QueueUnavailable(QueueError),
    /// The stop signal came while waiting for the budget; nothing was sent.
    Stopped,
}

/// What a sent batch's events became.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendReport {
    /// Requests made to Heap.
    pub requests: usize,
    /// Events finished: Heap accepted every part of them, and they left the queue.
    pub delivered: usize,
    /// Events put back after a transient failure (the lane pauses).
    pub retried: usize,
    /// Events moved to the dead letters (rejected alone, too large alone, expired).
    pub dead_lettered: usize,
    /// Requests Heap refused whole (400/413) and that were halved for another try.
    pub halved: usize,
}

impl Delivery {
    pub fn new(
        cfg: DeliveryConfig,
        sender: Arc<dyn Sender>,
        queue: Arc<dyn Queue>,
        metrics: Metrics,
        bell: Arc<LaneBell>,
    ) -> Self {
        let budgets = Budgets::new(
            cfg.events_per_window,
            cfg.identity_events_per_window,
            cfg.window,
            cfg.batch_size.clamp(1, crate::heap::model::MAX_BULK_ITEMS),
        );
        let metrics = metrics.delivery.lane(&cfg.lane);
        metrics.set_window_bytes(0);
        let track_overhead = bulk::track_overhead(&cfg.app_id);
        Self {
            cfg,
            budgets,
            sender,
            queue,
            metrics,
            bell,
            pending: VecDeque::new(),
            in_memory: HashMap::new(),
            held_bytes: 0,
            track_overhead,
            cursor: 0,
            deferred: HashMap::new(),
            forced: VecDeque::new(),
            paused_until: None,
            failures: 0,
            last_housekeeping: Instant::now(),
            continued: false,
            saved_something: false,
        }
    }

    /// Events per second this lane sends while it has a backlog.
    pub fn budget_rate(&self) -> f64 {
        self.budgets.app_shape().rate()
    }

    pub(super) fn max_batch(&self) -> usize {
        self.budgets.max_batch()
    }

    /// Continues from a stopped lane of the same app id: its budgets as they are when they have
    /// the same shape, else what they still owed, carried into the new shape.
    pub fn resume(&mut self, carry: LaneCarry) {
        if carry.budgets.same_shape(&self.budgets) {
            self.budgets = carry.budgets;
        } else {
            self.budgets.continue_from(&carry.budgets);
        }
        self.paused_until = carry.paused_until;
        self.continued = true;
    }

    /// Runs until `shutdown` is cancelled. A request in flight is finished first; whatever is
    /// not acknowledged stays queued for the next start. Returns what a successor lane
    /// continues from.
    pub async fn run(mut self, shutdown: CancellationToken) -> LaneCarry {
        tracing::info!(
            message = "Delivery started.",
            route = %self.cfg.lane,
            app_id = %self.cfg.app_id,
            max_batch = self.max_batch(),
            app_events_per_second = self.budgets.app_shape().rate(),
        );
        // Nothing is sent before the lane knows what the last process left (product.md §9).
        while !self.continued && !shutdown.is_cancelled() {
            if let Err(e) = self.restore_saved().await {
                tracing::error!(message = "Reading the lane's saved state failed; retrying.", route = %self.cfg.lane, error = %e);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
        }
        while !shutdown.is_cancelled() {
            match self.step(&shutdown).await {
                Step::Sent(_) => {}
                Step::Paused { until } => tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = shutdown.cancelled() => break,
                },
                Step::Idle { wait } => tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.bell.new_data.notified() => {}
                    _ = shutdown.cancelled() => break,
                },
                Step::QueueUnavailable(e) => {
                    tracing::error!(message = "Reading the queue failed.", route = %self.cfg.lane, error = %e);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.cancelled() => break,
                    }
                }
                Step::Stopped => break,
            }
        }
        tracing::info!(message = "Delivery stopped.", route = %self.cfg.lane);
        LaneCarry {
            budgets: self.budgets,
            paused_until: self.paused_until,
        }
    }

    /// Takes one decision and carries it out: ends an expired pause, tops up the window from
    /// the queue, then sends the next batch (a bisected or split part first) once its budget
    /// is free — or says what to wait for. Waiting for the budget ends early, with
    /// [`Step::Stopped`], when `stop` is cancelled; a request once started is finished.
    pub async fn step(&mut self, stop: &CancellationToken) -> Step {
        if let Some(until) = self.paused_until {
            if until > Instant::now() {
                return Step::Paused { until };
            }
            self.paused_until = None;
            self.metrics.resumed();
        }
        self.housekeeping();
        self.drop_purged();
        if self.pending.len() < self.max_batch() * PENDING_BATCHES / 2
            && self.held_bytes < self.cfg.window_bytes / 2
            && let Err(e) = self.refill().await
        {
            return Step::QueueUnavailable(e);
        }
        // A bisected or split part goes first; else the next batch, once it is due.
        let n = match self.forced.front() {
            Some(part) => part.len(),
            None => {
                if let Some(wait) = self.next_wait() {
                    return Step::Idle { wait };
                }
                self.plan().0
            }
        };
        // The events stay in `forced` or `pending` until their budget is taken, so a stop
        // during the wait loses nothing.
        let waited = tokio::select! {
            w = self.budgets.take_app(n) => w,
            _ = stop.cancelled() => return Step::Stopped,
        };
        self.record_wait("app", waited);
        // A deletion may have purged some of them meanwhile.
        self.drop_purged();
        let batch = match self.forced.pop_front() {
            Some(part) => self.admit_forced(part).await,
            None => self.select(n).await,
        };
        let mut report = SendReport::default();
        if !batch.is_empty() {
            // The budget just taken is saved before Heap counts it; unsaved, nothing is sent.
            if !self.save_state().await {
                for item in &batch {
                    self.release(item.seq);
                }
                return Step::Stopped;
            }
            self.send(batch, &mut report).await;
        }
        Step::Sent(report)
    }

    /// Periodic upkeep: forget idle identities (bounded memory) and expired deferrals.
    fn housekeeping(&mut self) {
        if self.last_housekeeping.elapsed() < Duration::from_secs(10) {
            return;
        }
        self.last_housekeeping = Instant::now();
        self.budgets.forget_idle_identities();
        let now = crate::queue::unix_millis();
        self.deferred.retain(|_, d| d.next_slot > now);
    }

    /// Drops the events a deletion purged from the queue, wherever the lane holds them.
    /// Returns what was purged, so a send in progress can leave those events out too.
    pub(super) fn drop_purged(&mut self) -> std::collections::HashSet<i64> {
        let purged = self.bell.take_purged();
        if purged.is_empty() {
            return std::collections::HashSet::new();
        }
        let purged: std::collections::HashSet<i64> = purged.into_iter().collect();
        self.pending.retain(|i| !purged.contains(&i.seq));
        for part in &mut self.forced {
            part.retain(|i| !purged.contains(&i.seq));
        }
        self.forced.retain(|part| !part.is_empty());
        for seq in &purged {
            self.release(*seq);
        }
        purged
    }

    /// Counts an event as held in memory.
    pub(super) fn hold(&mut self, seq: i64, weight: usize) {
        if let Some(old) = self.in_memory.insert(seq, weight) {
            self.held_bytes -= old;
        }
        self.held_bytes += weight;
        self.metrics.set_window_bytes(self.held_bytes);
    }

    /// Forgets an event held in memory (acknowledged, dead-lettered, parked in the queue).
    pub(super) fn release(&mut self, seq: i64) {
        if let Some(weight) = self.in_memory.remove(&seq) {
            self.held_bytes -= weight;
            self.metrics.set_window_bytes(self.held_bytes);
        }
    }

    /// Whether the window has room for an event of `bytes` more. An empty window always has:
    /// a single event larger than the window still makes progress.
    pub(super) fn has_room(&self, bytes: usize) -> bool {
        self.held_bytes == 0 || self.held_bytes.saturating_add(bytes) <= self.cfg.window_bytes
    }

    /// Applies a change to the queue, retrying until it succeeds: losing an ack would re-send
    /// (fine, idempotent), but losing a dead letter must not happen silently. A closed queue
    /// (shutdown) leaves the change for the next start.
    /// Returns whether it was applied (`false`: the queue closed).
    pub(super) async fn apply(&self, op: QueueOp) -> bool {
        let mut delay = Duration::from_millis(50);
        loop {
            match self.queue.apply(op.clone()).await {
                Ok(_) => return true,
                Err(e @ QueueError::Closed) => {
                    tracing::warn!(message = "Queue closed; the change is left for the next start.", error = %e);
                    return false;
                }
                Err(e) => {
                    tracing::error!(message = "Queue update failed; retrying.", error = %e);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
