//! The delivery loop: durable queue → mapping → budgets → Heap → acknowledge, retry or
//! dead-letter.
//!
//! One [`Delivery`] task per Heap app id owns its budgets, its pause (`Retry-After`, backoff)
//! and its position in the queue, so one environment's outage or backlog never delays
//! another's. An event leaves the queue only when Heap answered 2xx for it (or it was
//! dead-lettered or skipped with a reason); a crash at any point leaves it queued, and a
//! re-send is harmless because every item carries the Currents `id` as `idempotency_key`.
//!
//! Budgets ([`budget`]) are checked before every send, retries and bisected halves included.
//! An identity over its budget is *deferred*: its events get a `not_before` in the store, one
//! budget slot apart, and come back through the deferred index when due, while the other
//! identities' events keep flowing.
//!
//! Memory and requests are bounded in bytes as well as in events, because Braze events reach
//! 900 KB: a lane holds at most [`DeliveryConfig::window_bytes`] of events (one event always
//! fits), and no request body exceeds [`DeliveryConfig::max_request_bytes`] unless it carries a
//! single event that is larger on its own ([`crate::heap::bulk`]).
//!
//! | file | holds |
//! |---|---|
//! | `lane.rs` | [`Delivery`]: a lane's state, [`Delivery::step`] and the loop that runs the steps |
//! | `refill.rs` | reading the queue into the window; mapping, expiry and skips on the way in |
//! | `select.rs` | the next batch (app budget, request size) and identity deferral |
//! | `answer.rs` | sending a batch and what Heap's answer does: ack, retry and pause, bisect, split |
//! | `continuity.rs` | what outlives a restart: the lane's saved state, user-property stamps |
//! | `budget.rs`, `backoff.rs` | the budgets (governor) and the backoff, each tested alone |

mod answer;
pub mod backoff;
pub mod budget;
mod continuity;
mod lane;
mod refill;
mod select;
mod sender;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

pub use backoff::Backoff;
pub use budget::{BudgetShape, Budgets};
pub use lane::{Delivery, LaneBell, LaneCarry, SendReport, Step};
pub use sender::{DryRun, SendFuture, Sender};

use crate::transform::MappingOptions;

/// How the events of one route are mapped.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteMapping {
    pub mapping: MappingOptions,
    /// Keep skipped events (anonymous, excluded, ...) in the dead-letter store instead of
    /// dropping them after counting.
    pub dead_letter_skipped: bool,
}

/// Everything one delivery lane (one Heap app id, one or more routes) needs.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryConfig {
    /// The lane's name in logs and in the `route` metric label: its first route's name.
    pub lane: Arc<str>,
    pub app_id: String,
    /// Mapping per route name; events of a route not listed (renamed since) use `fallback`.
    pub routes: HashMap<String, RouteMapping>,
    pub fallback: RouteMapping,
    /// Upper bound of items per bulk request (Heap's cap is 1000).
    pub batch_size: usize,
    /// How long a partial batch may wait for more events.
    pub linger: Duration,
    /// Largest body of one Heap request; a larger batch is split before it is sent (see
    /// [`crate::heap::bulk`]).
    pub max_request_bytes: usize,
    /// Most event bytes the lane holds in memory: read ahead, in flight, waiting for a retry
    /// or a split. At least one event is always held, however large.
    pub window_bytes: usize,
    pub events_per_window: NonZeroU32,
    pub identity_events_per_window: NonZeroU32,
    /// Heap's budget window: one minute. Tests shrink it to scale budgets.
    pub window: Duration,
    pub backoff: Backoff,
    /// Events older than this (since they were received) are dead-lettered as `expired`.
    pub max_event_age: Duration,
}

impl DeliveryConfig {
    pub fn mapping_for(&self, route: &str) -> &RouteMapping {
        self.routes.get(route).unwrap_or(&self.fallback)
    }
}
