//! Process wiring: [`App::build`] opens the store, starts the writer and binds the listener;
//! [`App::run_until_stopped`] serves until the shutdown future resolves, then drains.
//!
//! Drain order (SIGTERM/SIGINT): new batches get 503 + `Retry-After` and `/readyz` turns 503
//! while the batches already in flight finish (up to `--shutdown-grace`); then the listener
//! closes, open connections are shut down gracefully, and the writer commits what is pending
//! and checkpoints the WAL. Everything acknowledged is on disk at every step.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::delivery::{Delivery, DeliveryConfig, Sender};
use crate::heap::client::HeapClient;
use crate::ingest::{self, Auth, IngestState};
use crate::metrics::Metrics;
use crate::queue::{Store, StoreError, Writer, WriterConfig, WriterHandle};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub struct App {
    listener: TcpListener,
    state: Arc<IngestState>,
    delivery: Delivery,
    writer: WriterHandle,
    grace: Duration,
}

impl App {
    pub async fn build(settings: &Settings) -> Result<App, AppError> {
        let store = Store::open(&settings.data_dir)?;
        let (writer, writer_handle) = Writer::spawn(
            &store,
            WriterConfig {
                max_queue_bytes: settings.max_queue_bytes,
                min_free_disk_bytes: settings.min_free_disk_bytes,
                dedup_window: settings.dedup_window,
                dedup_capacity: settings.dedup_capacity,
            },
        )?;
        let metrics = Metrics::new();
        metrics
            .queue_max_bytes
            .set(settings.max_queue_bytes.min(i64::MAX as u64) as i64);
        metrics.dedup_capacity.set(settings.dedup_capacity as i64);
        let auth = Auth::new(&settings.ingest_tokens);
        if auth.is_open() {
            tracing::warn!(
                message = "No ingest token configured: POST /currents accepts unauthenticated requests. Set --ingest-token / CURRENTS_HEAP_INGEST_TOKEN."
            );
        }
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| AppError::Bind {
                    addr: settings.listen,
                    source,
                })?;
        tracing::info!(
            message = "Store open.",
            path = %store.path().display(),
            queued_events = store.stats().events(),
            queued_bytes = store.stats().bytes(),
        );
        let new_data = Arc::new(Notify::new());
        let delivery = build_delivery(settings, &store, &writer, &metrics, &new_data)?;
        let state = Arc::new(IngestState::new(
            auth,
            settings.max_body_bytes,
            writer,
            store,
            metrics,
            new_data,
        ));
        Ok(App {
            listener,
            state,
            delivery,
            writer: writer_handle,
            grace: settings.shutdown_grace,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn state(&self) -> Arc<IngestState> {
        Arc::clone(&self.state)
    }

    /// Serves until `shutdown` resolves, then drains (see the module docs).
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) {
        let App {
            listener,
            state,
            delivery,
            writer,
            grace,
        } = self;
        let stop_delivery = CancellationToken::new();
        let delivery_task = tokio::spawn(delivery.run(stop_delivery.clone()));
        tracing::info!(message = "Listening.", addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default());
        let graceful = GracefulShutdown::new();

        // Phase 1: serve until the signal.
        tokio::pin!(shutdown);
        tokio::select! {
            _ = accept_loop(&listener, &state, &graceful) => {}
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
            _ = accept_loop(&listener, &state, &graceful) => {}
            _ = tokio::time::timeout(grace, in_flight_done) => {}
        }
        drop(listener);

        // Phase 3: close connections, then the store.
        if tokio::time::timeout(Duration::from_secs(2), graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(message = "Some connections did not close within 2s; dropping them.");
        }
        state.body_slots.close();

        // Phase 4: stop delivery (a request in flight finishes), then close the store.
        stop_delivery.cancel();
        if tokio::time::timeout(grace.max(Duration::from_secs(1)), delivery_task)
            .await
            .is_err()
        {
            tracing::warn!(
                message = "Delivery did not stop within the grace period; undelivered events stay queued."
            );
        }
        let _ = tokio::task::spawn_blocking(move || writer.close()).await;
        tracing::info!(message = "Stopped.");
    }
}

fn build_delivery(
    settings: &Settings,
    store: &Store,
    writer: &Writer,
    metrics: &Metrics,
    new_data: &Arc<Notify>,
) -> Result<Delivery, AppError> {
    let sender = if settings.dry_run {
        Sender::DryRun
    } else {
        Sender::Heap(Box::new(HeapClient::new(
            &settings.heap_base_url,
            settings.heap_timeout,
        )))
    };
    let app_id = settings
        .heap_app_id
        .as_ref()
        .map(|a| a.as_str().to_owned())
        // Only reachable with --dry-run (validate_for_serve requires an id otherwise).
        .unwrap_or_else(|| "0".to_owned());
    let cfg = DeliveryConfig {
        route: Arc::from(crate::ingest::DEFAULT_ROUTE),
        app_id,
        batch_size: settings.heap_batch_size,
        linger: settings.heap_linger,
        events_per_window: settings.heap_events_per_minute,
        identity_events_per_window: settings.heap_identity_events_per_minute,
        window: settings.heap_budget_window,
        backoff: settings.retry_backoff,
        max_event_age: settings.max_event_age,
        mapping: settings.mapping.clone(),
        dead_letter_skipped: settings.dead_letter_skipped,
    };
    metrics
        .budget_per_minute
        .with_label_values(&["app"])
        .set(i64::from(settings.heap_events_per_minute.get()));
    metrics
        .budget_per_minute
        .with_label_values(&["identity"])
        .set(i64::from(settings.heap_identity_events_per_minute.get()));
    Ok(Delivery::new(
        cfg,
        sender,
        writer.clone(),
        store.reader()?,
        metrics.clone(),
        Arc::clone(new_data),
    ))
}

/// Accepts connections forever, serving each on its own task under `graceful`.
async fn accept_loop(
    listener: &TcpListener,
    state: &Arc<IngestState>,
    graceful: &GracefulShutdown,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(message = "Accept failed.", error = %e);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let st = Arc::clone(state);
        let svc = service_fn(move |req| {
            let st = Arc::clone(&st);
            async move { Ok::<_, std::convert::Infallible>(ingest::serve(req, st).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(message = "Connection ended with an error.", error = %e);
            }
        });
    }
}
