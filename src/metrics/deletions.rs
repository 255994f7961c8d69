//! Metrics of user deletions (README "Deletions", label `route`): deletions received, events
//! purged locally, deletions submitted to Heap, completed, failed or left `unconfigured`, and
//! the ledger's open entries, pending and overdue.
//!
//! **Routes outside the configuration.** The ledger may hold entries of a route that is no
//! longer configured (removed from the file, then a restart). Their route name never becomes a
//! label value (label sets stay bounded by the configuration): they are counted under the
//! reserved route label `unroutable` ([`UNROUTABLE`], which no `[[route]]` may be named), so an
//! open deletion of a removed route still shows in `deletions_pending` and still fires the
//! overdue alert. A route is known from [`DeletionMetrics::init_route`] on (start-up, or the
//! reload that adds it) until the process ends.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use prometheus::{Error, IntCounterVec, IntGaugeVec, Registry};

use super::{DELETION_OPEN_STATUSES, DELETION_OUTCOMES, UNROUTABLE, counter_vec, gauge_value};

/// The log target of the deletion events logged here: the submitter's answer handling.
const TARGET: &str = "currents_heap::deletions";

/// Longest part of Heap's answer logged with a failed deletion.
const MAX_MESSAGE_CHARS: usize = 1024;

/// The open ledger entries of one route: per open status (in [`DELETION_OPEN_STATUSES`]
/// order), and how many of them are overdue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Ledger {
    open: [u64; 4],
    overdue: u64,
}

impl Ledger {
    /// From the ledger's `(status, count)` rows of a route; closed and unknown statuses are
    /// left out.
    fn from_rows<S: AsRef<str>>(rows: &[(S, u64)], overdue: u64) -> Self {
        let mut ledger = Ledger {
            overdue,
            ..Ledger::default()
        };
        for (status, n) in rows {
            if let Some(i) = DELETION_OPEN_STATUSES
                .iter()
                .position(|s| *s == status.as_ref())
            {
                ledger.open[i] = ledger.open[i].saturating_add(*n);
            }
        }
        ledger
    }

    fn add(mut self, other: &Ledger) -> Self {
        for (a, b) in self.open.iter_mut().zip(other.open) {
            *a = a.saturating_add(b);
        }
        self.overdue = self.overdue.saturating_add(other.overdue);
        self
    }

    fn pending(&self) -> u64 {
        self.open.iter().fold(0, |a, n| a.saturating_add(*n))
    }
}

#[derive(Debug, Default)]
struct Routes {
    /// Routes whose series exist (configured at start-up or added by a reload).
    known: RwLock<BTreeSet<String>>,
    /// The open entries of each route outside the configuration, summed under `unroutable`.
    unknown: Mutex<BTreeMap<String, Ledger>>,
}

#[derive(Debug, Clone)]
pub struct DeletionMetrics {
    total: IntCounterVec,
    pending: IntGaugeVec,
    open: IntGaugeVec,
    overdue: IntGaugeVec,
    routes: Arc<Routes>,
}

impl DeletionMetrics {
    /// Registers the deletion collectors; the series of `unroutable` (routes outside the
    /// configuration) at 0. The series of each configured route are created by
    /// [`Self::init_route`].
    pub fn register(registry: &Registry) -> Result<Self, Error> {
        let m = DeletionMetrics {
            total: counter_vec(registry, "currents_heap_deletions_total")?,
            pending: super::gauge_vec(registry, "currents_heap_deletions_pending")?,
            open: super::gauge_vec(registry, "currents_heap_deletions_open")?,
            overdue: super::gauge_vec(registry, "currents_heap_deletions_overdue")?,
            routes: Arc::default(),
        };
        m.zero(UNROUTABLE);
        Ok(m)
    }

    /// Creates every deletion series of `route` at 0 (at start-up, and for a route a reload
    /// adds); from now on `route` is its own label value.
    pub fn init_route(&self, route: &str) {
        self.zero(route);
        self.routes
            .known
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(route.to_owned());
    }

    fn zero(&self, route: &str) {
        for o in DELETION_OUTCOMES {
            self.total.with_label_values(&[route, *o]);
        }
        for s in DELETION_OPEN_STATUSES {
            self.open.with_label_values(&[route, *s]);
        }
        self.pending.with_label_values(&[route]);
        self.overdue.with_label_values(&[route]);
    }

    fn is_known(&self, route: &str) -> bool {
        self.routes
            .known
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(route)
    }

    /// The label value of `route`: itself when configured, else `unroutable`.
    fn label<'a>(&self, route: &'a str) -> &'a str {
        if self.is_known(route) {
            route
        } else {
            UNROUTABLE
        }
    }

    fn count(&self, route: &str, outcome: &str, n: usize) {
        debug_assert!(DELETION_OUTCOMES.contains(&outcome), "{outcome}");
        self.total
            .with_label_values(&[self.label(route), outcome])
            .inc_by(n as u64);
    }

    /// A `users.UserDeleteRequest` was accepted for `route` (ledger entry written).
    pub fn received(&self, route: &str) {
        self.count(route, "received", 1);
    }

    /// `events` of the deleted user were removed from the queue, the parked events and the
    /// dead-letter store.
    pub fn purged_events(&self, route: &str, events: usize) {
        self.count(route, "purged_events", events);
    }

    /// A deletion of a Braze user with no known Heap identity: nothing to send to Heap.
    pub fn unknown_user(&self, route: &str) {
        self.count(route, "unknown_user", 1);
    }

    /// `deletions` were submitted to Heap (Heap answered with a deletion request id).
    pub fn submitted(&self, route: &str, deletions: usize) {
        self.count(route, "submitted", deletions);
    }

    /// Heap reported `deletions` complete.
    pub fn completed(&self, route: &str, deletions: usize) {
        self.count(route, "completed", deletions);
    }

    /// Heap refused `deletions` (`failed` in the ledger): counted, and logged with Heap's
    /// `message` (its answer; never a key or a user id).
    pub fn failed(&self, route: &str, deletions: usize, message: &str) {
        self.count(route, "failed", deletions);
        let message: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
        tracing::warn!(
            target: TARGET,
            message = "Heap refused user deletions; they stay failed in the ledger until `currents-heap deletions retry`.",
            route,
            deletions,
            heap_message = %message,
        );
    }

    /// A request to Heap's deletion API carrying `deletions` failed for a transient reason
    /// (no answer, 408, 429, 5xx); they are sent again after the backoff.
    pub fn retried(&self, route: &str, deletions: usize) {
        self.count(route, "retried", deletions);
    }

    /// `deletions` were recorded `unconfigured`: the route has no `heap_api_key`.
    pub fn unconfigured(&self, route: &str, deletions: usize) {
        self.count(route, "unconfigured", deletions);
    }

    /// The ledger's open entries of `route`: `counts` are its `(status, count)` rows (closed
    /// and unknown statuses are ignored; an open status without a row is 0), `overdue` its
    /// open entries received longer ago than `deletion_overdue_after`. Sets
    /// `deletions_pending` (the sum of the open counts), each `deletions_open` status and
    /// `deletions_overdue`.
    ///
    /// A route outside the configuration is summed with the others under `unroutable`; call
    /// this with no rows once such a route has none, or use [`Self::set_ledger_all`], which
    /// takes the whole ledger at once.
    pub fn set_ledger<S: AsRef<str>>(&self, route: &str, counts: &[(S, u64)], overdue: u64) {
        let ledger = Ledger::from_rows(counts, overdue);
        if self.is_known(route) {
            self.publish(route, &ledger);
            return;
        }
        let mut unknown = self
            .routes
            .unknown
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if ledger == Ledger::default() {
            unknown.remove(route);
        } else {
            unknown.insert(route.to_owned(), ledger);
        }
        let sum = unknown.values().fold(Ledger::default(), |a, l| a.add(l));
        self.publish(UNROUTABLE, &sum);
    }

    /// The whole ledger at once: `counts` are its `(route, status, count)` rows and `overdue`
    /// its `(route, overdue count)` rows. Every configured route is set (0 without rows), and
    /// the routes outside the configuration replace what `unroutable` held.
    pub fn set_ledger_all<R: AsRef<str>, S: AsRef<str>>(
        &self,
        counts: &[(R, S, u64)],
        overdue: &[(R, u64)],
    ) {
        let mut by_route: BTreeMap<&str, Ledger> = BTreeMap::new();
        for (route, status, n) in counts {
            let l = by_route.entry(route.as_ref()).or_default();
            *l = l.add(&Ledger::from_rows(&[(status.as_ref(), *n)], 0));
        }
        for (route, n) in overdue {
            let l = by_route.entry(route.as_ref()).or_default();
            l.overdue = l.overdue.saturating_add(*n);
        }
        let known = self
            .routes
            .known
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for route in &known {
            let ledger = by_route.remove(route.as_str()).unwrap_or_default();
            self.publish(route, &ledger);
        }
        let mut unknown = self
            .routes
            .unknown
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        unknown.clear();
        for (route, ledger) in by_route {
            if ledger != Ledger::default() {
                unknown.insert(route.to_owned(), ledger);
            }
        }
        let sum = unknown.values().fold(Ledger::default(), |a, l| a.add(l));
        self.publish(UNROUTABLE, &sum);
    }

    fn publish(&self, label: &str, ledger: &Ledger) {
        for (status, n) in DELETION_OPEN_STATUSES.iter().zip(ledger.open) {
            self.open
                .with_label_values(&[label, *status])
                .set(gauge_value(n));
        }
        self.pending
            .with_label_values(&[label])
            .set(gauge_value(ledger.pending()));
        self.overdue
            .with_label_values(&[label])
            .set(gauge_value(ledger.overdue));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn has(text: &str, line: &str) {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }

    #[test]
    fn every_series_of_every_route_is_exported_at_zero() {
        let m = Metrics::with_routes(&["default", "brand-a"]).unwrap();
        let text = m.render();
        for route in ["default", "brand-a", UNROUTABLE] {
            for o in DELETION_OUTCOMES {
                has(
                    &text,
                    &format!(r#"currents_heap_deletions_total{{outcome="{o}",route="{route}"}} 0"#),
                );
            }
            for s in DELETION_OPEN_STATUSES {
                has(
                    &text,
                    &format!(r#"currents_heap_deletions_open{{route="{route}",status="{s}"}} 0"#),
                );
            }
            has(
                &text,
                &format!(r#"currents_heap_deletions_pending{{route="{route}"}} 0"#),
            );
            has(
                &text,
                &format!(r#"currents_heap_deletions_overdue{{route="{route}"}} 0"#),
            );
        }
        // A route a reload adds gets its series too.
        m.init_route("brand-b");
        has(
            &m.render(),
            r#"currents_heap_deletions_pending{route="brand-b"} 0"#,
        );
    }

    #[test]
    fn counters_count_per_route() {
        let m = Metrics::with_routes(&["brand-a"]).unwrap();
        let d = &m.deletions;
        d.received("brand-a");
        d.received("brand-a");
        d.purged_events("brand-a", 17);
        d.unknown_user("brand-a");
        d.submitted("brand-a", 2);
        d.completed("brand-a", 1);
        d.failed("brand-a", 1, "401 Unauthorized");
        d.unconfigured("brand-a", 3);
        let text = m.render();
        for (outcome, n) in [
            ("received", 2),
            ("purged_events", 17),
            ("unknown_user", 1),
            ("submitted", 2),
            ("completed", 1),
            ("failed", 1),
            ("unconfigured", 3),
        ] {
            has(
                &text,
                &format!(
                    r#"currents_heap_deletions_total{{outcome="{outcome}",route="brand-a"}} {n}"#
                ),
            );
        }
    }

    #[test]
    fn pending_is_the_sum_of_the_open_statuses() {
        let m = Metrics::with_routes(&["brand-a"]).unwrap();
        m.deletions.set_ledger(
            "brand-a",
            &[
                ("pending_submit", 2),
                ("submitted", 3),
                ("failed", 1),
                ("unconfigured", 4),
                ("complete", 100),
                ("unknown_user", 50),
                ("no_such_status", 7),
            ],
            5,
        );
        let text = m.render();
        has(
            &text,
            r#"currents_heap_deletions_pending{route="brand-a"} 10"#,
        );
        has(
            &text,
            r#"currents_heap_deletions_overdue{route="brand-a"} 5"#,
        );
        for (s, n) in [
            ("pending_submit", 2),
            ("submitted", 3),
            ("failed", 1),
            ("unconfigured", 4),
        ] {
            has(
                &text,
                &format!(r#"currents_heap_deletions_open{{route="brand-a",status="{s}"}} {n}"#),
            );
        }
        assert!(!text.contains("complete\""), "closed statuses are no label");
        assert!(!text.contains("no_such_status"));
        // A later refresh without rows sets everything back to 0.
        m.deletions.set_ledger::<&str>("brand-a", &[], 0);
        let text = m.render();
        has(
            &text,
            r#"currents_heap_deletions_pending{route="brand-a"} 0"#,
        );
        has(
            &text,
            r#"currents_heap_deletions_open{route="brand-a",status="failed"} 0"#,
        );
    }

    #[test]
    fn routes_outside_the_configuration_are_summed_under_unroutable() {
        let m = Metrics::with_routes(&["brand-a"]).unwrap();
        let d = &m.deletions;
        d.completed("removed-1", 2);
        d.set_ledger("removed-1", &[("failed", 2)], 1);
        d.set_ledger("removed-2", &[("failed", 3), ("submitted", 1)], 0);
        let text = m.render();
        assert!(!text.contains("removed-"), "{text}");
        has(
            &text,
            r#"currents_heap_deletions_total{outcome="completed",route="unroutable"} 2"#,
        );
        has(
            &text,
            r#"currents_heap_deletions_open{route="unroutable",status="failed"} 5"#,
        );
        has(
            &text,
            r#"currents_heap_deletions_pending{route="unroutable"} 6"#,
        );
        has(
            &text,
            r#"currents_heap_deletions_overdue{route="unroutable"} 1"#,
        );
        d.set_ledger::<&str>("removed-2", &[], 0);
        has(
            &m.render(),
            r#"currents_heap_deletions_pending{route="unroutable"} 2"#,
        );

        // The whole ledger at once: absent routes go back to 0.
        d.set_ledger("brand-a", &[("submitted", 9)], 9);
        d.set_ledger_all(
            &[
                ("brand-a", "failed", 1),
                ("gone", "unconfigured", 4),
                ("gone", "complete", 8),
            ],
            &[("gone", 4)],
        );
        let text = m.render();
        has(
            &text,
            r#"currents_heap_deletions_pending{route="brand-a"} 1"#,
        );
        has(
            &text,
            r#"currents_heap_deletions_overdue{route="brand-a"} 0"#,
        );
        has(
            &text,
            r#"currents_heap_deletions_pending{route="unroutable"} 4"#,
        );
        has(
            &text,
            r#"currents_heap_deletions_overdue{route="unroutable"} 4"#,
        );
        assert!(!text.contains("gone"), "{text}");
    }
}
