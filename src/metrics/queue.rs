//! Gauges of the durable queue, the dedup window and the dead-letter store, refreshed at each
//! scrape, and the store's health.

use prometheus::{Error, Gauge, IntGauge, IntGaugeVec, Registry};

use super::{DEAD_LETTER_REASONS, float_gauge, gauge, gauge_value};

#[derive(Debug, Clone)]
pub struct QueueMetrics {
    events: IntGauge,
    bytes: IntGauge,
    max_bytes: IntGauge,
    oldest_age: Gauge,
    drain_estimate: Gauge,
    dedup_ids: IntGauge,
    dedup_capacity: IntGauge,
    store_healthy: IntGauge,
    dead_letters: IntGaugeVec,
}

impl QueueMetrics {
    /// Registers the queue gauges, the dead-letter gauge of every reason at 0.
    pub fn register(registry: &Registry) -> Result<Self, Error> {
        let dead_letters = super::gauge_vec(registry, "currents_heap_dead_letter_events")?;
        Ok(QueueMetrics {
            events: gauge(registry, "currents_heap_queue_events")?,
            bytes: gauge(registry, "currents_heap_queue_bytes")?,
            max_bytes: gauge(registry, "currents_heap_queue_max_bytes")?,
            oldest_age: float_gauge(registry, "currents_heap_queue_oldest_event_age_seconds")?,
            drain_estimate: float_gauge(registry, "currents_heap_queue_drain_seconds_estimate")?,
            dedup_ids: gauge(registry, "currents_heap_dedup_ids")?,
            dedup_capacity: gauge(registry, "currents_heap_dedup_capacity")?,
            store_healthy: gauge(registry, "currents_heap_store_healthy")?,
            dead_letters: super::zeroed(dead_letters, DEAD_LETTER_REASONS),
        })
    }

    /// Events waiting in the queue and their payload bytes.
    pub fn set_size(&self, events: u64, bytes: u64) {
        self.events.set(gauge_value(events));
        self.bytes.set(gauge_value(bytes));
    }

    /// The configured backlog quota.
    pub fn set_max_bytes(&self, bytes: u64) {
        self.max_bytes.set(gauge_value(bytes));
    }

    /// Seconds since the oldest queued event was received (0 when the queue is empty).
    pub fn set_oldest_age(&self, seconds: f64) {
        self.oldest_age.set(seconds);
    }

    /// Estimated seconds to empty the queue.
    pub fn set_drain_estimate(&self, seconds: f64) {
        self.drain_estimate.set(seconds);
    }

    /// Event ids the dedup window remembers.
    pub fn set_dedup_ids(&self, ids: u64) {
        self.dedup_ids.set(gauge_value(ids));
    }

    /// Most ids the dedup window remembers.
    pub fn set_dedup_capacity(&self, ids: usize) {
        self.dedup_capacity.set(gauge_value(ids));
    }

    /// Whether the store commits.
    pub fn set_store_healthy(&self, healthy: bool) {
        self.store_healthy.set(i64::from(healthy));
    }

    /// Events in the dead-letter store by reason, from the store's `(reason, count)` rows: every
    /// known reason is set (0 when it has no row); other reasons are not exported.
    pub fn set_dead_letters(&self, counts: &[(String, u64)]) {
        for reason in DEAD_LETTER_REASONS {
            let n = counts
                .iter()
                .find(|(r, _)| r == reason)
                .map_or(0, |(_, n)| *n);
            self.dead_letters
                .with_label_values(&[*reason])
                .set(gauge_value(n));
        }
    }
}
