//! [`Delivery`]: the loop of one route. See the module docs of [`crate::delivery`].
//!
//! Memory is bounded in bytes as well as in events: every event the lane holds (read ahead in
//! `pending`, in a bisected or split part in `forced`, in flight, or back after a failed
//! attempt) is accounted for in `in_memory` with its weight, and refill stops reading the store
//! once `DeliveryConfig::window_bytes` is reached. A batch is cut to what fits in one request of
//! `DeliveryConfig::max_request_bytes` before its budget is taken (see [`super::chunk`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::chunk::{self, BodySize};
use super::{Budgets, DeliveryConfig, Sender};
use crate::heap::client::HeapError;
use crate::heap::model::{
    MAX_BULK_ITEMS, TRACK_PATH, TrackItem, USER_PROPERTIES_PATH, UserPropertiesItem,
    validate_track_item, validate_user_properties_item,
};
use crate::heap::retry::{Verdict, classify, status_class};
use crate::metrics::{LaneMetrics, Metrics, Retried};
use crate::queue::{DeadLetterItem, QueueOp, QueuedEvent, Reader, Writer, unix_millis};
use crate::transform::map_event;

/// Events held in memory per route, as a multiple of the batch size.
const PENDING_BATCHES: usize = 4;
/// One refill reads at most this fraction of the window's bytes: the rows read are held twice
/// for a moment (stored bytes, then mapped items), so reading the window in slices keeps that
/// overlap small. Refill runs again on the next turn of the loop while the window has room.
const READ_SLICES: usize = 8;

/// An event on its way to Heap.
#[derive(Debug, Clone)]
struct Item {
    seq: i64,
    received_at: i64,
    loaded_at: Instant,
    track: TrackItem,
    user_properties: Option<UserPropertiesItem>,
    /// The track part was delivered; only the user properties remain.
    track_done: bool,
    /// Serialized length of `track` in a bulk body.
    track_bytes: usize,
    /// Serialized length of `user_properties` (0 without).
    props_bytes: usize,
}

impl Item {
    /// What it adds to the request it is selected for: its track item, or its user
    /// properties once the track part is done.
    fn request_bytes(&self) -> usize {
        if self.track_done {
            self.props_bytes
        } else {
            self.track_bytes
        }
    }
}

/// An identity over its budget: skip it until `until`; its deferred events are given
/// `not_before` slots starting at `next_slot` (UNIX ms), one budget period apart.
struct Deferral {
    until: Instant,
    next_slot: i64,
}

/// The delivery loop of one route.
pub struct Delivery {
    cfg: DeliveryConfig,
    budgets: Budgets,
    sender: Sender,
    writer: Writer,
    reader: Arc<Mutex<Reader>>,
    metrics: LaneMetrics,
    new_data: Arc<Notify>,
    pending: VecDeque<Item>,
    /// Every event held in memory (`pending`, `forced`, in flight) with its weight in bytes:
    /// the larger of its stored payload and its serialized Heap items.
    in_memory: HashMap<i64, usize>,
    /// Sum of the weights in `in_memory`: what `window_bytes` bounds.
    held_bytes: usize,
    /// Length of an empty bulk track body of this app id.
    track_overhead: usize,
    /// Length of an empty bulk add-user-properties body of this app id.
    users_overhead: usize,
    cursor: i64,
    deferred: HashMap<String, Deferral>,
    forced: VecDeque<Vec<Item>>,
    paused_until: Option<Instant>,
    failures: u32,
    last_housekeeping: Instant,
}

/// What a lane hands to the lane that replaces it (a configuration reload): the budget state
/// and a `Retry-After` pause, so neither starts afresh because the configuration changed.
#[derive(Debug)]
pub struct LaneCarry {
    pub budgets: Budgets,
    pub paused_until: Option<Instant>,
}

/// What one Heap request did with its items.
enum Sent {
    Delivered,
    Retried,
    Split,
}

impl Delivery {
    pub fn new(
        cfg: DeliveryConfig,
        sender: Sender,
        writer: Writer,
        reader: Reader,
        metrics: Metrics,
        new_data: Arc<Notify>,
    ) -> Self {
        let budgets = Budgets::new(
            cfg.events_per_window,
            cfg.identity_events_per_window,
            cfg.window,
            cfg.batch_size.clamp(1, crate::heap::model::MAX_BULK_ITEMS),
        );
        let metrics = metrics.delivery.lane(&cfg.lane);
        metrics.set_window_bytes(0);
        let track_overhead = chunk::track_overhead(&cfg.app_id);
        let users_overhead = chunk::users_overhead(&cfg.app_id);
        Self {
            cfg,
            budgets,
            sender,
            writer,
            reader: Arc::new(Mutex::new(reader)),
            metrics,
            new_data,
            pending: VecDeque::new(),
            in_memory: HashMap::new(),
            held_bytes: 0,
            track_overhead,
            users_overhead,
            cursor: 0,
            deferred: HashMap::new(),
            forced: VecDeque::new(),
            paused_until: None,
            failures: 0,
            last_housekeeping: Instant::now(),
        }
    }

    /// Events per second this lane sends while it has a backlog.
    pub fn budget_rate(&self) -> f64 {
        self.budgets.app_shape().rate()
    }

    fn max_batch(&self) -> usize {
        self.budgets.max_batch()
    }

    /// Continues from a stopped lane of the same app id; its budgets are taken only when they
    /// have the same shape (a changed budget starts afresh).
    pub fn resume(&mut self, carry: LaneCarry) {
        if carry.budgets.same_shape(&self.budgets) {
            self.budgets = carry.budgets;
        }
        self.paused_until = carry.paused_until;
    }

    /// Counts an event as held in memory.
    fn hold(&mut self, seq: i64, weight: usize) {
        if let Some(old) = self.in_memory.insert(seq, weight) {
            self.held_bytes -= old;
        }
        self.held_bytes += weight;
        self.metrics.set_window_bytes(self.held_bytes);
    }

    /// Forgets an event held in memory (acknowledged, dead-lettered, parked in the store).
    fn release(&mut self, seq: i64) {
        if let Some(weight) = self.in_memory.remove(&seq) {
            self.held_bytes -= weight;
            self.metrics.set_window_bytes(self.held_bytes);
        }
    }

    /// Whether the window has room for an event of `bytes` more. An empty window always has:
    /// a single event larger than the window still makes progress.
    fn has_room(&self, bytes: usize) -> bool {
        self.held_bytes == 0 || self.held_bytes.saturating_add(bytes) <= self.cfg.window_bytes
    }

    /// How many eligible events (FIFO, up to the app burst) the next request takes, and
    /// whether that request is full (by count or by `max_request_bytes`).
    fn plan(&self) -> (usize, bool) {
        let max = self.max_batch();
        let mut body = BodySize::new(self.track_overhead, self.cfg.max_request_bytes);
        for item in self.pending.iter().filter(|i| self.is_eligible(i)) {
            if body.items() >= max {
                return (max, true);
            }
            if !body.try_add(item.request_bytes()) {
                return (body.items(), true);
            }
        }
        (body.items(), body.items() >= max)
    }

    /// Runs until `shutdown` is cancelled. A request in flight is finished first; whatever is
    /// not acknowledged stays in the store for the next start. Returns what a successor lane
    /// continues from.
    pub async fn run(mut self, shutdown: CancellationToken) -> LaneCarry {
        tracing::info!(
            message = "Delivery started.",
            route = %self.cfg.lane,
            app_id = %self.cfg.app_id,
            max_batch = self.max_batch(),
            app_events_per_second = self.budgets.app_shape().rate(),
        );
        while !shutdown.is_cancelled() {
            if let Some(until) = self.paused_until {
                if until > Instant::now() {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until.into()) => {}
                        _ = shutdown.cancelled() => break,
                    }
                }
                self.paused_until = None;
                self.metrics.resumed();
            }
            self.housekeeping();
            if self.pending.len() < self.max_batch() * PENDING_BATCHES / 2
                && self.held_bytes < self.cfg.window_bytes / 2
                && let Err(e) = self.refill().await
            {
                tracing::error!(message = "Reading the queue failed.", error = %e);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
            let batch = if let Some(forced) = self.forced.pop_front() {
                tokio::select! {
                    b = self.admit_forced(forced) => b,
                    _ = shutdown.cancelled() => break,
                }
            } else {
                match self.next_wait() {
                    Some(wait) => {
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = self.new_data.notified() => {}
                            _ = shutdown.cancelled() => break,
                        }
                        continue;
                    }
                    None => {
                        let (n, _) = self.plan();
                        let waited = tokio::select! {
                            w = self.budgets.take_app(n) => w,
                            _ = shutdown.cancelled() => break,
                        };
                        self.record_wait("app", waited);
                        self.select(n).await
                    }
                }
            };
            if !batch.is_empty() {
                self.send(batch).await;
            }
        }
        tracing::info!(message = "Delivery stopped.", route = %self.cfg.lane);
        LaneCarry {
            budgets: self.budgets,
            paused_until: self.paused_until,
        }
    }

    /// None when a batch should go now; else how long to wait for more events (linger) or
    /// for a deferred identity.
    fn next_wait(&mut self) -> Option<Duration> {
        if self.plan().1 {
            return None;
        }
        let oldest = self
            .pending
            .iter()
            .filter(|i| self.is_eligible(i))
            .map(|i| i.loaded_at)
            .min();
        match oldest {
            Some(t) if t.elapsed() >= self.cfg.linger => None,
            Some(t) => Some(self.cfg.linger - t.elapsed()),
            // Nothing ready: wake for new data, a due deferral, or a periodic look.
            None => Some(self.cfg.linger.max(Duration::from_millis(100))),
        }
    }

    fn is_eligible(&self, item: &Item) -> bool {
        self.deferred
            .get(item.track.budget_key())
            .is_none_or(|d| d.until <= Instant::now())
    }

    fn record_wait(&self, budget: &'static str, waited: Duration) {
        self.metrics.budget_waited(budget, waited);
    }

    /// Periodic upkeep: forget idle identities (bounded memory) and expired deferrals.
    fn housekeeping(&mut self) {
        if self.last_housekeeping.elapsed() < Duration::from_secs(10) {
            return;
        }
        self.last_housekeeping = Instant::now();
        self.budgets.forget_idle_identities();
        let now = unix_millis();
        self.deferred.retain(|_, d| d.next_slot > now);
    }

    /// Tops up `pending` from the store: due deferred events first, then new ones, up to the
    /// window's event count and bytes. The store is read row by row and stops at the bytes
    /// left in the window, or a slice of it (at least one row), so a backlog of huge events is
    /// never read whole.
    async fn refill(&mut self) -> Result<(), String> {
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
        let reader = Arc::clone(&self.reader);
        let app_id = self.cfg.app_id.clone();
        let cursor = self.cursor;
        // Due rows stay due in the store while they wait here; the reader passes them over.
        let held: HashSet<i64> = self.in_memory.keys().copied().collect();
        let (due, fresh) = tokio::task::spawn_blocking(move || {
            let r = reader.lock().unwrap_or_else(|p| p.into_inner());
            let due = r.due_deferred(&app_id, now, want, room, &held)?;
            let due_bytes: usize = due.iter().map(|e| e.payload.len()).sum();
            let fresh = if due.len() >= want || (!due.is_empty() && due_bytes >= room) {
                Vec::new()
            } else {
                r.queued_within(
                    &app_id,
                    cursor,
                    want - due.len(),
                    room - due_bytes.min(room),
                    &held,
                )?
            };
            Ok::<_, rusqlite::Error>((due, fresh))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;

        let mut dead = Vec::new();
        let mut skipped = Vec::new();
        let mut loaded = 0usize;
        for row in due {
            if loaded >= want || !self.has_room(row.payload.len()) {
                break;
            }
            loaded += usize::from(self.take_row(row, now, &mut dead, &mut skipped));
        }
        for row in fresh {
            // The cursor moves only past rows handled here, so none is ever stepped over.
            if loaded >= want || !self.has_room(row.payload.len()) {
                break;
            }
            self.cursor = self.cursor.max(row.seq);
            // A future-dated row (deferred before a restart) comes back through the deferred
            // index when due.
            if row.not_before <= now {
                loaded += usize::from(self.take_row(row, now, &mut dead, &mut skipped));
            }
        }
        self.finish_unsendable(dead, skipped).await;
        Ok(())
    }

    /// Loads one row unless it is already in memory; returns whether it was loaded.
    fn take_row(
        &mut self,
        row: QueuedEvent,
        now: i64,
        dead: &mut Vec<DeadLetterItem>,
        skipped: &mut Vec<(i64, &'static str, bool)>,
    ) -> bool {
        if self.in_memory.contains_key(&row.seq) {
            return false;
        }
        // Unsendable rows are finished (and forgotten) before refill returns: no weight.
        let weight = match self.prepare(&row, now) {
            Ok(item) => {
                let weight = row.payload.len().max(item.track_bytes + item.props_bytes);
                self.pending.push_back(item);
                weight
            }
            Err(Prepared::Dead(d)) => {
                dead.push(d);
                0
            }
            Err(Prepared::Skipped(seq, reason, keep)) => {
                skipped.push((seq, reason, keep));
                0
            }
        };
        self.hold(row.seq, weight);
        true
    }

    /// Maps one stored event, or says why it will not be sent.
    fn prepare(&self, row: &QueuedEvent, now: i64) -> Result<Item, Prepared> {
        if self.is_expired(row.received_at, now) {
            return Err(Prepared::Dead(DeadLetterItem {
                seq: row.seq,
                reason: "expired".into(),
                detail: Some(format!("not delivered within {:?}", self.cfg.max_event_age)),
            }));
        }
        let options = self.cfg.mapping_for(&row.route);
        let mapped = match map_event(&row.payload, &options.mapping) {
            Ok(m) => m,
            Err(reason) => {
                return Err(Prepared::Skipped(
                    row.seq,
                    reason.as_str(),
                    options.dead_letter_skipped,
                ));
            }
        };
        let invalid = validate_track_item(&mapped.track).err().or_else(|| {
            mapped
                .user_properties
                .as_ref()
                .and_then(|u| validate_user_properties_item(u).err())
        });
        if let Some(why) = invalid {
            return Err(Prepared::Dead(DeadLetterItem {
                seq: row.seq,
                reason: "invalid_mapping".into(),
                detail: Some(why),
            }));
        }
        Ok(Item {
            seq: row.seq,
            received_at: row.received_at,
            loaded_at: Instant::now(),
            track_bytes: chunk::serialized_len(&mapped.track),
            props_bytes: mapped
                .user_properties
                .as_ref()
                .map_or(0, chunk::serialized_len),
            track: mapped.track,
            user_properties: mapped.user_properties,
            track_done: false,
        })
    }

    fn is_expired(&self, received_at: i64, now: i64) -> bool {
        now.saturating_sub(received_at) > self.cfg.max_event_age.as_millis() as i64
    }

    /// Dead-letters and drops (or dead-letters) skipped events, then forgets them.
    async fn finish_unsendable(
        &mut self,
        dead: Vec<DeadLetterItem>,
        skipped: Vec<(i64, &'static str, bool)>,
    ) {
        let mut dead = dead;
        let mut acks = Vec::new();
        for (seq, reason, keep) in &skipped {
            self.metrics.skipped(reason);
            if *keep {
                dead.push(DeadLetterItem {
                    seq: *seq,
                    reason: (*reason).to_owned(),
                    detail: None,
                });
            } else {
                acks.push(*seq);
            }
        }
        for d in &dead {
            self.metrics.dead_lettered(&d.reason);
        }
        let seqs: Vec<i64> = dead
            .iter()
            .map(|d| d.seq)
            .chain(acks.iter().copied())
            .collect();
        if !dead.is_empty() {
            self.apply(QueueOp::DeadLetter { items: dead }).await;
        }
        if !acks.is_empty() {
            self.apply(QueueOp::Ack { seqs: acks }).await;
        }
        for seq in seqs {
            self.release(seq);
        }
    }

    /// Applies a store change, retrying until it succeeds: losing an ack would re-send (fine,
    /// idempotent), but losing a dead letter must not happen silently.
    async fn apply(&self, op: QueueOp) {
        let mut delay = Duration::from_millis(50);
        loop {
            match self.writer.apply(op.clone()).await {
                Ok(_) => return,
                Err(e) if e.contains("closed") => {
                    tracing::warn!(message = "Store closed; the change is left for the next start.", error = %e);
                    return;
                }
                Err(e) => {
                    tracing::error!(message = "Store update failed; retrying.", error = %e);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Takes up to `n` eligible events that fit in one request of `max_request_bytes`,
    /// passing each identity's budget; defers (in the store) the events of identities that are
    /// over budget. With no identity over budget these are exactly the `n` events of
    /// [`Self::plan`], whose app budget was taken.
    async fn select(&mut self, n: usize) -> Vec<Item> {
        let mut taken = Vec::with_capacity(n);
        let mut keep = VecDeque::with_capacity(self.pending.len());
        let now = Instant::now();
        let mut body = BodySize::new(self.track_overhead, self.cfg.max_request_bytes);
        let mut full = false;
        while let Some(item) = self.pending.pop_front() {
            if full || taken.len() >= n {
                keep.push_back(item);
                continue;
            }
            let key = item.track.budget_key();
            if self.deferred.get(key).is_some_and(|d| d.until > now) {
                keep.push_back(item);
                continue;
            }
            // Checked before the identity budget, so no identity cell is spent on an event
            // that stays behind.
            if !body.fits(item.request_bytes()) {
                full = true;
                keep.push_back(item);
                continue;
            }
            match self.budgets.take_identity(key) {
                Ok(()) => {
                    body.add(item.request_bytes());
                    taken.push(item);
                }
                Err(wait) => {
                    self.metrics.identity_deferred();
                    let slot = unix_millis() + wait.as_millis() as i64;
                    let entry = self.deferred.entry(key.to_owned()).or_insert(Deferral {
                        until: now + wait,
                        next_slot: slot,
                    });
                    entry.until = entry.until.max(now + wait);
                    entry.next_slot = entry.next_slot.max(slot);
                    keep.push_back(item);
                }
            }
        }
        self.pending = keep;
        self.park_deferred().await;
        taken
    }

    /// Keeps a small reserve of each deferred identity's events in memory — enough for what
    /// its budget admits between two batches, and at most a quarter of the window's bytes for
    /// all deferred identities together — and moves the rest to the store, each with its own
    /// `not_before` slot one budget period apart, so memory stays bounded, the identity still
    /// drains at its own budget, and the other identities keep flowing: deferred events never
    /// hold the window so full that refill stops.
    async fn park_deferred(&mut self) {
        let now = Instant::now();
        let shape = self.budgets.identity_shape();
        let period = shape.period.as_millis().max(1) as i64;
        let reserve = (shape.burst as usize * 2).max(2);
        let reserve_bytes = self.cfg.window_bytes / 4;
        let mut kept_bytes = 0usize;
        let mut kept: HashMap<String, usize> = HashMap::new();
        let mut parked: Vec<(i64, i64)> = Vec::new();
        let mut keep = VecDeque::with_capacity(self.pending.len());
        let now_ms = unix_millis();
        while let Some(item) = self.pending.pop_front() {
            let key = item.track.budget_key();
            match self.deferred.get_mut(key) {
                Some(d) if d.until > now => {
                    let n = kept.entry(key.to_owned()).or_default();
                    let weight = self.in_memory.get(&item.seq).copied().unwrap_or(0);
                    if *n < reserve && kept_bytes.saturating_add(weight) <= reserve_bytes {
                        *n += 1;
                        kept_bytes += weight;
                        keep.push_back(item);
                        continue;
                    }
                    // The reserve drains first; parked events come due after it.
                    let wait_ms = d.until.saturating_duration_since(now).as_millis() as i64;
                    d.next_slot = d.next_slot.max(now_ms + wait_ms + reserve as i64 * period);
                    parked.push((item.seq, d.next_slot));
                    d.next_slot += period;
                    self.release(item.seq);
                }
                _ => keep.push_back(item),
            }
        }
        self.pending = keep;
        if !parked.is_empty() {
            self.apply(QueueOp::Defer { items: parked }).await;
        }
    }

    /// A bisected or split part: it passes the app budget again, and the identity budget
    /// item by item (items over it are deferred like any other).
    async fn admit_forced(&mut self, items: Vec<Item>) -> Vec<Item> {
        let waited = self.budgets.take_app(items.len()).await;
        self.record_wait("app", waited);
        let mut taken = Vec::with_capacity(items.len());
        for item in items {
            let key = item.track.budget_key().to_owned();
            match self.budgets.take_identity(&key) {
                Ok(()) => taken.push(item),
                Err(wait) => {
                    let now = Instant::now();
                    self.deferred.entry(key).or_insert(Deferral {
                        until: now + wait,
                        next_slot: unix_millis() + wait.as_millis() as i64,
                    });
                    self.pending.push_back(item);
                }
            }
        }
        self.park_deferred().await;
        taken
    }

    /// Sends one batch: track first, then the user properties of the same events.
    async fn send(&mut self, items: Vec<Item>) {
        let now = unix_millis();
        let (expired, items): (Vec<Item>, Vec<Item>) = items
            .into_iter()
            .partition(|i| self.is_expired(i.received_at, now));
        if !expired.is_empty() {
            let dead = expired
                .iter()
                .map(|i| DeadLetterItem {
                    seq: i.seq,
                    reason: "expired".into(),
                    detail: Some(format!("not delivered within {:?}", self.cfg.max_event_age)),
                })
                .collect();
            self.finish_unsendable(dead, Vec::new()).await;
        }
        if items.is_empty() {
            return;
        }

        let (to_track, mut done): (Vec<Item>, Vec<Item>) =
            items.into_iter().partition(|i| !i.track_done);
        let sizes: Vec<usize> = to_track.iter().map(|i| i.track_bytes).collect();
        let ranges = chunk::split_by_size(
            &sizes,
            self.track_overhead,
            self.cfg.max_request_bytes,
            MAX_BULK_ITEMS,
        );
        // `select` already cut the batch to one request; a batch from elsewhere is split here.
        let mut parts = split_into(to_track, &ranges).into_iter();
        while let Some(part) = parts.next() {
            let body = {
                let refs: Vec<&TrackItem> = part.iter().map(|i| &i.track).collect();
                chunk::track_body(&self.cfg.app_id, &refs)
            };
            match self.request(TRACK_PATH, body, part, "rejected").await {
                (Sent::Delivered, mut items) => {
                    self.metrics.delivered(items.len());
                    for i in &mut items {
                        i.track_done = true;
                    }
                    done.extend(items);
                }
                (Sent::Retried, _) => {
                    self.requeue(parts.by_ref().flatten().collect());
                    break;
                }
                (Sent::Split, _) => {}
            }
        }

        let (with_props, finished): (Vec<Item>, Vec<Item>) =
            done.into_iter().partition(|i| i.user_properties.is_some());
        self.ack(finished).await;
        let mut parts = self.user_property_parts(with_props).into_iter();
        while let Some(part) = parts.next() {
            let body = {
                let users = merge_by_identity(part.iter().filter_map(|i| {
                    Some((i.track.timestamp.as_str(), i.user_properties.as_ref()?))
                }));
                let refs: Vec<&UserPropertiesItem> = users.iter().collect();
                chunk::users_body(&self.cfg.app_id, &refs)
            };
            match self
                .request(USER_PROPERTIES_PATH, body, part, "rejected_user_properties")
                .await
            {
                (Sent::Delivered, items) => self.ack(items).await,
                (Sent::Retried, _) => {
                    self.requeue(parts.by_ref().flatten().collect());
                    break;
                }
                (Sent::Split, _) => {}
            }
        }
    }

    /// The events whose user properties are still to send, grouped so that each group's
    /// add-user-properties body (one merged item per identity) fits in `max_request_bytes`;
    /// all events of one identity stay in one group.
    fn user_property_parts(&self, items: Vec<Item>) -> Vec<Vec<Item>> {
        if items.is_empty() {
            return Vec::new();
        }
        let users = merge_by_identity(
            items
                .iter()
                .filter_map(|i| Some((i.track.timestamp.as_str(), i.user_properties.as_ref()?))),
        );
        let sizes: Vec<usize> = users.iter().map(chunk::serialized_len).collect();
        let ranges = chunk::split_by_size(
            &sizes,
            self.users_overhead,
            self.cfg.max_request_bytes,
            MAX_BULK_ITEMS,
        );
        if ranges.len() <= 1 {
            return vec![items];
        }
        let mut part_of: HashMap<&str, usize> = HashMap::new();
        for (k, range) in ranges.iter().enumerate() {
            for user in &users[range.clone()] {
                part_of.insert(user.identity.as_str(), k);
            }
        }
        let mut parts: Vec<Vec<Item>> = (0..ranges.len()).map(|_| Vec::new()).collect();
        for item in items {
            let k = item
                .user_properties
                .as_ref()
                .and_then(|u| part_of.get(u.identity.as_str()))
                .copied()
                .unwrap_or(0);
            parts[k].push(item);
        }
        parts
    }

    /// Puts events that were selected but not sent (a request before them failed and the
    /// lane pauses) back at the front of the line; their budget is taken again when they are
    /// selected again.
    fn requeue(&mut self, items: Vec<Item>) {
        for item in items.into_iter().rev() {
            self.pending.push_front(item);
        }
    }

    /// Sends one request and handles every non-success outcome (retry, bisect, split, dead
    /// letter). Returns the items back only when Heap accepted them.
    async fn request(
        &mut self,
        path: &'static str,
        body: Vec<u8>,
        items: Vec<Item>,
        reject_reason: &'static str,
    ) -> (Sent, Vec<Item>) {
        let started = Instant::now();
        let result = self.sender.post(path, Bytes::from(body)).await;
        self.metrics
            .heap_request_took(path, started.elapsed().as_secs_f64());
        let (verdict, detail) = match &result {
            Ok(resp) => {
                self.metrics.heap_answered(path, status_class(resp.status));
                let verdict = classify(resp.status, resp.retry_after.as_ref(), SystemTime::now());
                (
                    verdict,
                    format!("HTTP {}: {}", resp.status.as_u16(), resp.body),
                )
            }
            Err(e) => {
                self.metrics.heap_answered(path, "error");
                (
                    Verdict::Retry {
                        reason: e.reason(),
                        retry_after: None,
                    },
                    e.to_string(),
                )
            }
        };
        match verdict {
            Verdict::Delivered => {
                if self.failures > 0 {
                    tracing::info!(message = "Heap accepts requests again.", route = %self.cfg.lane, after_failures = self.failures);
                }
                self.failures = 0;
                (Sent::Delivered, items)
            }
            Verdict::Retry {
                reason,
                retry_after,
            } => {
                self.retry(items, reason, retry_after, detail, result.err())
                    .await;
                (Sent::Retried, Vec::new())
            }
            Verdict::Bisect | Verdict::Split => {
                let (dead_reason, kind) = if matches!(verdict, Verdict::Bisect) {
                    (reject_reason, "Heap rejected the request (400); bisecting.")
                } else {
                    (
                        "too_large",
                        "Heap refused the request as too large (413); splitting.",
                    )
                };
                if items.len() == 1 {
                    tracing::warn!(message = "Heap rejected an event; dead-lettering it.", route = %self.cfg.lane, endpoint = path, detail = %detail);
                    let dead = items
                        .iter()
                        .map(|i| DeadLetterItem {
                            seq: i.seq,
                            reason: dead_reason.into(),
                            detail: Some(detail.clone()),
                        })
                        .collect();
                    self.finish_unsendable(dead, Vec::new()).await;
                } else {
                    tracing::info!(message = kind, route = %self.cfg.lane, endpoint = path, items = items.len());
                    let mut first = items;
                    let second = first.split_off(first.len() / 2);
                    self.forced.push_front(second);
                    self.forced.push_front(first);
                }
                (Sent::Split, Vec::new())
            }
        }
    }

    /// A transient failure: count the attempt in the store, pause the route (Retry-After, or
    /// backoff with full jitter), and put the events back at the front of the line.
    async fn retry(
        &mut self,
        items: Vec<Item>,
        reason: &'static str,
        retry_after: Option<Duration>,
        detail: String,
        transport: Option<HeapError>,
    ) {
        let pause = retry_after.unwrap_or_else(|| self.cfg.backoff.delay(self.failures));
        self.failures = self.failures.saturating_add(1);
        self.paused_until = Some(Instant::now() + pause);
        self.metrics.retried(Retried {
            reason,
            pause,
            retry_after: retry_after.is_some(),
            consecutive_failures: self.failures,
            detail: &detail,
            transport: transport.is_some(),
        });
        let seqs = items.iter().map(|i| i.seq).collect();
        self.apply(QueueOp::Attempt {
            seqs,
            error: truncate(&detail, 1000),
        })
        .await;
        for item in items.into_iter().rev() {
            self.pending.push_front(item);
        }
    }

    async fn ack(&mut self, items: Vec<Item>) {
        if items.is_empty() {
            return;
        }
        let seqs: Vec<i64> = items.iter().map(|i| i.seq).collect();
        self.apply(QueueOp::Ack { seqs: seqs.clone() }).await;
        for seq in seqs {
            self.release(seq);
        }
    }
}

/// One user-properties item per identity: Heap applies the items of one bulk request in no
/// stated order, so two updates of one profile in a batch are merged first, the later event
/// (by its Currents `time`) winning each property.
fn merge_by_identity<'a>(
    items: impl Iterator<Item = (&'a str, &'a UserPropertiesItem)>,
) -> Vec<UserPropertiesItem> {
    let mut items: Vec<(&str, &UserPropertiesItem)> = items.collect();
    // RFC 3339 UTC timestamps of one format sort as text; stable, so ties keep arrival order.
    items.sort_by(|a, b| a.0.cmp(b.0));
    let mut merged: Vec<UserPropertiesItem> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (_, item) in items {
        match index.get(item.identity.as_str()) {
            Some(&i) => merged[i]
                .properties
                .extend(item.properties.iter().map(|(k, v)| (k.clone(), v.clone()))),
            None => {
                index.insert(&item.identity, merged.len());
                merged.push(item.clone());
            }
        }
    }
    merged
}

/// `items` cut into the consecutive `ranges` (which cover them in order).
fn split_into(items: Vec<Item>, ranges: &[std::ops::Range<usize>]) -> Vec<Vec<Item>> {
    let mut items = items.into_iter();
    ranges
        .iter()
        .map(|r| items.by_ref().take(r.len()).collect())
        .collect()
}

enum Prepared {
    Dead(DeadLetterItem),
    /// Sequence, reason, and whether to keep it as a dead letter.
    Skipped(i64, &'static str, bool),
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_owned(),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heap::model::PropertyValue;

    fn props(identity: &str, pairs: &[(&str, &str)]) -> UserPropertiesItem {
        UserPropertiesItem {
            identity: identity.to_owned(),
            properties: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), PropertyValue::Str((*v).to_owned())))
                .collect(),
        }
    }

    #[test]
    fn two_updates_of_one_profile_merge_and_the_later_event_wins() {
        let newer = props("alice", &[("email", "new@x"), ("city", "Paris")]);
        let older = props("alice", &[("email", "old@x"), ("phone", "1")]);
        let bob = props("bob", &[("email", "b@x")]);
        let merged = merge_by_identity(
            [
                ("2026-01-02T00:00:00Z", &newer),
                ("2026-01-01T00:00:00Z", &bob),
                ("2026-01-01T00:00:00Z", &older),
            ]
            .into_iter(),
        );
        assert_eq!(merged.len(), 2);
        let alice = merged.iter().find(|m| m.identity == "alice").unwrap();
        assert_eq!(
            alice.properties.get("email"),
            Some(&PropertyValue::Str("new@x".into()))
        );
        assert_eq!(alice.properties.len(), 3);
    }
}
