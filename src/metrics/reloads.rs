//! Configuration reloads (`SIGHUP`) and TLS certificate re-reads: each logged and counted by
//! outcome.

use std::fmt::Display;
use std::path::Path;

use prometheus::{Error, IntCounterVec, Registry};

use super::{CONFIG_RELOAD_OUTCOMES, TLS_RELOAD_OUTCOMES, counter_vec, zeroed};

/// The log targets of the events logged here (where they were logged before).
const CONFIG_TARGET: &str = "currents_heap::reload";
const TLS_TARGET: &str = "currents_heap::server::tls";

#[derive(Debug, Clone)]
pub struct ReloadMetrics {
    config: IntCounterVec,
    tls: IntCounterVec,
}

impl ReloadMetrics {
    /// Registers both counters, every outcome at 0.
    pub fn register(registry: &Registry) -> Result<Self, Error> {
        let config = counter_vec(registry, "currents_heap_config_reloads_total")?;
        let tls = counter_vec(registry, "currents_heap_tls_reloads_total")?;
        Ok(ReloadMetrics {
            config: zeroed(config, CONFIG_RELOAD_OUTCOMES),
            tls: zeroed(tls, TLS_RELOAD_OUTCOMES),
        })
    }

    /// A configuration reload was applied, changing the lanes as `changes` says.
    pub fn config_applied(&self, lanes: LaneNames<'_>) {
        tracing::info!(
            target: CONFIG_TARGET,
            message = "Configuration reloaded.",
            lanes_started = ?lanes.started,
            lanes_replaced = ?lanes.replaced,
            lanes_stopped = ?lanes.stopped,
            lanes_unchanged = ?lanes.unchanged,
        );
        self.config.with_label_values(&["applied"]).inc();
    }

    /// A configuration reload was refused; the old configuration stays in force.
    pub fn config_refused(&self, error: &dyn Display) {
        tracing::error!(target: CONFIG_TARGET, message = "Configuration not reloaded.", error = %error);
        self.config.with_label_values(&["refused"]).inc();
    }

    /// A different TLS certificate (from `cert`) is served from now on.
    pub fn tls_reloaded(&self, cert: &Path) {
        tracing::info!(
            target: TLS_TARGET,
            message = "TLS certificate reloaded.",
            cert = %cert.display(),
        );
        self.tls.with_label_values(&["reloaded"]).inc();
    }

    /// The TLS certificate and key could not be re-read; the previous pair stays in use.
    pub fn tls_failed(&self, error: &dyn Display) {
        tracing::error!(
            target: TLS_TARGET,
            message = "TLS certificate not reloaded; the previous one stays in use.",
            error = %error,
        );
        self.tls.with_label_values(&["failed"]).inc();
    }

    /// TLS re-reads so far with `outcome` (one of [`TLS_RELOAD_OUTCOMES`]).
    pub fn tls_reload_count(&self, outcome: &str) -> u64 {
        self.tls.with_label_values(&[outcome]).get()
    }
}

/// The lanes a reload started, replaced, stopped and left alone, by name (for the log line).
#[derive(Debug, Clone, Copy)]
pub struct LaneNames<'a> {
    pub started: &'a [String],
    pub replaced: &'a [String],
    pub stopped: &'a [String],
    pub unchanged: &'a [String],
}
