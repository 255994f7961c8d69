//! What a lane sends next, and identity deferral.
//!
//! A batch is the longest FIFO run of eligible events that fits one request by count (the app
//! burst) and by bytes (`--heap-max-request-bytes`); its app budget is taken before the events
//! are picked ([`Delivery::plan`] sizes it). Each event also passes its identity's budget. An
//! identity over its budget is *deferred*: it is skipped until its budget refills, a small
//! reserve of its events stays in memory and the rest are parked in the queue, one budget slot
//! apart, so the identity drains at its own pace while the other identities keep flowing.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::lane::{Deferral, Delivery, Item};
use crate::heap::bulk::BodySize;
use crate::queue::{QueueOp, unix_millis};

impl Delivery {
    /// How many eligible events (FIFO, up to the app burst) the next request takes, and
    /// whether that request is full (by count or by `max_request_bytes`).
    pub(super) fn plan(&self) -> (usize, bool) {
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

    /// None when a batch should go now; else how long to wait for more events (linger) or
    /// for a deferred identity.
    pub(super) fn next_wait(&mut self) -> Option<Duration> {
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

    pub(super) fn record_wait(&self, budget: &'static str, waited: Duration) {
        self.metrics.budget_waited(budget, waited);
    }

    /// Takes up to `n` eligible events that fit in one request of `max_request_bytes`,
    /// passing each identity's budget; defers the events of identities that are over budget.
    /// With no identity over budget these are exactly the `n` events of [`Self::plan`], whose
    /// app budget was taken.
    pub(super) async fn select(&mut self, n: usize) -> Vec<Item> {
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
                    self.defer(key.to_owned(), now, wait);
                    keep.push_back(item);
                }
            }
        }
        self.pending = keep;
        self.park_deferred().await;
        taken
    }

    /// Marks `key` over its budget for `wait` from `now`.
    fn defer(&mut self, key: String, now: Instant, wait: Duration) {
        let slot = unix_millis() + wait.as_millis() as i64;
        let entry = self.deferred.entry(key).or_insert(Deferral {
            until: now + wait,
            next_slot: slot,
        });
        entry.until = entry.until.max(now + wait);
        entry.next_slot = entry.next_slot.max(slot);
    }

    /// Keeps a small reserve of each deferred identity's events in memory — enough for what
    /// its budget admits between two batches, and at most a quarter of the window's bytes for
    /// all deferred identities together — and moves the rest to the queue, each with its own
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
            self.apply(QueueOp::Park { items: parked }).await;
        }
    }

    /// A bisected or split part whose app budget was taken: it passes the identity budget item
    /// by item (items over it are deferred like any other).
    pub(super) async fn admit_forced(&mut self, items: Vec<Item>) -> Vec<Item> {
        let mut taken = Vec::with_capacity(items.len());
        for item in items {
            let key = item.track.budget_key().to_owned();
            match self.budgets.take_identity(&key) {
                Ok(()) => taken.push(item),
                Err(wait) => {
                    self.deferred.entry(key).or_insert(Deferral {
                        until: Instant::now() + wait,
                        next_slot: unix_millis() + wait.as_millis() as i64,
                    });
                    self.pending.push_back(item);
                }
            }
        }
        self.park_deferred().await;
        taken
    }
}
