//! Metrics of `POST /currents` and the other paths: requests, events received, accepted,
//! duplicate and rejected, and the ingest memory budget.

use prometheus::{Error, HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry};

use super::{OUTCOMES, REJECT_REASONS, STATUSES, counter, counter_vec, gauge, gauge_value, zeroed};
use crate::currents::catalogue::KNOWN_EVENT_TYPES;

/// Buckets of `ingest_request_duration_seconds`.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The log target of the ingest events logged here (where they were logged before).
const TARGET: &str = "currents_heap::ingest::handler";

#[derive(Debug, Clone)]
pub struct IngestMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    received: IntCounter,
    accepted: IntCounterVec,
    duplicate: IntCounter,
    rejected: IntCounterVec,
    /// The `{route="unroutable", reason="unroutable"}` series of `events_dead_lettered_total`.
    unroutable: IntCounter,
    buffer_bytes: IntGauge,
    buffer_capacity: IntGauge,
}

impl IngestMetrics {
    /// Registers the ingest collectors, every outcome, status and reject reason at 0;
    /// `unroutable` counts the events no route takes (see [`super::DeliveryMetrics`]).
    pub fn register(registry: &Registry, unroutable: IntCounter) -> Result<Self, Error> {
        let requests = counter_vec(registry, "currents_heap_ingest_requests_total")?;
        let duration = super::histogram_vec(
            registry,
            "currents_heap_ingest_request_duration_seconds",
            DURATION_BUCKETS,
        )?;
        let rejected = counter_vec(registry, "currents_heap_events_rejected_total")?;
        Ok(IngestMetrics {
            requests: zeroed(requests, OUTCOMES),
            duration: zeroed(duration, STATUSES),
            received: counter(registry, "currents_heap_events_received_total")?,
            accepted: counter_vec(registry, "currents_heap_events_accepted_total")?,
            duplicate: counter(registry, "currents_heap_events_duplicate_total")?,
            rejected: zeroed(rejected, REJECT_REASONS),
            unroutable,
            buffer_bytes: gauge(registry, "currents_heap_ingest_buffer_bytes")?,
            buffer_capacity: gauge(registry, "currents_heap_ingest_buffer_capacity_bytes")?,
        })
    }

    /// Creates the accepted-event series of `route` at 0: every known event type and `other`.
    pub fn init_route(&self, route: &str) {
        for t in KNOWN_EVENT_TYPES.iter().chain(&["other"]) {
            self.accepted.with_label_values(&[*t, route]);
        }
    }

    /// One finished request: its outcome (one of [`OUTCOMES`]), HTTP status and latency.
    pub fn request(&self, outcome: &'static str, status: u16, seconds: f64) {
        debug_assert!(OUTCOMES.contains(&outcome), "{outcome} is not in OUTCOMES");
        self.requests.with_label_values(&[outcome]).inc();
        let status = STATUSES
            .iter()
            .find(|s| s.parse::<u16>().ok() == Some(status))
            .copied()
            .unwrap_or("503");
        self.duration.with_label_values(&[status]).observe(seconds);
    }

    /// Events in a parsed body.
    pub fn received(&self, events: usize) {
        self.received.inc_by(events as u64);
    }

    /// A body whose events failed validation: all `total` were received, `invalid` are
    /// rejected as `invalid_event` and the valid rest with them as `invalid_batch`.
    pub fn invalid_events(&self, total: usize, invalid: usize) {
        self.received(total);
        self.rejected("invalid_event", invalid);
        self.rejected("invalid_batch", total.saturating_sub(invalid));
    }

    /// `events` refused and not stored, for `reason` (one of [`REJECT_REASONS`]).
    pub fn rejected(&self, reason: &'static str, events: usize) {
        debug_assert!(
            REJECT_REASONS.contains(&reason),
            "{reason} is not in REJECT_REASONS"
        );
        self.rejected
            .with_label_values(&[reason])
            .inc_by(events as u64);
    }

    /// One event durably queued; `event_type` is already bounded to the catalogue.
    pub fn accepted(&self, event_type: &str, route: &str) {
        self.accepted.with_label_values(&[event_type, route]).inc();
    }

    /// Events of a batch that no route takes (and there is no default route): kept as dead
    /// letters `unroutable`.
    pub fn unroutable(&self, events: usize, workspace: Option<&str>) {
        tracing::warn!(
            target: TARGET,
            message = "Events match no route and there is no default route; kept as dead letters (reason unroutable).",
            events,
            workspace = workspace.unwrap_or(""),
        );
        self.unroutable.inc_by(events as u64);
    }

    /// Events acknowledged but not queued again (seen within the dedup window).
    pub fn duplicates(&self, events: usize) {
        self.duplicate.inc_by(events as u64);
    }

    /// Request body bytes held in memory now.
    pub fn set_buffer_bytes(&self, bytes: u64) {
        self.buffer_bytes.set(gauge_value(bytes));
    }

    /// The ingest memory budget.
    pub fn set_buffer_capacity(&self, bytes: u64) {
        self.buffer_capacity.set(gauge_value(bytes));
    }
}
