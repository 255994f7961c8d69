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

use std::collections::HashMap;

use crate::config::{DEFAULT_ROUTE, Settings};
use crate::delivery::{Delivery, DeliveryConfig, RouteMapping, Sender};
use crate::heap::client::HeapClient;
use crate::ingest::{self, Auth, IngestState};
use crate::metrics::Metrics;
use crate::metrics::UNROUTABLE;
use crate::queue::QueueOp;
use crate::queue::{DataDirLock, Store, StoreError, Writer, WriterConfig, WriterHandle};
use crate::routing::{Router, default_app_id};

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
    lanes: Vec<Delivery>,
    writer: WriterHandle,
    grace: Duration,
    /// Released when the app (after its drain) is dropped.
    _lock: DataDirLock,
}

impl App {
    pub async fn build(settings: &Settings) -> Result<App, AppError> {
        let lock = DataDirLock::acquire(&settings.data_dir)?;
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
        let route_names: Vec<&str> = std::iter::once(DEFAULT_ROUTE)
            .chain(settings.routes.iter().map(|r| r.name.as_str()))
            .collect();
        let metrics = Metrics::with_routes(&route_names);
        metrics
            .queue_max_bytes
            .set(settings.max_queue_bytes.min(i64::MAX as u64) as i64);
        metrics.dedup_capacity.set(settings.dedup_capacity as i64);
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
        let lanes = build_lanes(settings, &store, &writer, &metrics)?;
        orphans_to_dead_letters(&store, &writer, &lanes).await?;
        let router = Router::from_settings(settings);
        if router.targets().next().is_none() {
            tracing::warn!(
                message = "No default route and no [[route]]: every event will be kept as an unroutable dead letter."
            );
        }
        let new_data = lanes
            .iter()
            .map(|(_, app_id, n)| (Arc::clone(app_id), Arc::clone(n)))
            .collect();
        let drain_rate: f64 = lanes.iter().map(|(d, ..)| d.budget_rate()).sum();
        let mut state = IngestState::new(
            auth,
            settings.max_body_bytes,
            writer,
            store,
            metrics,
            new_data,
            router,
        );
        state.drain_rate = drain_rate;
        let state = Arc::new(state);
        Ok(App {
            listener,
            state,
            lanes: lanes.into_iter().map(|(d, ..)| d).collect(),
            writer: writer_handle,
            grace: settings.shutdown_grace,
            _lock: lock,
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
            lanes,
            writer,
            grace,
            _lock: lock,
        } = self;
        let stop_delivery = CancellationToken::new();
        let delivery_tasks: Vec<_> = lanes
            .into_iter()
            .map(|lane| tokio::spawn(lane.run(stop_delivery.clone())))
            .collect();
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
        let all_stopped = async {
            for task in delivery_tasks {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(grace.max(Duration::from_secs(1)), all_stopped)
            .await
            .is_err()
        {
            tracing::warn!(
                message = "Delivery did not stop within the grace period; undelivered events stay queued."
            );
        }
        let _ = tokio::task::spawn_blocking(move || writer.close()).await;
        drop(lock);
        tracing::info!(message = "Stopped.");
    }
}

/// A delivery loop, the Heap app id it serves, and the bell ingest rings for it.
type Lane = (Delivery, Arc<str>, Arc<Notify>);

/// One delivery lane per Heap app id, serving every route that delivers there (the default
/// route first, then `[[route]]` tables in file order).
fn build_lanes(
    settings: &Settings,
    store: &Store,
    writer: &Writer,
    metrics: &Metrics,
) -> Result<Vec<Lane>, AppError> {
    struct LaneSpec {
        name: String,
        app_id: String,
        base_url: String,
        per_minute: std::num::NonZeroU32,
        identity_per_minute: std::num::NonZeroU32,
        routes: HashMap<String, RouteMapping>,
        fallback: RouteMapping,
    }
    let mut lanes: Vec<LaneSpec> = Vec::new();
    let mut add =
        |name: &str, app_id: &str, base_url: &str, pm, ipm, mapping: RouteMapping| match lanes
            .iter_mut()
            .find(|l| l.app_id == app_id)
        {
            Some(l) => {
                l.routes.insert(name.to_owned(), mapping);
            }
            None => lanes.push(LaneSpec {
                name: name.to_owned(),
                app_id: app_id.to_owned(),
                base_url: base_url.to_owned(),
                per_minute: pm,
                identity_per_minute: ipm,
                routes: HashMap::from([(name.to_owned(), mapping.clone())]),
                fallback: mapping,
            }),
        };
    let default_app_id = default_app_id(settings);
    if let Some(app_id) = default_app_id {
        add(
            DEFAULT_ROUTE,
            app_id,
            &settings.heap_base_url,
            settings.heap_events_per_minute,
            settings.heap_identity_events_per_minute,
            RouteMapping {
                mapping: settings.mapping.options.clone(),
                dead_letter_skipped: settings.dead_letter_skipped,
            },
        );
    }
    for r in &settings.routes {
        add(
            &r.name,
            r.heap_app_id.as_str(),
            &r.heap_base_url,
            r.heap_events_per_minute,
            r.heap_identity_events_per_minute,
            RouteMapping {
                mapping: r.mapping.options.clone(),
                dead_letter_skipped: r.dead_letter_skipped,
            },
        );
    }
    let mut out = Vec::with_capacity(lanes.len());
    for lane in lanes {
        let sender = if settings.dry_run {
            Sender::DryRun
        } else {
            Sender::Heap(Box::new(HeapClient::new(
                &lane.base_url,
                settings.heap_timeout,
            )))
        };
        for (budget, v) in [
            ("app", lane.per_minute),
            ("identity", lane.identity_per_minute),
        ] {
            metrics
                .budget_per_minute
                .with_label_values(&[&lane.name, budget])
                .set(i64::from(v.get()));
        }
        let cfg = DeliveryConfig {
            lane: Arc::from(lane.name.as_str()),
            app_id: lane.app_id.clone(),
            routes: lane.routes,
            fallback: lane.fallback,
            batch_size: settings.heap_batch_size,
            linger: settings.heap_linger,
            max_request_bytes: usize::try_from(settings.heap_max_request_bytes)
                .unwrap_or(usize::MAX),
            window_bytes: usize::try_from(settings.delivery_window_bytes).unwrap_or(usize::MAX),
            events_per_window: lane.per_minute,
            identity_events_per_window: lane.identity_per_minute,
            window: settings.heap_budget_window,
            backoff: settings.retry_backoff,
            max_event_age: settings.max_event_age,
        };
        let notify = Arc::new(Notify::new());
        let delivery = Delivery::new(
            cfg,
            sender,
            writer.clone(),
            store.reader()?,
            metrics.clone(),
            Arc::clone(&notify),
        );
        out.push((delivery, Arc::from(lane.app_id.as_str()), notify));
    }
    Ok(out)
}

/// Queued events whose app id no lane serves any more (the configuration changed) become
/// dead letters `unroutable`: visible, counted, and replayable once the configuration routes
/// them again.
async fn orphans_to_dead_letters(
    store: &Store,
    writer: &Writer,
    lanes: &[Lane],
) -> Result<(), AppError> {
    let queued = store.reader()?.queued_app_ids().map_err(|source| {
        AppError::Store(StoreError::Sqlite {
            path: store.path().to_owned(),
            source,
        })
    })?;
    for app_id in queued {
        if lanes.iter().any(|(_, a, _)| **a == *app_id) {
            continue;
        }
        match writer
            .apply(QueueOp::DeadLetterApp {
                app_id: app_id.clone(),
                reason: UNROUTABLE.to_owned(),
            })
            .await
        {
            Ok(o) => tracing::warn!(
                message = "Queued events for a Heap app id no route delivers to; kept as dead letters (reason unroutable). Fix the routes, then `dlq replay --reason unroutable`.",
                app_id = %app_id,
                events = o.rows,
            ),
            Err(e) => {
                tracing::error!(message = "Cannot dead-letter orphaned events.", app_id = %app_id, error = %e)
            }
        }
    }
    Ok(())
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
