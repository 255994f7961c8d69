//! Metrics of the delivery lanes (label `route`): events delivered, skipped and dead-lettered,
//! Heap requests, retries, pauses, the memory window and the rate-limit budgets.
//!
//! A lane holds a [`LaneMetrics`]: the series it updates per batch resolved once, and one
//! method per event.

use std::time::Duration;

use prometheus::{
    Counter, CounterVec, Error, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Registry,
};

use super::{DEAD_LETTER_REASONS, UNROUTABLE, counter_vec, gauge_value};
use crate::heap::model::{TRACK_PATH, USER_PROPERTIES_PATH};
use crate::heap::retry::{RETRY_REASONS, STATUS_CLASSES};

/// Buckets of `heap_request_duration_seconds`.
const DURATION_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The outbound budgets (label `budget`).
const BUDGETS: [&str; 2] = ["app", "identity"];

/// The log target of the delivery events logged here: the lane's answer handling.
const TARGET: &str = "currents_heap::delivery::answer";

#[derive(Debug, Clone)]
pub struct DeliveryMetrics {
    delivered: IntCounterVec,
    skipped: IntCounterVec,
    dead_lettered: IntCounterVec,
    heap_requests: IntCounterVec,
    heap_duration: HistogramVec,
    retries: IntCounterVec,
    paused: IntGaugeVec,
    window_bytes: IntGaugeVec,
    waits: IntCounterVec,
    wait_seconds: CounterVec,
    budgets: IntGaugeVec,
    leader: IntGaugeVec,
}

impl DeliveryMetrics {
    /// Registers the delivery collectors; the series of the pseudo-route `unroutable` at 0
    /// (the series of each real route are created by [`Self::init_route`]).
    pub fn register(registry: &Registry) -> Result<Self, Error> {
        let m = DeliveryMetrics {
            delivered: counter_vec(registry, "currents_heap_events_delivered_total")?,
            skipped: counter_vec(registry, "currents_heap_events_skipped_total")?,
            dead_lettered: counter_vec(registry, "currents_heap_events_dead_lettered_total")?,
            heap_requests: counter_vec(registry, "currents_heap_heap_requests_total")?,
            heap_duration: super::histogram_vec(
                registry,
                "currents_heap_heap_request_duration_seconds",
                DURATION_BUCKETS,
            )?,
            retries: counter_vec(registry, "currents_heap_delivery_retries_total")?,
            paused: super::gauge_vec(registry, "currents_heap_delivery_paused")?,
            window_bytes: super::gauge_vec(registry, "currents_heap_delivery_window_bytes")?,
            waits: counter_vec(registry, "currents_heap_rate_limit_waits_total")?,
            wait_seconds: super::float_counter_vec(
                registry,
                "currents_heap_rate_limit_wait_seconds_total",
            )?,
            budgets: super::gauge_vec(registry, "currents_heap_heap_budget_events_per_minute")?,
            leader: super::gauge_vec(registry, "currents_heap_lane_leader")?,
        };
        m.unroutable();
        Ok(m)
    }

    /// The `{route="unroutable", reason="unroutable"}` series of the dead-letter counter:
    /// events no route takes, counted at ingest.
    pub fn unroutable(&self) -> IntCounter {
        self.dead_lettered
            .with_label_values(&[UNROUTABLE, UNROUTABLE])
    }

    /// Creates every delivery series of `route` at 0 (at start-up, and for a route a reload
    /// adds).
    pub fn init_route(&self, route: &str) {
        self.delivered.with_label_values(&[route]);
        self.paused.with_label_values(&[route]);
        self.leader.with_label_values(&[route]);
        self.window_bytes.with_label_values(&[route]);
        for r in crate::transform::SKIP_REASONS {
            self.skipped.with_label_values(&[route, *r]);
        }
        for r in DEAD_LETTER_REASONS {
            self.dead_lettered.with_label_values(&[route, *r]);
        }
        for e in [TRACK_PATH, USER_PROPERTIES_PATH] {
            self.heap_duration.with_label_values(&[route, e]);
            for c in STATUS_CLASSES {
                self.heap_requests.with_label_values(&[route, e, *c]);
            }
        }
        for r in RETRY_REASONS {
            self.retries.with_label_values(&[route, *r]);
        }
        for b in BUDGETS {
            self.waits.with_label_values(&[route, b]);
            self.wait_seconds.with_label_values(&[route, b]);
            self.budgets.with_label_values(&[route, b]);
        }
    }

    /// The configured `budget` (`app` or `identity`) of `route`, in events per minute.
    pub fn set_budget(&self, route: &str, budget: &str, events_per_minute: u32) {
        self.budgets
            .with_label_values(&[route, budget])
            .set(i64::from(events_per_minute));
    }

    /// `currents_heap_lane_leader{route}`: 1 while this replica holds the lane.
    pub fn leader(&self, route: &str) -> IntGauge {
        self.leader.with_label_values(&[route])
    }

    /// The metrics of one lane, its per-batch series resolved once.
    pub fn lane(&self, route: &str) -> LaneMetrics {
        LaneMetrics {
            delivered: self.delivered.with_label_values(&[route]),
            paused: self.paused.with_label_values(&[route]),
            window_bytes: self.window_bytes.with_label_values(&[route]),
            app_waits: self.waits.with_label_values(&[route, "app"]),
            app_wait_seconds: self.wait_seconds.with_label_values(&[route, "app"]),
            identity_waits: self.waits.with_label_values(&[route, "identity"]),
            route: route.to_owned(),
            all: self.clone(),
        }
    }
}

/// A transient Heap failure, as [`LaneMetrics::retried`] logs it.
#[derive(Debug)]
pub struct Retried<'a> {
    /// One of [`RETRY_REASONS`].
    pub reason: &'static str,
    /// How long the lane pauses.
    pub pause: Duration,
    /// The pause is Heap's `Retry-After` (else a backoff).
    pub retry_after: bool,
    pub consecutive_failures: u32,
    pub detail: &'a str,
    /// No HTTP answer (a transport error).
    pub transport: bool,
}

/// The metrics of one delivery lane.
#[derive(Debug, Clone)]
pub struct LaneMetrics {
    route: String,
    delivered: IntCounter,
    paused: IntGauge,
    window_bytes: IntGauge,
    app_waits: IntCounter,
    app_wait_seconds: Counter,
    identity_waits: IntCounter,
    all: DeliveryMetrics,
}

impl LaneMetrics {
    /// Event bytes the lane holds in memory now.
    pub fn set_window_bytes(&self, bytes: usize) {
        self.window_bytes.set(gauge_value(bytes));
    }

    /// A send waited `waited` for `budget` (nothing is counted for no wait).
    pub fn budget_waited(&self, budget: &str, waited: Duration) {
        if waited.is_zero() {
            return;
        }
        if budget == "app" {
            self.app_waits.inc();
            self.app_wait_seconds.inc_by(waited.as_secs_f64());
        } else {
            let labels = [self.route.as_str(), budget];
            self.all.waits.with_label_values(&labels).inc();
            self.all
                .wait_seconds
                .with_label_values(&labels)
                .inc_by(waited.as_secs_f64());
        }
    }

    /// An identity over its budget was deferred.
    pub fn identity_deferred(&self) {
        self.identity_waits.inc();
    }

    /// An event accepted but not sent, for `reason` (one of the mapping's skip reasons).
    pub fn skipped(&self, reason: &str) {
        self.all
            .skipped
            .with_label_values(&[&self.route, reason])
            .inc();
    }

    /// An event moved to the dead-letter store; an unexpected reason is counted as `other`
    /// (bounded labels).
    pub fn dead_lettered(&self, reason: &str) {
        let label = DEAD_LETTER_REASONS
            .iter()
            .find(|r| **r == reason)
            .copied()
            .unwrap_or("other");
        self.all
            .dead_lettered
            .with_label_values(&[&self.route, label])
            .inc();
    }

    /// How long a request to `endpoint` took, answered or not.
    pub fn heap_request_took(&self, endpoint: &str, seconds: f64) {
        self.all
            .heap_duration
            .with_label_values(&[&self.route, endpoint])
            .observe(seconds);
    }

    /// Heap answered a request to `endpoint` with `status_class` (`error`: no HTTP answer).
    pub fn heap_answered(&self, endpoint: &str, status_class: &str) {
        self.all
            .heap_requests
            .with_label_values(&[&self.route, endpoint, status_class])
            .inc();
    }

    /// Heap acknowledged `events`.
    pub fn delivered(&self, events: usize) {
        self.delivered.inc_by(events as u64);
    }

    /// A request failed transiently: counted, logged, and the lane pauses.
    pub fn retried(&self, r: Retried<'_>) {
        self.all
            .retries
            .with_label_values(&[&self.route, r.reason])
            .inc();
        self.paused.set(1);
        tracing::warn!(
            target: TARGET,
            message = "Heap request failed; retrying after a pause.",
            route = %self.route,
            reason = r.reason,
            pause_ms = r.pause.as_millis() as u64,
            retry_after = r.retry_after,
            consecutive_failures = r.consecutive_failures,
            detail = %r.detail,
            transport = r.transport,
        );
    }

    /// A pause saved by the previous process is not over: the lane continues it.
    pub fn pause_restored(&self, pause: Duration) {
        self.paused.set(1);
        tracing::info!(
            target: TARGET,
            message = "Continuing a pause from before the restart.",
            route = %self.route,
            pause_ms = pause.as_millis() as u64,
        );
    }

    /// The pause after a failure is over: the lane sends again.
    pub fn resumed(&self) {
        self.paused.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn a_lane_counts_under_its_route_and_a_retry_pauses_it() {
        let m = Metrics::with_routes(&["brand-a"]).unwrap();
        let lane = m.delivery.lane("brand-a");
        lane.delivered(3);
        lane.dead_lettered("expired");
        lane.dead_lettered("not_a_reason");
        lane.budget_waited("app", Duration::from_millis(500));
        lane.budget_waited("app", Duration::ZERO);
        lane.retried(Retried {
            reason: "status_5xx",
            pause: Duration::from_secs(1),
            retry_after: false,
            consecutive_failures: 1,
            detail: "HTTP 503",
            transport: false,
        });
        let text = m.render();
        for line in [
            r#"currents_heap_events_delivered_total{route="brand-a"} 3"#,
            r#"currents_heap_events_dead_lettered_total{reason="expired",route="brand-a"} 1"#,
            r#"currents_heap_events_dead_lettered_total{reason="other",route="brand-a"} 1"#,
            r#"currents_heap_rate_limit_waits_total{budget="app",route="brand-a"} 1"#,
            r#"currents_heap_rate_limit_wait_seconds_total{budget="app",route="brand-a"} 0.5"#,
            r#"currents_heap_delivery_retries_total{reason="status_5xx",route="brand-a"} 1"#,
            r#"currents_heap_delivery_paused{route="brand-a"} 1"#,
            r#"currents_heap_delivery_retries_total{reason="timeout",route="brand-a"} 0"#,
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        lane.resumed();
        assert!(
            m.render()
                .contains(r#"currents_heap_delivery_paused{route="brand-a"} 0"#)
        );
    }
}
