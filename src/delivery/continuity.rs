//! What a lane keeps across restarts (product.md §9): its budget state, its pause and its
//! deferred identities ([`SavedLane`]), and the newest Braze event time of each user property
//! Heap accepted ([`PropertyStamp`]).
//!
//! The saved state is written before the request that spends a budget (so a crash after
//! Heap counted the request cannot forget it) and when a pause starts; it is read once when
//! the lane starts, before anything is sent. A save is skipped while nothing in it could
//! matter to a restart: a budget whose owed cells a fresh start could add without exceeding
//! it (see [`super::budget`]), no pause, no deferral — so a lane far below its budgets writes
//! nothing more than its acknowledgements.
//!
//! Currents is unordered, and Heap keeps the last value it was sent; so a user-property
//! update is checked against the stamp of each property before it is sent, and one older
//! than the value Heap has is withheld (`skipped`, reason `stale_user_property`); the
//! acknowledgement of an update records its stamps.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::budget::ahead_of_now;
use super::lane::{Deferral, Delivery, Item};
use crate::heap::retry::MAX_RETRY_AFTER;
use crate::queue::{PropertyStamp, QueueError, QueueOp, SavedIdentity, SavedLane, unix_millis};
use crate::transform::SkipReason;

impl Delivery {
    /// Reads what the lane's previous process saved and continues from it: the owed budget
    /// cells, a pause not over yet, and deferred identities.
    pub(super) async fn restore_saved(&mut self) -> Result<(), QueueError> {
        let saved = self.queue.saved_lane(&self.cfg.app_id).await?;
        self.continued = true;
        let Some(saved) = saved else {
            self.budgets.start(Duration::ZERO);
            return Ok(());
        };
        let now_ms = unix_millis();
        let owed = ahead_of_now(saved.app_budget_refilled_at);
        self.budgets.start(owed);
        // The next save writes, if only to clear what this one holds.
        self.saved_something = saved.paused_until > 0 || !saved.identities.is_empty();
        // A wall clock set back since the save must not stretch a pause past what Heap or the
        // backoff could have asked for.
        let longest = MAX_RETRY_AFTER.max(self.cfg.backoff.cap());
        let left = |until_ms: i64| {
            Duration::from_millis(until_ms.saturating_sub(now_ms).max(0) as u64).min(longest)
        };
        let pause = left(saved.paused_until);
        if !pause.is_zero() {
            self.paused_until = Some(Instant::now() + pause);
            self.metrics.pause_restored(pause);
        }
        let mut deferred = 0;
        for i in &saved.identities {
            self.budgets
                .restore_identity(&i.identity, ahead_of_now(i.budget_refilled_at));
            let wait = left(i.deferred_until);
            if !wait.is_zero() {
                deferred += 1;
                self.deferred.insert(
                    i.identity.clone(),
                    Deferral {
                        until: Instant::now() + wait,
                        next_slot: i.next_slot,
                    },
                );
            }
        }
        tracing::info!(
            message = "Continuing the lane's saved state.",
            route = %self.cfg.lane,
            app_budget_owed_ms = owed.as_millis() as u64,
            pause_ms = pause.as_millis() as u64,
            identities = saved.identities.len(),
            deferred,
        );
        Ok(())
    }

    /// Saves the lane's state if a restart could otherwise break a budget or a pause. A dry
    /// run sends nothing to Heap, so it saves nothing. `false` when the queue is closed: what
    /// was to be saved is not, so nothing may be sent.
    pub(super) async fn save_state(&mut self) -> bool {
        if !self.sender.consumes() {
            return true;
        }
        let now = Instant::now();
        let now_ms = unix_millis();
        // A time ahead on tokio's clock, as wall-clock UNIX ms.
        let wall_ms = |at: Instant| now_ms + at.duration_since(now).as_millis() as i64;
        let app = self.budgets.app_worth_saving();
        let mut identities: HashMap<String, SavedIdentity> = self
            .budgets
            .identities_worth_saving()
            .into_iter()
            .map(|(identity, at)| {
                let saved = SavedIdentity {
                    identity: identity.clone(),
                    budget_refilled_at: at,
                    ..SavedIdentity::default()
                };
                (identity, saved)
            })
            .collect();
        for (key, d) in self.deferred.iter().filter(|(_, d)| d.until > now) {
            let saved = identities
                .entry(key.clone())
                .or_insert_with(|| SavedIdentity {
                    identity: key.clone(),
                    ..SavedIdentity::default()
                });
            saved.deferred_until = wall_ms(d.until);
            saved.next_slot = d.next_slot;
        }
        let paused_until = self.paused_until.filter(|u| *u > now).map_or(0, wall_ms);
        let nothing_to_keep = app.is_none() && identities.is_empty() && paused_until == 0;
        if nothing_to_keep && !self.saved_something {
            return true;
        }
        let mut identities: Vec<SavedIdentity> = identities.into_values().collect();
        identities.sort_by(|a, b| a.identity.cmp(&b.identity));
        let saved = self
            .apply(QueueOp::SaveLane(SavedLane {
                app_id: self.cfg.app_id.clone(),
                app_budget_refilled_at: app.unwrap_or(0),
                paused_until,
                identities,
            }))
            .await;
        // Once cleared, nothing more needs writing until there is something to keep again.
        self.saved_something = !nothing_to_keep;
        saved
    }

    /// Splits events with user properties into those still to send, with every property
    /// older than the value Heap has removed, and those left with none to send. Counts each
    /// event that lost a property as `skipped` (`stale_user_property`).
    pub(super) async fn withhold_stale(&mut self, items: Vec<Item>) -> (Vec<Item>, Vec<Item>) {
        if items.is_empty() {
            return (items, Vec::new());
        }
        let keys: Vec<i64> = items.iter().flat_map(|i| self.property_keys(i)).collect();
        let Some(stamps) = self.read_stamps(keys).await else {
            // The queue closed (shutdown): nothing is sent unchecked; the events stay queued
            // and are sent after the next start.
            for item in &items {
                self.release(item.seq);
            }
            return (Vec::new(), Vec::new());
        };
        let stamps: HashMap<i64, i64> = stamps.into_iter().map(|s| (s.key, s.event_time)).collect();
        if stamps.is_empty() {
            return (items, Vec::new());
        }
        let app_id = self.cfg.app_id.clone();
        let mut send = Vec::with_capacity(items.len());
        let mut done = Vec::new();
        for mut item in items {
            let event_time = item.event_time;
            let Some(props) = item.user_properties.as_mut() else {
                done.push(item);
                continue;
            };
            let before = props.properties.len();
            let identity = props.identity.clone();
            props.properties.retain(|name, _| {
                let key = PropertyStamp::key(&app_id, &identity, name);
                stamps.get(&key).is_none_or(|&newest| newest <= event_time)
            });
            if props.properties.len() == before {
                send.push(item);
                continue;
            }
            self.metrics.skipped(SkipReason::StaleUserProperty.as_str());
            tracing::debug!(
                message = "User properties older than Heap's value withheld.",
                route = %self.cfg.lane,
                withheld = before - props.properties.len(),
            );
            if props.properties.is_empty() {
                item.user_properties = None;
                done.push(item);
            } else {
                send.push(item);
            }
        }
        (send, done)
    }

    /// The stamps of the user properties these events set in Heap.
    pub(super) fn stamps(&self, items: &[Item]) -> Vec<PropertyStamp> {
        items
            .iter()
            .flat_map(|i| {
                self.property_keys(i).map(move |key| PropertyStamp {
                    key,
                    event_time: i.event_time,
                })
            })
            .collect()
    }

    fn property_keys<'a>(&'a self, item: &'a Item) -> impl Iterator<Item = i64> + 'a {
        item.user_properties.iter().flat_map(move |u| {
            u.properties
                .keys()
                .map(move |name| PropertyStamp::key(&self.cfg.app_id, &u.identity, name))
        })
    }

    /// Reads stamps, retrying while the store fails: sending without knowing them could
    /// overwrite a newer value. `None` once the store is closed (shutdown).
    async fn read_stamps(&self, keys: Vec<i64>) -> Option<Vec<PropertyStamp>> {
        let mut delay = Duration::from_millis(50);
        loop {
            match self.queue.property_stamps(keys.clone()).await {
                Ok(stamps) => return Some(stamps),
                Err(QueueError::Closed) => return None,
                Err(e) => {
                    tracing::error!(message = "Reading the user-property stamps failed; retrying.", route = %self.cfg.lane, error = %e);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
