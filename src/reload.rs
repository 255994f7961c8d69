//! Live reload: `SIGHUP` re-reads the configuration (file, with the flags and environment of
//! the start) and puts in force what can change without a restart: ingest tokens, routes,
//! mapping options, budgets and the other delivery settings.
//!
//! Why this order, and why it loses and doubles nothing:
//! 1. The new settings are loaded and validated first. An invalid file is refused with a log
//!    line and `currents_heap_config_reloads_total{outcome="refused"}`; the old configuration
//!    stays in force, untouched.
//! 2. Lanes change next ([`crate::lanes::LaneSet::apply`]): a changed lane finishes its request
//!    in flight and hands its budgets and pause to its successor; new app ids get a lane
//!    before any event is routed to them.
//! 3. Ingest's routing (tokens, router, the bells of the lanes) is swapped in one step. A
//!    request takes its routing snapshot when it starts, so each batch is routed wholly by the
//!    old or wholly by the new configuration, and none is refused because of the swap.
//! 4. Once no request routed by the old configuration is still in flight, queued events of app
//!    ids that no lane serves any more are dead-lettered `unroutable` — the start-up rule.
//!
//! Settings that shape the process itself (listen address, data directory, the NATS settings,
//! store limits, connection limits, TLS file paths, log format, dry run) and the deletion settings (API keys,
//! account ids, identity map retention, deletion pacing, polling and overdue time) take effect
//! at the next start; a reload that changes them says so in its log line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Settings, SettingsArgs};
use crate::ingest::{Auth, IngestState, Routing};
use crate::lanes::{LaneChanges, LaneSet, dead_letter_orphans};
use crate::routing::Router;

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the new configuration is invalid, the old one stays in force: {0}")]
    Invalid(#[from] ConfigError),
    #[error("this server was started without a configuration source to re-read")]
    NoSource,
}

type Reply = oneshot::Sender<Result<LaneChanges, ReloadError>>;

/// Asks the running server to reload (what `SIGHUP` does), and waits for the outcome.
#[derive(Clone, Debug)]
pub struct ReloadHandle(mpsc::Sender<Reply>);

impl ReloadHandle {
    pub async fn reload(&self) -> Result<LaneChanges, ReloadError> {
        let (tx, rx) = oneshot::channel();
        self.0.send(tx).await.map_err(|_| ReloadError::NoSource)?;
        rx.await.map_err(|_| ReloadError::NoSource)?
    }
}

pub fn channel() -> (ReloadHandle, mpsc::Receiver<Reply>) {
    let (tx, rx) = mpsc::channel(4);
    (ReloadHandle(tx), rx)
}

/// Ingest's routing for `settings` and its lanes.
pub fn routing_for(settings: &Settings, lanes: &LaneSet) -> Routing {
    let route_tokens: Vec<(Option<&str>, &[crate::config::Secret])> = settings
        .routes
        .iter()
        .filter(|r| !r.ingest_tokens.is_empty())
        .map(|r| (r.workspace.as_deref(), r.ingest_tokens.as_slice()))
        .collect();
    let auth = Auth::with_routes(&settings.ingest_tokens, &route_tokens);
    if auth.is_open() {
        tracing::warn!(
            message = "No ingest token configured: POST /currents accepts unauthenticated requests. Set --ingest-token / CURRENTS_HEAP_INGEST_TOKEN."
        );
    }
    let router = Router::from_settings(settings);
    if router.targets().next().is_none() {
        tracing::warn!(
            message = "No default route and no [[route]]: every event will be kept as an unroutable dead letter."
        );
    }
    Routing {
        auth,
        router,
        bells: lanes.bells(),
        drain_rate: lanes.drain_rate(),
    }
}

/// The settings a reload cannot change, by name, where `new` differs from `old`.
fn needs_restart(old: &Settings, new: &Settings) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |name, differs: bool| {
        if differs {
            changed.push(name);
        }
    };
    check("listen", old.listen != new.listen);
    check("data_dir", old.data_dir != new.data_dir);
    check(
        "max_queue_bytes",
        old.max_queue_bytes != new.max_queue_bytes,
    );
    check("max_body_bytes", old.max_body_bytes != new.max_body_bytes);
    check(
        "min_free_disk_bytes",
        old.min_free_disk_bytes != new.min_free_disk_bytes,
    );
    check("dedup_window", old.dedup_window != new.dedup_window);
    check("dedup_capacity", old.dedup_capacity != new.dedup_capacity);
    check("shutdown_grace", old.shutdown_grace != new.shutdown_grace);
    check("connection and TLS settings", old.edge != new.edge);
    check("log_format", old.log_format != new.log_format);
    check("dry_run", old.dry_run != new.dry_run);
    check("heap_timeout", old.heap_timeout != new.heap_timeout);
    // The queue: where it lives and how it is opened. Without nats_url the other three are
    // ignored, so they only count when both configurations use NATS.
    let (old_nats, new_nats) = (old.nats(), new.nats());
    check(
        "nats_url",
        old_nats.as_ref().map(|n| &n.urls) != new_nats.as_ref().map(|n| &n.urls),
    );
    if let (Some(o), Some(n)) = (&old_nats, &new_nats) {
        check("nats_stream", o.stream != n.stream);
        check("nats_replicas", o.replicas != n.replicas);
        check("nats_creds", o.creds != n.creds);
        check("nats_lease", o.lease != n.lease);
    }
    // Deletions: the store and the submitter take these at start.
    check(
        "identity_map_retention",
        old.identity_map_retention != new.identity_map_retention,
    );
    check(
        "deletion_request_interval",
        old.deletion_request_interval != new.deletion_request_interval,
    );
    check(
        "deletion_poll_interval",
        old.deletion_poll_interval != new.deletion_poll_interval,
    );
    check(
        "deletion_overdue_after",
        old.deletion_overdue_after != new.deletion_overdue_after,
    );
    let key = per_route_differs(old, new, |r| r.heap_api_key.cloned());
    let account = per_route_differs(old, new, |r| r.heap_account_app_id.cloned());
    check("heap_api_key", key);
    check("heap_account_app_id", account);
    // Routes added, removed or moved to another app id change where their deletions go too.
    check(
        "deletion accounts (routes' Heap accounts for deletions)",
        !key && !account && old.deletion_accounts() != new.deletion_accounts(),
    );
    changed
}

/// Whether `value` differs between `old` and `new` for a route both configure (the default
/// route included).
fn per_route_differs<T: PartialEq>(
    old: &Settings,
    new: &Settings,
    value: impl Fn(&crate::config::Route<'_>) -> T,
) -> bool {
    old.all_routes()
        .any(|o| new.route(o.name).is_some_and(|n| value(&o) != value(&n)))
}

/// The task that owns the lanes while the server runs: starts them, reloads on `SIGHUP` or a
/// [`ReloadHandle`] request, and gives them back when `stop` is cancelled.
#[derive(Debug)]
pub struct Controller {
    pub lanes: LaneSet,
    pub state: Arc<IngestState>,
    pub settings: Settings,
    /// Flags and environment of the start; `None`: nothing to re-read (reloads are refused).
    pub source: Option<SettingsArgs>,
    pub grace: Duration,
}

impl Controller {
    pub async fn run(
        mut self,
        mut requests: mpsc::Receiver<Reply>,
        stop: CancellationToken,
    ) -> LaneSet {
        self.lanes.start();
        let mut hangup = match &self.source {
            Some(_) => tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(|e| {
                    tracing::warn!(message = "Cannot listen for SIGHUP; live reload is off.", error = %e)
                })
                .ok(),
            None => None,
        };
        loop {
            let reply = tokio::select! {
                // Stopping wins over a reload that arrives at the same time.
                biased;
                _ = stop.cancelled() => return self.lanes,
                Some(reply) = requests.recv() => Some(reply),
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => None,
            };
            let outcome = self.reload().await;
            if let Some(reply) = reply {
                let _ = reply.send(outcome);
            }
        }
    }

    async fn reload(&mut self) -> Result<LaneChanges, ReloadError> {
        let metrics = self.state.metrics.clone();
        let result = self.try_reload().await;
        match &result {
            Ok(changes) => metrics.reloads.config_applied(crate::metrics::LaneNames {
                started: &changes.started,
                replaced: &changes.replaced,
                stopped: &changes.stopped,
                unchanged: &changes.unchanged,
            }),
            Err(e) => metrics.reloads.config_refused(e),
        }
        result
    }

    async fn try_reload(&mut self) -> Result<LaneChanges, ReloadError> {
        let args = self.source.as_ref().ok_or(ReloadError::NoSource)?;
        let new = Settings::load(args)?;
        new.validate_for_serve()?;
        if args.ingest_token.is_some() {
            tracing::warn!(
                message = "Ingest tokens come from --ingest-token / CURRENTS_HEAP_INGEST_TOKEN, which a reload does not re-read: to rotate them live, set ingest_token in the configuration file instead."
            );
        }
        let later = needs_restart(&self.settings, &new);
        if !later.is_empty() {
            tracing::warn!(
                message = "Some changed settings take effect only at the next start.",
                settings = ?later,
            );
        }
        let metrics = &self.state.metrics;
        for route in new.all_routes().map(|r| r.name) {
            metrics.init_route(route);
            metrics.init_ingest_route(route);
        }
        let changes = self.lanes.apply(&new, self.grace).await;
        let old = self.state.swap_routing(routing_for(&new, &self.lanes));
        let body_deadline = self.settings.edge.body_read_timeout;
        // From here on the new configuration is in force, whatever follows.
        self.settings = new;
        // Requests routed by the old configuration hold its snapshot until they finish; their
        // body deadline (plus the wait for memory and the append) bounds the wait.
        let deadline = Instant::now() + body_deadline + self.grace;
        while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if Arc::strong_count(&old) > 1 {
            tracing::warn!(
                message = "Requests routed by the old configuration were still in flight; events they queue for a removed app id become unroutable dead letters at the next start."
            );
        }
        drop(old);
        let served: Vec<&str> = self.lanes.app_ids().collect();
        if let Err(e) = dead_letter_orphans(&*self.state.queue, &served).await {
            tracing::warn!(
                message = "Cannot dead-letter the queued events of removed routes now; they stay queued and are dead-lettered at the next start.",
                error = %e,
            );
        }
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FileConfig;

    fn settings(text: &str) -> Settings {
        let file: FileConfig = toml::from_str(text).expect("valid toml");
        Settings::resolve(&SettingsArgs::default(), file).expect("valid settings")
    }

    const BASE: &str = "heap_app_id = 1\nheap_api_key = \"k1\"\n\
        [[route]]\nname = \"a\"\nworkspace = \"a\"\nheap_app_id = 2\n";

    #[test]
    fn deletion_settings_take_effect_at_the_next_start() {
        let old = settings(BASE);
        assert!(needs_restart(&old, &settings(BASE)).is_empty());
        for (change, named) in [
            (
                "identity_map_retention = \"30d\"\n",
                "identity_map_retention",
            ),
            (
                "deletion_request_interval = \"2s\"\n",
                "deletion_request_interval",
            ),
            (
                "deletion_poll_interval = \"1m\"\n",
                "deletion_poll_interval",
            ),
            (
                "deletion_overdue_after = \"3d\"\n",
                "deletion_overdue_after",
            ),
            ("heap_account_app_id = 9\n", "heap_account_app_id"),
        ] {
            let new = settings(&format!("{change}{BASE}"));
            assert_eq!(needs_restart(&old, &new), [named], "{change}");
        }
        // A key changed for the default route, or for one route only.
        let new = settings(&BASE.replace("\"k1\"", "\"k2\""));
        assert_eq!(needs_restart(&old, &new), ["heap_api_key"]);
        let new = settings(&format!("{BASE}heap_api_key = \"k3\"\n"));
        assert_eq!(needs_restart(&old, &new), ["heap_api_key"]);
        // A route added: its deletions have an account only after a restart.
        let new = settings(&format!(
            "{BASE}[[route]]\nname = \"b\"\nworkspace = \"b\"\nheap_app_id = 3\n"
        ));
        let named = needs_restart(&old, &new);
        assert_eq!(named.len(), 1, "{named:?}");
        assert!(named[0].starts_with("deletion accounts"), "{named:?}");
    }

    #[test]
    fn nats_settings_take_effect_at_the_next_start() {
        let old = settings(BASE);
        // Without nats_url the others are ignored: changing them changes nothing.
        let new = settings(&format!(
            "nats_stream = \"other\"\nnats_replicas = 1\n{BASE}"
        ));
        assert!(needs_restart(&old, &new).is_empty());
        let on = format!("nats_url = \"nats://a:4222\"\n{BASE}");
        assert_eq!(needs_restart(&old, &settings(&on)), ["nats_url"]);
        assert_eq!(needs_restart(&settings(&on), &old), ["nats_url"]);
        let old = settings(&on);
        assert!(needs_restart(&old, &settings(&on)).is_empty());
        let creds = tempfile::NamedTempFile::new().unwrap();
        let creds = format!("nats_creds = {:?}\n", creds.path().display().to_string());
        let new = settings(&on.replace("a:4222", "a:4222,b"));
        assert_eq!(needs_restart(&old, &new), ["nats_url"]);
        for (change, named) in [
            ("nats_stream = \"other\"\n", "nats_stream"),
            ("nats_replicas = 1\n", "nats_replicas"),
            (creds.as_str(), "nats_creds"),
        ] {
            let new = settings(&format!("{change}{on}"));
            assert_eq!(needs_restart(&old, &new), [named], "{change}");
        }
    }
}
