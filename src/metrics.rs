//! The metric catalogue: every metric the binary exports, its labels, and the endpoint text.
//!
//! Names and label sets are fixed here and nowhere else, so `deploy/` (dashboards, alerts) and
//! the README can be checked against one list ([`CATALOGUE`]). Label values come from closed sets
//! (outcomes, reasons, status codes, the known event-type catalogue) and every such series is
//! created at 0 on start-up, so dashboards and alerts see it before the first event. No id,
//! identity or free text ever becomes a label value.

use std::sync::LazyLock;

use prometheus::{
    CounterVec, Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::currents::catalogue::KNOWN_EVENT_TYPES;

/// `(name, type, labels, help)` of every exported metric.
pub const CATALOGUE: &[(&str, &str, &str, &str)] = &[
    (
        "currents_heap_build_info",
        "gauge",
        "version",
        "Always 1; the version label tells which build runs.",
    ),
    (
        "currents_heap_ingest_requests_total",
        "counter",
        "outcome",
        "Requests to the ingest and admin paths by outcome.",
    ),
    (
        "currents_heap_ingest_request_duration_seconds",
        "histogram",
        "status",
        "Ingest request latency by HTTP status, from headers received to response.",
    ),
    (
        "currents_heap_events_received_total",
        "counter",
        "",
        "Events in structurally parsed request bodies, before validation and dedup.",
    ),
    (
        "currents_heap_events_accepted_total",
        "counter",
        "event_type,route",
        "Events durably queued (after dedup), by event type (unknown types as `other`).",
    ),
    (
        "currents_heap_events_duplicate_total",
        "counter",
        "",
        "Events acknowledged but not queued again: their id was accepted within the dedup window.",
    ),
    (
        "currents_heap_events_rejected_total",
        "counter",
        "reason",
        "Events refused and not stored, by reason.",
    ),
    (
        "currents_heap_queue_events",
        "gauge",
        "",
        "Events waiting in the durable queue.",
    ),
    (
        "currents_heap_queue_bytes",
        "gauge",
        "",
        "Payload bytes of the events waiting in the durable queue (the quota counts these).",
    ),
    (
        "currents_heap_queue_max_bytes",
        "gauge",
        "",
        "The configured backlog quota (--max-queue-bytes).",
    ),
    (
        "currents_heap_queue_oldest_event_age_seconds",
        "gauge",
        "",
        "Time since the oldest queued event was received; 0 when the queue is empty.",
    ),
    (
        "currents_heap_queue_drain_seconds_estimate",
        "gauge",
        "",
        "Estimated time to empty the queue: queued events over the summed app budgets of all delivery lanes (at the ~97 % of the budget delivery uses).",
    ),
    (
        "currents_heap_dedup_ids",
        "gauge",
        "",
        "Event ids remembered by the dedup window.",
    ),
    (
        "currents_heap_dedup_capacity",
        "gauge",
        "",
        "Most ids the dedup window remembers (--dedup-capacity); at it, the oldest are forgotten early.",
    ),
    (
        "currents_heap_events_delivered_total",
        "counter",
        "route",
        "Events Heap acknowledged (2xx on /api/track).",
    ),
    (
        "currents_heap_events_skipped_total",
        "counter",
        "route,reason",
        "Events accepted but not sent to Heap, by reason (anonymous, excluded, ...).",
    ),
    (
        "currents_heap_events_dead_lettered_total",
        "counter",
        "route,reason",
        "Events moved to the dead-letter store, by reason.",
    ),
    (
        "currents_heap_dead_letter_events",
        "gauge",
        "reason",
        "Events in the dead-letter store, by reason.",
    ),
    (
        "currents_heap_heap_requests_total",
        "counter",
        "route,endpoint,status_class",
        "Requests to Heap by endpoint and status class (`error` = no HTTP answer).",
    ),
    (
        "currents_heap_heap_request_duration_seconds",
        "histogram",
        "route,endpoint",
        "Heap request latency by endpoint.",
    ),
    (
        "currents_heap_delivery_retries_total",
        "counter",
        "route,reason",
        "Heap requests that failed transiently and will be retried, by reason.",
    ),
    (
        "currents_heap_delivery_paused",
        "gauge",
        "route",
        "1 while delivery waits out a Retry-After or a backoff after a failure.",
    ),
    (
        "currents_heap_delivery_window_bytes",
        "gauge",
        "route",
        "Event bytes a delivery lane holds in memory (read ahead, in flight, awaiting a retry); bounded by --delivery-window-bytes, except that one event is always held.",
    ),
    (
        "currents_heap_rate_limit_waits_total",
        "counter",
        "route,budget",
        "Times a send waited for the app budget (`app`) or an identity was deferred (`identity`).",
    ),
    (
        "currents_heap_rate_limit_wait_seconds_total",
        "counter",
        "route,budget",
        "Time spent waiting for the app budget.",
    ),
    (
        "currents_heap_heap_budget_events_per_minute",
        "gauge",
        "route,budget",
        "The configured outbound budgets (app, identity).",
    ),
    (
        "currents_heap_connections_open",
        "gauge",
        "",
        "Client connections open on --listen.",
    ),
    (
        "currents_heap_connections_max",
        "gauge",
        "",
        "The connection cap in force (--max-connections, lowered to fit the descriptor limit).",
    ),
    (
        "currents_heap_connections_closed_total",
        "counter",
        "reason",
        "Connections the server closed or refused: idle_timeout, header_timeout, evicted (longest idle, to make room), refused (at the cap, none idle), tls_handshake_failed.",
    ),
    (
        "currents_heap_config_reloads_total",
        "counter",
        "outcome",
        "Configuration reloads on SIGHUP: applied, or refused (invalid; the old configuration stays in force).",
    ),
    (
        "currents_heap_tls_reloads_total",
        "counter",
        "outcome",
        "Re-reads of the TLS certificate and key after a change on disk or SIGHUP: reloaded, or failed (the previous pair stays in use).",
    ),
    (
        "currents_heap_ingest_buffer_bytes",
        "gauge",
        "",
        "Request body bytes (raw and decoded) held in memory now.",
    ),
    (
        "currents_heap_ingest_buffer_capacity_bytes",
        "gauge",
        "",
        "The ingest memory budget (--ingest-buffer-bytes).",
    ),
    (
        "currents_heap_properties_dropped_total",
        "counter",
        "reason",
        "Values left out of mapped events because Heap cannot take them (non_finite_number, invalid_string, too_deep); the rest of each event is sent. Process-wide; counted each time an event is mapped.",
    ),
    (
        "currents_heap_store_healthy",
        "gauge",
        "",
        "1 while the store commits, 0 after a commit failed for a reason other than a full disk.",
    ),
];

/// Outcomes of a request (label `outcome`).
pub const OUTCOMES: &[&str] = &[
    "accepted",
    "empty",
    "unauthorized",
    "malformed",
    "invalid_events",
    "unsupported_encoding",
    "corrupt_body",
    "too_large",
    "body_timeout",
    "over_quota",
    "disk_full",
    "store_busy",
    "store_unavailable",
    "draining",
    "saturated",
    "not_found",
    "method_not_allowed",
];

/// Why the server closed or refused a connection (label `reason`).
pub const CONNECTION_CLOSE_REASONS: &[&str] = &[
    "idle_timeout",
    "header_timeout",
    "evicted",
    "refused",
    "tls_handshake_failed",
];

/// Outcomes of a TLS certificate re-read (label `outcome` of `tls_reloads_total`).
pub const TLS_RELOAD_OUTCOMES: &[&str] = &["reloaded", "failed"];

/// Outcomes of a configuration reload (label `outcome` of `config_reloads_total`).
pub const CONFIG_RELOAD_OUTCOMES: &[&str] = &["applied", "refused"];

/// Reasons an event is refused (label `reason` of `events_rejected_total`).
pub const REJECT_REASONS: &[&str] = &[
    "invalid_event",
    "invalid_batch",
    "over_quota",
    "disk_full",
    "store_busy",
    "store_unavailable",
];

/// The `route` label of events no route takes (and their dead-letter reason).
pub const UNROUTABLE: &str = "unroutable";

/// Reasons an event is dead-lettered (label `reason`).
pub const DEAD_LETTER_REASONS: &[&str] = &[
    "unroutable",
    "rejected",
    "rejected_user_properties",
    "too_large",
    "expired",
    "invalid_mapping",
    "anonymous",
    "invalid_identity",
    "excluded",
    "unparseable",
];

/// HTTP statuses the ingest path answers with (label `status`).
pub const STATUSES: &[&str] = &[
    "200", "400", "401", "404", "405", "408", "413", "415", "503",
];

/// Values left out by the mapping, by [`crate::transform::DropReason`].
///
/// Process-wide, unlike every other collector: the mapping is a pure function called wherever
/// events are mapped (delivery, `transform`, `dlq replay`), none of which hands it a [`Metrics`].
/// One process runs one forwarder, so its registry exports this counter as its own; tests that
/// run several apps in one process see the sum and compare differences.
static PROPERTIES_DROPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let counter =
        IntCounterVec::new(opts("currents_heap_properties_dropped_total"), &["reason"]).unwrap();
    for r in crate::transform::DROP_REASONS {
        counter.with_label_values(&[*r]);
    }
    counter
});

/// Counts one value the mapping left out.
pub fn count_dropped_value(reason: crate::transform::DropReason) {
    PROPERTIES_DROPPED
        .with_label_values(&[reason.as_str()])
        .inc();
}

/// All collectors, registered in one private registry (tests run several apps per process).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub ingest_requests: IntCounterVec,
    pub ingest_duration: HistogramVec,
    pub events_received: IntCounter,
    pub events_accepted: IntCounterVec,
    pub events_duplicate: IntCounter,
    pub events_rejected: IntCounterVec,
    pub queue_events: IntGauge,
    pub queue_bytes: IntGauge,
    pub queue_max_bytes: IntGauge,
    pub queue_oldest_age: Gauge,
    pub queue_drain_estimate: Gauge,
    pub dedup_ids: IntGauge,
    pub dedup_capacity: IntGauge,
    pub store_healthy: IntGauge,
    pub events_delivered: IntCounterVec,
    pub events_skipped: IntCounterVec,
    pub events_dead_lettered: IntCounterVec,
    pub dead_letter_events: IntGaugeVec,
    pub heap_requests: IntCounterVec,
    pub heap_request_duration: HistogramVec,
    pub delivery_retries: IntCounterVec,
    pub delivery_paused: IntGaugeVec,
    pub delivery_window_bytes: IntGaugeVec,
    pub rate_limit_waits: IntCounterVec,
    pub rate_limit_wait_seconds: CounterVec,
    pub budget_per_minute: IntGaugeVec,
    pub connections_open: IntGauge,
    pub connections_max: IntGauge,
    pub connections_closed: IntCounterVec,
    pub tls_reloads: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub ingest_buffer_bytes: IntGauge,
    pub ingest_buffer_capacity: IntGauge,
    /// The process-wide [`PROPERTIES_DROPPED`].
    pub properties_dropped: IntCounterVec,
}

fn help(name: &str) -> &'static str {
    CATALOGUE
        .iter()
        .find(|(n, ..)| *n == name)
        .map(|(.., h)| *h)
        .expect("metric is in the catalogue")
}

fn opts(name: &str) -> Opts {
    Opts::new(name, help(name))
}

impl Metrics {
    /// Metrics of a forwarder with only the default route.
    pub fn new() -> Self {
        Self::with_routes(&[crate::config::DEFAULT_ROUTE])
    }

    /// Metrics whose `route` label takes the values `routes` (and `unroutable` for ingest);
    /// every series with a known label value is created at 0.
    pub fn with_routes(routes: &[&str]) -> Self {
        let registry = Registry::new();
        let m = Metrics {
            ingest_requests: IntCounterVec::new(
                opts("currents_heap_ingest_requests_total"),
                &["outcome"],
            )
            .unwrap(),
            ingest_duration: HistogramVec::new(
                HistogramOpts::new(
                    "currents_heap_ingest_request_duration_seconds",
                    help("currents_heap_ingest_request_duration_seconds"),
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
                &["status"],
            )
            .unwrap(),
            events_received: IntCounter::with_opts(opts("currents_heap_events_received_total"))
                .unwrap(),
            events_accepted: IntCounterVec::new(
                opts("currents_heap_events_accepted_total"),
                &["event_type", "route"],
            )
            .unwrap(),
            events_duplicate: IntCounter::with_opts(opts("currents_heap_events_duplicate_total"))
                .unwrap(),
            events_rejected: IntCounterVec::new(
                opts("currents_heap_events_rejected_total"),
                &["reason"],
            )
            .unwrap(),
            queue_events: IntGauge::with_opts(opts("currents_heap_queue_events")).unwrap(),
            queue_bytes: IntGauge::with_opts(opts("currents_heap_queue_bytes")).unwrap(),
            queue_max_bytes: IntGauge::with_opts(opts("currents_heap_queue_max_bytes")).unwrap(),
            queue_oldest_age: Gauge::with_opts(opts(
                "currents_heap_queue_oldest_event_age_seconds",
            ))
            .unwrap(),
            queue_drain_estimate: Gauge::with_opts(opts(
                "currents_heap_queue_drain_seconds_estimate",
            ))
            .unwrap(),
            dedup_ids: IntGauge::with_opts(opts("currents_heap_dedup_ids")).unwrap(),
            dedup_capacity: IntGauge::with_opts(opts("currents_heap_dedup_capacity")).unwrap(),
            store_healthy: IntGauge::with_opts(opts("currents_heap_store_healthy")).unwrap(),
            events_delivered: IntCounterVec::new(
                opts("currents_heap_events_delivered_total"),
                &["route"],
            )
            .unwrap(),
            events_skipped: IntCounterVec::new(
                opts("currents_heap_events_skipped_total"),
                &["route", "reason"],
            )
            .unwrap(),
            events_dead_lettered: IntCounterVec::new(
                opts("currents_heap_events_dead_lettered_total"),
                &["route", "reason"],
            )
            .unwrap(),
            dead_letter_events: IntGaugeVec::new(
                opts("currents_heap_dead_letter_events"),
                &["reason"],
            )
            .unwrap(),
            heap_requests: IntCounterVec::new(
                opts("currents_heap_heap_requests_total"),
                &["route", "endpoint", "status_class"],
            )
            .unwrap(),
            heap_request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "currents_heap_heap_request_duration_seconds",
                    help("currents_heap_heap_request_duration_seconds"),
                )
                .buckets(vec![
                    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ]),
                &["route", "endpoint"],
            )
            .unwrap(),
            delivery_retries: IntCounterVec::new(
                opts("currents_heap_delivery_retries_total"),
                &["route", "reason"],
            )
            .unwrap(),
            delivery_paused: IntGaugeVec::new(opts("currents_heap_delivery_paused"), &["route"])
                .unwrap(),
            delivery_window_bytes: IntGaugeVec::new(
                opts("currents_heap_delivery_window_bytes"),
                &["route"],
            )
            .unwrap(),
            rate_limit_waits: IntCounterVec::new(
                opts("currents_heap_rate_limit_waits_total"),
                &["route", "budget"],
            )
            .unwrap(),
            rate_limit_wait_seconds: CounterVec::new(
                opts("currents_heap_rate_limit_wait_seconds_total"),
                &["route", "budget"],
            )
            .unwrap(),
            budget_per_minute: IntGaugeVec::new(
                opts("currents_heap_heap_budget_events_per_minute"),
                &["route", "budget"],
            )
            .unwrap(),
            connections_open: IntGauge::with_opts(opts("currents_heap_connections_open")).unwrap(),
            connections_max: IntGauge::with_opts(opts("currents_heap_connections_max")).unwrap(),
            connections_closed: IntCounterVec::new(
                opts("currents_heap_connections_closed_total"),
                &["reason"],
            )
            .unwrap(),
            config_reloads: IntCounterVec::new(
                opts("currents_heap_config_reloads_total"),
                &["outcome"],
            )
            .unwrap(),
            tls_reloads: IntCounterVec::new(opts("currents_heap_tls_reloads_total"), &["outcome"])
                .unwrap(),
            ingest_buffer_bytes: IntGauge::with_opts(opts("currents_heap_ingest_buffer_bytes"))
                .unwrap(),
            ingest_buffer_capacity: IntGauge::with_opts(opts(
                "currents_heap_ingest_buffer_capacity_bytes",
            ))
            .unwrap(),
            properties_dropped: PROPERTIES_DROPPED.clone(),
            registry,
        };
        let build_info = IntGauge::with_opts(
            opts("currents_heap_build_info").const_label("version", env!("CARGO_PKG_VERSION")),
        )
        .unwrap();
        build_info.set(1);

        let r = &m.registry;
        r.register(Box::new(build_info)).unwrap();
        r.register(Box::new(m.ingest_requests.clone())).unwrap();
        r.register(Box::new(m.ingest_duration.clone())).unwrap();
        r.register(Box::new(m.events_received.clone())).unwrap();
        r.register(Box::new(m.events_accepted.clone())).unwrap();
        r.register(Box::new(m.events_duplicate.clone())).unwrap();
        r.register(Box::new(m.events_rejected.clone())).unwrap();
        r.register(Box::new(m.queue_events.clone())).unwrap();
        r.register(Box::new(m.queue_bytes.clone())).unwrap();
        r.register(Box::new(m.queue_max_bytes.clone())).unwrap();
        r.register(Box::new(m.queue_oldest_age.clone())).unwrap();
        r.register(Box::new(m.queue_drain_estimate.clone()))
            .unwrap();
        r.register(Box::new(m.dedup_ids.clone())).unwrap();
        r.register(Box::new(m.dedup_capacity.clone())).unwrap();
        r.register(Box::new(m.store_healthy.clone())).unwrap();
        r.register(Box::new(m.events_delivered.clone())).unwrap();
        r.register(Box::new(m.events_skipped.clone())).unwrap();
        r.register(Box::new(m.events_dead_lettered.clone()))
            .unwrap();
        r.register(Box::new(m.dead_letter_events.clone())).unwrap();
        r.register(Box::new(m.heap_requests.clone())).unwrap();
        r.register(Box::new(m.heap_request_duration.clone()))
            .unwrap();
        r.register(Box::new(m.delivery_retries.clone())).unwrap();
        r.register(Box::new(m.delivery_paused.clone())).unwrap();
        r.register(Box::new(m.delivery_window_bytes.clone()))
            .unwrap();
        r.register(Box::new(m.rate_limit_waits.clone())).unwrap();
        r.register(Box::new(m.rate_limit_wait_seconds.clone()))
            .unwrap();
        r.register(Box::new(m.budget_per_minute.clone())).unwrap();
        r.register(Box::new(m.connections_open.clone())).unwrap();
        r.register(Box::new(m.connections_max.clone())).unwrap();
        r.register(Box::new(m.connections_closed.clone())).unwrap();
        r.register(Box::new(m.tls_reloads.clone())).unwrap();
        r.register(Box::new(m.config_reloads.clone())).unwrap();
        for outcome in CONFIG_RELOAD_OUTCOMES {
            m.config_reloads.with_label_values(&[*outcome]);
        }
        for outcome in TLS_RELOAD_OUTCOMES {
            m.tls_reloads.with_label_values(&[*outcome]);
        }
        r.register(Box::new(m.ingest_buffer_bytes.clone())).unwrap();
        r.register(Box::new(m.ingest_buffer_capacity.clone()))
            .unwrap();
        for reason in CONNECTION_CLOSE_REASONS {
            m.connections_closed.with_label_values(&[*reason]);
        }
        r.register(Box::new(m.properties_dropped.clone())).unwrap();

        for o in OUTCOMES {
            m.ingest_requests.with_label_values(&[*o]);
        }
        for s in STATUSES {
            m.ingest_duration.with_label_values(&[*s]);
        }
        for route in routes.iter().copied().chain([UNROUTABLE]) {
            m.init_ingest_route(route);
        }
        for r in REJECT_REASONS {
            m.events_rejected.with_label_values(&[*r]);
        }
        for r in DEAD_LETTER_REASONS {
            m.dead_letter_events.with_label_values(&[*r]);
        }
        m.events_dead_lettered
            .with_label_values(&[UNROUTABLE, UNROUTABLE]);
        for route in routes {
            m.init_route(route);
        }
        m
    }

    /// Creates the ingest series of `route` at 0 (at start-up, and for a route a reload adds).
    pub fn init_ingest_route(&self, route: &str) {
        for t in KNOWN_EVENT_TYPES.iter().chain(&["other"]) {
            self.events_accepted.with_label_values(&[*t, route]);
        }
    }

    /// Creates every delivery series of `route` at 0 (at start-up, and for a route a reload
    /// adds).
    pub fn init_route(&self, route: &str) {
        let m = self;
        m.events_delivered.with_label_values(&[route]);
        m.delivery_paused.with_label_values(&[route]);
        m.delivery_window_bytes.with_label_values(&[route]);
        for r in crate::transform::SKIP_REASONS {
            m.events_skipped.with_label_values(&[route, *r]);
        }
        for r in DEAD_LETTER_REASONS {
            m.events_dead_lettered.with_label_values(&[route, *r]);
        }
        for e in [
            crate::heap::model::TRACK_PATH,
            crate::heap::model::USER_PROPERTIES_PATH,
        ] {
            m.heap_request_duration.with_label_values(&[route, e]);
            for c in crate::heap::retry::STATUS_CLASSES {
                m.heap_requests.with_label_values(&[route, e, *c]);
            }
        }
        for r in crate::heap::retry::RETRY_REASONS {
            m.delivery_retries.with_label_values(&[route, *r]);
        }
        for b in ["app", "identity"] {
            m.rate_limit_waits.with_label_values(&[route, b]);
            m.rate_limit_wait_seconds.with_label_values(&[route, b]);
            m.budget_per_minute.with_label_values(&[route, b]);
        }
    }

    /// Counts a dead letter; an unexpected reason is counted as `other` (bounded labels).
    pub fn dead_letter_inc(&self, route: &str, reason: &str) {
        let label = DEAD_LETTER_REASONS
            .iter()
            .find(|r| **r == reason)
            .copied()
            .unwrap_or("other");
        self.events_dead_lettered
            .with_label_values(&[route, label])
            .inc();
    }

    /// Records one finished request.
    pub fn observe_request(&self, outcome: &'static str, status: u16, seconds: f64) {
        debug_assert!(OUTCOMES.contains(&outcome), "{outcome} is not in OUTCOMES");
        self.ingest_requests.with_label_values(&[outcome]).inc();
        let status = STATUSES
            .iter()
            .find(|s| s.parse::<u16>().ok() == Some(status))
            .copied()
            .unwrap_or("503");
        self.ingest_duration
            .with_label_values(&[status])
            .observe(seconds);
    }

    pub fn reject_events(&self, reason: &'static str, n: usize) {
        debug_assert!(
            REJECT_REASONS.contains(&reason),
            "{reason} is not in REJECT_REASONS"
        );
        self.events_rejected
            .with_label_values(&[reason])
            .inc_by(n as u64);
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(32 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_catalogue_entry_is_exported_at_start() {
        let m = Metrics::new();
        let text = m.render();
        for (name, kind, ..) in CATALOGUE {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}")),
                "{name} missing from:\n{text}"
            );
        }
    }

    #[test]
    fn everything_exported_is_in_the_catalogue() {
        let text = Metrics::new().render();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split_whitespace().nth(2).unwrap();
            assert!(
                CATALOGUE.iter().any(|(n, ..)| *n == name),
                "{name} is not in CATALOGUE"
            );
        }
    }

    #[test]
    fn unknown_event_types_never_become_labels() {
        let m = Metrics::new();
        let text = m.render();
        let series = text
            .lines()
            .filter(|l| l.starts_with("currents_heap_events_accepted_total{"))
            .count();
        // Known types and `other`, for the default route and `unroutable`.
        assert_eq!(series, (KNOWN_EVENT_TYPES.len() + 1) * 2);
    }
}
