//! The metric catalogue: every metric the binary exports, its labels, and the endpoint text.
//!
//! Names and label sets are fixed in [`CATALOGUE`] and nowhere else, so `deploy/` (dashboards,
//! alerts) and the README can be checked against one list; every collector is built from its
//! catalogue entry. Label values come from closed sets (outcomes, reasons, status codes, the
//! known event-type catalogue) and every such series is created at 0 on start-up, so dashboards
//! and alerts see it before the first event. No id, identity or free text ever becomes a label
//! value.
//!
//! [`Metrics`] holds one component per part of the forwarder ([`IngestMetrics`],
//! [`QueueMetrics`], [`DeliveryMetrics`], [`ConnectionMetrics`], [`ReloadMetrics`],
//! [`DeletionMetrics`]), each
//! registered by a function that returns a `Result`. Where an event is both logged and counted,
//! the component has one method that does both.

mod catalogue;
mod connections;
mod deletions;
mod delivery;
mod ingest;
mod mapping;
mod queue;
mod reloads;

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{
    CounterVec, Encoder, Error, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub use catalogue::{
    CATALOGUE, CONFIG_RELOAD_OUTCOMES, CONNECTION_CLOSE_REASONS, DEAD_LETTER_REASONS,
    DELETION_OPEN_STATUSES, DELETION_OUTCOMES, OUTCOMES, REJECT_REASONS, STATUSES,
    TLS_RELOAD_OUTCOMES, UNROUTABLE,
};
pub use connections::ConnectionMetrics;
pub use deletions::DeletionMetrics;
pub use delivery::{DeliveryMetrics, LaneMetrics, Retried};
pub use ingest::IngestMetrics;
pub use mapping::count_dropped_value;
pub use queue::QueueMetrics;
pub use reloads::{LaneNames, ReloadMetrics};

/// All collectors, registered in one private registry (tests run several apps per process).
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub ingest: IngestMetrics,
    pub queue: QueueMetrics,
    pub delivery: DeliveryMetrics,
    pub connections: ConnectionMetrics,
    pub reloads: ReloadMetrics,
    pub deletions: DeletionMetrics,
}

impl Metrics {
    /// Metrics of a forwarder with only the default route.
    pub fn new() -> Result<Self, Error> {
        Self::with_routes(&[crate::config::DEFAULT_ROUTE])
    }

    /// Metrics whose `route` label takes the values `routes` (and `unroutable` for ingest);
    /// every series with a known label value is created at 0.
    pub fn with_routes(routes: &[&str]) -> Result<Self, Error> {
        let registry = Registry::new();
        build_info(&registry)?;
        mapping::register(&registry)?;
        let delivery = DeliveryMetrics::register(&registry)?;
        let m = Metrics {
            ingest: IngestMetrics::register(&registry, delivery.unroutable())?,
            queue: QueueMetrics::register(&registry)?,
            delivery,
            connections: ConnectionMetrics::register(&registry)?,
            reloads: ReloadMetrics::register(&registry)?,
            deletions: DeletionMetrics::register(&registry)?,
            registry,
        };
        for route in routes.iter().copied().chain([UNROUTABLE]) {
            m.init_ingest_route(route);
        }
        for route in routes {
            m.init_route(route);
        }
        Ok(m)
    }

    /// Creates the ingest series of `route` at 0 (at start-up, and for a route a reload adds).
    pub fn init_ingest_route(&self, route: &str) {
        self.ingest.init_route(route);
    }

    /// Creates every delivery and deletion series of `route` at 0 (at start-up, and for a
    /// route a reload adds).
    pub fn init_route(&self, route: &str) {
        self.delivery.init_route(route);
        self.deletions.init_route(route);
    }

    /// The Prometheus text exposition of every registered metric (empty, after an error
    /// line in the log, if it cannot be encoded).
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(32 * 1024);
        let encoded = TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .and_then(|()| String::from_utf8(buf).map_err(|e| Error::Msg(e.to_string())));
        encoded.unwrap_or_else(|e| {
            tracing::error!(message = "Cannot encode the metrics.", error = %e);
            String::new()
        })
    }
}

/// `currents_heap_build_info`: always 1, the version as a constant label.
fn build_info(registry: &Registry) -> Result<(), Error> {
    let name = "currents_heap_build_info";
    let entry = catalogue::entry(name)?;
    let opts = Opts::new(name, entry.help).const_label("version", env!("CARGO_PKG_VERSION"));
    register(registry, IntGauge::with_opts(opts)?)?.set(1);
    Ok(())
}

/// Registers `collector` in `registry` and hands it back.
fn register<C: Collector + Clone + 'static>(registry: &Registry, collector: C) -> Result<C, Error> {
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}

/// The options and label names of catalogue metric `name`, checked to be of type `kind` and
/// labelled (`labelled`) or not.
fn described(name: &str, kind: &str, labelled: bool) -> Result<(Opts, Vec<&'static str>), Error> {
    let entry = catalogue::entry(name)?;
    let labelled_if = |yes: bool| if yes { "labelled " } else { "" };
    let found = format!("{}{}", labelled_if(!entry.labels.is_empty()), entry.kind);
    let wanted = format!("{}{kind}", labelled_if(labelled));
    if found != wanted {
        return Err(Error::Msg(format!(
            "{name} is a {found} in the catalogue, not a {wanted}"
        )));
    }
    Ok((Opts::new(name, entry.help), entry.labels))
}

/// Builds (with `new`, from its catalogue options and labels) and registers metric `name` of
/// the catalogue, checked to be of type `kind` and labelled or not.
fn build<C: Collector + Clone + 'static>(
    registry: &Registry,
    name: &str,
    kind: &str,
    labelled: bool,
    new: impl FnOnce(Opts, &[&str]) -> Result<C, Error>,
) -> Result<C, Error> {
    let (opts, labels) = described(name, kind, labelled)?;
    register(registry, new(opts, &labels)?)
}

fn counter(registry: &Registry, name: &str) -> Result<IntCounter, Error> {
    build(registry, name, "counter", false, |o, _| {
        IntCounter::with_opts(o)
    })
}

fn gauge(registry: &Registry, name: &str) -> Result<IntGauge, Error> {
    build(registry, name, "gauge", false, |o, _| {
        IntGauge::with_opts(o)
    })
}

fn float_gauge(registry: &Registry, name: &str) -> Result<Gauge, Error> {
    build(registry, name, "gauge", false, |o, _| Gauge::with_opts(o))
}

fn counter_vec(registry: &Registry, name: &str) -> Result<IntCounterVec, Error> {
    build(registry, name, "counter", true, IntCounterVec::new)
}

fn float_counter_vec(registry: &Registry, name: &str) -> Result<CounterVec, Error> {
    build(registry, name, "counter", true, CounterVec::new)
}

fn gauge_vec(registry: &Registry, name: &str) -> Result<IntGaugeVec, Error> {
    build(registry, name, "gauge", true, IntGaugeVec::new)
}

fn histogram_vec(registry: &Registry, name: &str, buckets: &[f64]) -> Result<HistogramVec, Error> {
    build(registry, name, "histogram", true, |opts, labels| {
        HistogramVec::new(HistogramOpts::from(opts).buckets(buckets.to_vec()), labels)
    })
}

/// Creates the series of each of `values` (of a one-label vec) at 0, and hands the vec back.
fn zeroed<T: MetricVecBuilder>(vec: MetricVec<T>, values: &[&str]) -> MetricVec<T> {
    for v in values {
        vec.with_label_values(&[*v]);
    }
    vec
}

/// A count or size as a gauge value (saturating at `i64::MAX`).
fn gauge_value(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::currents::catalogue::KNOWN_EVENT_TYPES;

    #[test]
    fn every_catalogue_entry_is_exported_at_start() {
        let m = Metrics::new().unwrap();
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
        let text = Metrics::new().unwrap().render();
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
        let m = Metrics::new().unwrap();
        let text = m.render();
        let series = text
            .lines()
            .filter(|l| l.starts_with("currents_heap_events_accepted_total{"))
            .count();
        // Known types and `other`, for the default route and `unroutable`.
        assert_eq!(series, (KNOWN_EVENT_TYPES.len() + 1) * 2);
    }

    #[test]
    fn a_metric_outside_the_catalogue_or_unlike_its_entry_is_an_error() {
        let r = Registry::new();
        let err = counter(&r, "currents_heap_no_such_total").unwrap_err();
        assert!(
            err.to_string().contains("not in the metric catalogue"),
            "{err}"
        );
        let err = gauge(&r, "currents_heap_events_received_total").unwrap_err();
        assert!(
            err.to_string()
                .contains("is a counter in the catalogue, not a gauge"),
            "{err}"
        );
        assert!(counter_vec(&r, "currents_heap_events_received_total").is_err());
        assert!(counter(&r, "currents_heap_events_rejected_total").is_err());
        assert!(counter(&r, "currents_heap_events_received_total").is_ok());
        assert!(
            counter(&r, "currents_heap_events_received_total").is_err(),
            "a second registration of one name is refused"
        );
    }
}
