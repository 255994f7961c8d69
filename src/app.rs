//! Process wiring: [`App::build`] opens the queue and binds the listener;
//! [`App::run_until_stopped`] serves until the shutdown future resolves, then drains. While it
//! runs, a [`Controller`] owns the delivery lanes and applies configuration reloads
//! (`SIGHUP`, see [`crate::reload`]).
//!
//! Drain order (SIGTERM/SIGINT): new batches get 503 + `Retry-After` and `/readyz` turns 503
//! while the batches already in flight finish (up to `--shutdown-grace`); then the listener
//! closes, open connections are shut down gracefully, and the queue is closed (the SQLite
//! writer commits what is pending and checkpoints the WAL). Everything acknowledged is on disk
//! at every step.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Settings, SettingsArgs};
use crate::deletions::{DeletionConfig, Submitter};
use crate::delivery::Backoff;
use crate::heap::deletion::HeapDeletionClient;
use crate::ingest::IngestState;
use crate::lanes::{LaneSet, dead_letter_orphans};
use crate::leadership::Leadership;
use crate::metrics::Metrics;
use crate::queue::jetstream::{JetStreamConfig, JetStreamError, JetStreamQueue};
use crate::queue::sqlite::{SqliteQueue, StoreError, WriterConfig};
use crate::queue::{Queue, QueueError};
use crate::reload::{self, Controller, ReloadHandle, routing_for};
use crate::server::Server;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    JetStream(#[from] JetStreamError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::server::tls::TlsError),
    #[error("cannot register the metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

#[derive(Debug)]
pub struct App {
    server: Server,
    state: Arc<IngestState>,
    lanes: LaneSet,
    queue: Arc<dyn Queue>,
    settings: Settings,
    source: Option<SettingsArgs>,
    reload: ReloadHandle,
    reload_requests: mpsc::Receiver<
        tokio::sync::oneshot::Sender<Result<crate::lanes::LaneChanges, reload::ReloadError>>,
    >,
    grace: Duration,
}

impl App {
    pub async fn build(settings: &Settings) -> Result<App, AppError> {
        let (queue, leadership) = open_queue(settings).await?;
        let route_names: Vec<&str> = settings.all_routes().map(|r| r.name).collect();
        let metrics = Metrics::with_routes(&route_names)?;
        metrics.queue.set_max_bytes(settings.max_queue_bytes);
        metrics.queue.set_dedup_capacity(settings.dedup_capacity);
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| AppError::Bind {
                    addr: settings.listen,
                    source,
                })?;
        let lanes = LaneSet::build(settings, &queue, &metrics, leadership);
        let served: Vec<&str> = lanes.app_ids().collect();
        dead_letter_orphans(&*queue, &served).await?;
        let state = Arc::new(
            IngestState::new(
                routing_for(settings, &lanes),
                settings.max_body_bytes,
                &settings.edge,
                Arc::clone(&queue),
                metrics,
            )
            .with_deletion_overdue_after(settings.deletion_overdue_after),
        );
        let (reload, reload_requests) = reload::channel();
        Ok(App {
            server: Server::new(listener, &settings.edge, Arc::clone(&state))?,
            state,
            lanes,
            queue,
            settings: settings.clone(),
            source: None,
            reload,
            reload_requests,
            grace: settings.shutdown_grace,
        })
    }

    /// Lets `SIGHUP` (and [`App::reload_handle`]) re-read the configuration from `args` (the
    /// flags and environment of the start, and the file they name).
    pub fn reload_from(mut self, args: SettingsArgs) -> Self {
        self.source = Some(args);
        self
    }

    /// Asks the running app to reload, as `SIGHUP` does.
    pub fn reload_handle(&self) -> ReloadHandle {
        self.reload.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn state(&self) -> Arc<IngestState> {
        Arc::clone(&self.state)
    }

    /// Serves until `shutdown` resolves, then drains (see the module docs).
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) {
        let App {
            server,
            state,
            lanes,
            queue,
            settings,
            source,
            reload: _,
            reload_requests,
            grace,
        } = self;
        let stop_control = CancellationToken::new();
        let deletions = start_deletions(&settings, &queue, &state.metrics, &stop_control);
        let controller = tokio::spawn(
            Controller {
                lanes,
                state: Arc::clone(&state),
                settings,
                source,
                grace,
            }
            .run(reload_requests, stop_control.clone()),
        );
        tracing::info!(message = "Listening.", addr = %server.local_addr().map(|a| a.to_string()).unwrap_or_default());

        // Phase 1: serve until the signal.
        tokio::pin!(shutdown);
        tokio::select! {
            _ = server.accept_loop() => {}
            _ = &mut shutdown => {}
        }
        state.start_draining();
        tracing::info!(message = "Draining: new batches get 503 while in-flight ones finish.", grace = ?grace);

        // Phase 2: keep answering (503 for new batches) until the batches in flight are done.
        let in_flight_done = async {
            while state.batches_in_flight() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            _ = server.accept_loop() => {}
            _ = tokio::time::timeout(grace, in_flight_done) => {}
        }

        // Phase 3: close connections, then the store.
        if !server.close_connections(Duration::from_secs(2)).await {
            tracing::warn!(message = "Some connections did not close within 2s; dropping them.");
        }
        drop(server);
        state.buffer.close();

        // Phase 4: stop delivery (a request in flight finishes), then close the store.
        stop_control.cancel();
        let stopped = match controller.await {
            Ok(lanes) => lanes.stop(grace.max(Duration::from_secs(1))).await,
            Err(_) => false,
        };
        if !stopped {
            tracing::warn!(
                message = "Delivery did not stop within the grace period; undelivered events stay queued."
            );
        }
        for task in deletions {
            // A request in flight finishes; the ledger keeps the rest for the next start.
            if tokio::time::timeout(grace.max(Duration::from_secs(1)), task)
                .await
                .is_err()
            {
                tracing::warn!(
                    message = "A deletion submitter did not stop within the grace period."
                );
            }
        }
        if let Err(e) = queue.close().await {
            tracing::warn!(message = "Closing the queue failed.", error = %e);
        }
        tracing::info!(message = "Stopped.");
    }
}

/// Opens the queue the settings select: JetStream with `--nats-url` (its streams created or
/// brought to these settings, and the lanes held under leases), else the SQLite store in
/// `--data-dir` (one process holds every lane).
async fn open_queue(
    settings: &Settings,
) -> Result<(Arc<dyn Queue>, Option<Leadership>), AppError> {
    if let (Some(config), Some(nats)) = (jetstream_config(settings, true), settings.nats()) {
        let jetstream = JetStreamQueue::open(config).await?;
        let leases = jetstream.leases().await?;
        tracing::info!(message = "Lanes are held under leases.", holder = %leases.holder(), lease = ?nats.lease);
        let leadership = Leadership {
            leases: Arc::new(leases),
            ttl: nats.lease,
        };
        let totals = jetstream.totals();
        tracing::info!(
            message = "Queue open.",
            store = %jetstream.describe(),
            queued_events = totals.events,
            queued_bytes = totals.bytes,
        );
        return Ok((Arc::new(jetstream), Some(leadership)));
    }
    let sqlite = SqliteQueue::open(
        &settings.data_dir,
        WriterConfig {
            max_queue_bytes: settings.max_queue_bytes,
            min_free_disk_bytes: settings.min_free_disk_bytes,
            dedup_window: settings.dedup_window,
            dedup_capacity: settings.dedup_capacity,
            identity_map_retention: settings.identity_map_retention,
        },
    )?;
    let totals = sqlite.totals();
    tracing::info!(
        message = "Store open.",
        path = %sqlite.path().display(),
        queued_events = totals.events,
        queued_bytes = totals.bytes,
    );
    Ok((Arc::new(sqlite), None))
}

/// The JetStream queue the settings select (`--nats-url`), if any. `provision`: create and
/// update its streams (`serve`), or only open them (maintenance commands).
pub fn jetstream_config(settings: &Settings, provision: bool) -> Option<JetStreamConfig> {
    let nats = settings.nats()?;
    Some(JetStreamConfig {
        servers: nats.urls,
        prefix: nats.stream,
        replicas: nats.replicas,
        creds: nats.creds,
        max_queue_bytes: settings.max_queue_bytes,
        dedup_window: settings.dedup_window,
        identity_map_retention: settings.identity_map_retention,
        provision,
    })
}

/// Starts one deletion submitter per Heap account (routes that share an account and key share
/// one); they stop with `stop`. Routes without an API key get a loud warning: their deletions
/// are purged locally and kept `unconfigured` until a key is configured.
fn start_deletions(
    settings: &Settings,
    queue: &Arc<dyn Queue>,
    metrics: &Metrics,
    stop: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    if settings.dry_run {
        // Nothing reaches Heap in a dry run: the ledger waits for a real run.
        return Vec::new();
    }
    let unkeyed = settings.routes_without_deletion_key();
    if !unkeyed.is_empty() {
        tracing::warn!(
            message = "No Heap API key (heap_api_key): Braze user deletions of these routes are purged here but not sent to Heap.",
            routes = %unkeyed.join(","),
        );
    }
    let cfg = DeletionConfig {
        request_interval: settings.deletion_request_interval,
        poll_interval: settings.deletion_poll_interval,
        // One send of a lane is a track request (rarely split in two) and then the user
        // properties of its events: four request timeouts cover what was on its way.
        settle: settings.heap_timeout.saturating_mul(4),
        backoff: Backoff::from(&settings.retry_backoff),
    };
    settings
        .deletion_accounts()
        .into_iter()
        .map(|account| {
            let client = account.api_key.as_ref().map(|key| {
                HeapDeletionClient::new(
                    &account.base_url,
                    account.account_app_id.as_str(),
                    key.expose(),
                    settings.heap_timeout,
                )
            });
            let submitter = Submitter::new(
                account.routes,
                client,
                Arc::clone(queue),
                metrics.clone(),
                cfg.clone(),
            );
            tokio::spawn(submitter.run(stop.child_token()))
        })
        .collect()
}
