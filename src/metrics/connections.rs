//! Client connections on `--listen`: open, the cap, and why the server closed or refused them.

use prometheus::{Error, IntCounterVec, IntGauge, Registry};

use super::{CONNECTION_CLOSE_REASONS, counter_vec, gauge, gauge_value, zeroed};

/// The log target of the connection events logged here (where they were logged before).
const TARGET: &str = "currents_heap::server";

#[derive(Debug, Clone)]
pub struct ConnectionMetrics {
    open: IntGauge,
    max: IntGauge,
    closed: IntCounterVec,
}

impl ConnectionMetrics {
    /// Registers the connection collectors, every close reason at 0.
    pub fn register(registry: &Registry) -> Result<Self, Error> {
        let closed = counter_vec(registry, "currents_heap_connections_closed_total")?;
        Ok(ConnectionMetrics {
            open: gauge(registry, "currents_heap_connections_open")?,
            max: gauge(registry, "currents_heap_connections_max")?,
            closed: zeroed(closed, CONNECTION_CLOSE_REASONS),
        })
    }

    /// The connection cap in force.
    pub fn set_max(&self, connections: usize) {
        self.max.set(gauge_value(connections));
    }

    /// Connections open now.
    pub fn set_open(&self, connections: usize) {
        self.open.set(gauge_value(connections));
    }

    /// The server closed or refused a connection, for `reason` (one of
    /// [`CONNECTION_CLOSE_REASONS`]).
    pub fn closed(&self, reason: &str) {
        self.closed.with_label_values(&[reason]).inc();
    }

    /// A served connection's watchdog closed it (idle or header timeout).
    pub fn timed_out(&self, reason: &str) {
        self.closed(reason);
        tracing::debug!(target: TARGET, message = "Connection closed.", reason);
    }

    /// A TLS handshake failed; the connection is closed.
    pub fn handshake_failed(&self, error: &dyn std::fmt::Display) {
        self.closed("tls_handshake_failed");
        tracing::debug!(target: TARGET, message = "TLS handshake failed.", error = %error);
    }

    /// Connections open now (for tests and diagnostics).
    pub fn open_now(&self) -> i64 {
        self.open.get()
    }

    /// Connections closed so far for `reason`.
    pub fn closed_count(&self, reason: &str) -> u64 {
        self.closed.with_label_values(&[reason]).get()
    }
}
