//! The HTTP surface on `--listen`: `POST /currents` plus the admin endpoints.
//!
//! This module owns the status code of every request path (product.md §3) and the decision to
//! shed load (503 + `Retry-After`) rather than queue it in memory: a request reserves every
//! body byte it holds in the ingest memory budget ([`buffer`]) and gets 503 when no room frees
//! up in time, the writer refuses work beyond its bounded channel, and a draining server
//! refuses new batches while it finishes the ones in flight. How connections reach this module
//! (timeouts, the connection cap) is the `server` module's business.

mod auth;
pub mod body;
pub mod buffer;
pub mod error;
mod handler;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;

pub use auth::Auth;
pub use buffer::IngestBuffer;
pub use error::IngestError;
pub use handler::{Accepted, UNROUTABLE};

use crate::delivery::LaneBell;
use crate::metrics::Metrics;
use crate::queue::{Queue, unix_millis};
use crate::routing::Router;
use error::json_response;

/// Requests of `POST /currents` past the draining check and not yet answered.
#[derive(Debug, Default)]
pub struct InFlight(AtomicUsize);

impl InFlight {
    pub fn enter(&self) -> InFlightGuard<'_> {
        self.0.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self)
    }

    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Debug)]
pub struct InFlightGuard<'a>(&'a InFlight);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a configuration reload may change on the ingest side: who may post, where events go,
/// whom to wake. A request takes one snapshot when it starts and uses it to the end.
#[derive(Debug)]
pub struct Routing {
    pub auth: Auth,
    /// Which route (and Heap app id) each event takes.
    pub router: Router,
    /// Per Heap app id: rung after each append for it, so delivery starts without polling,
    /// and told which events a deletion purged.
    pub bells: HashMap<Arc<str>, Arc<LaneBell>>,
    /// Events per second all delivery lanes together send with a backlog (for the drain
    /// estimate); 0 when nothing delivers.
    pub drain_rate: f64,
}

/// Everything a request needs, shared by all connections.
#[derive(Debug)]
pub struct IngestState {
    routing: RwLock<Arc<Routing>>,
    pub max_body_bytes: u64,
    pub queue: Arc<dyn Queue>,
    pub metrics: Metrics,
    /// The ingest memory budget: body bytes held at once.
    pub buffer: IngestBuffer,
    /// Time a client has to send a body once its headers are in.
    pub body_read_timeout: Duration,
    pub in_flight: InFlight,
    /// Set by the server while every connection slot is taken (then `/readyz` is 503).
    pub connections_full: AtomicBool,
    draining: AtomicBool,
    /// When the last round of queue queries for `/metrics` started.
    gauge_round: tokio::sync::Mutex<Option<Instant>>,
    /// A deletion not complete this long after it was received is overdue (a gauge).
    deletion_overdue_after: Duration,
}

impl IngestState {
    pub fn new(
        routing: Routing,
        max_body_bytes: u64,
        edge: &crate::config::EdgeSettings,
        queue: Arc<dyn Queue>,
        metrics: Metrics,
    ) -> Self {
        metrics.ingest.set_buffer_capacity(edge.ingest_buffer_bytes);
        Self {
            routing: RwLock::new(Arc::new(routing)),
            max_body_bytes,
            queue,
            metrics,
            buffer: IngestBuffer::new(edge.ingest_buffer_bytes, edge.ingest_wait_timeout),
            body_read_timeout: edge.body_read_timeout,
            in_flight: InFlight::default(),
            connections_full: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            gauge_round: tokio::sync::Mutex::new(None),
            deletion_overdue_after: Duration::from_secs(7 * 24 * 3600),
        }
    }

    /// Sets when a deletion counts as overdue (default 7 days).
    pub fn with_deletion_overdue_after(mut self, after: Duration) -> Self {
        self.deletion_overdue_after = after;
        self
    }

    /// The routing in force now.
    pub fn routing(&self) -> Arc<Routing> {
        Arc::clone(&self.routing.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Puts `routing` in force for requests that start from now on; returns the previous one
    /// (held by the requests that started before, until they finish).
    pub fn swap_routing(&self, routing: Routing) -> Arc<Routing> {
        let mut guard = self.routing.write().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *guard, Arc::new(routing))
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// From now on `POST /currents` answers 503 and `/readyz` 503.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Batches past the draining check that have not been answered yet.
    pub fn batches_in_flight(&self) -> usize {
        self.in_flight.count()
    }

    /// Requests wait for memory, or every connection slot is taken: a load balancer should
    /// send new work to another instance.
    pub fn is_saturated(&self) -> bool {
        self.buffer.waiting() > 0 || self.connections_full.load(Ordering::SeqCst)
    }

    /// Refreshes the queue gauges (the oldest-event age needs one indexed query). Scrapes that
    /// arrive together (or a client flooding `/metrics`, which needs no token) share one round
    /// of store queries: a scrape skips them when a round that started after it arrived has
    /// already finished, so every scrape still sees the store as of its arrival or later.
    async fn refresh_queue_gauges(&self) {
        let arrived = Instant::now();
        let totals = self.queue.totals();
        self.metrics.queue.set_size(totals.events, totals.bytes);
        self.metrics.queue.set_store_healthy(totals.healthy);
        self.metrics.queue.set_dedup_ids(totals.dedup_ids);
        self.metrics
            .ingest
            .set_buffer_bytes(self.buffer.used_bytes());
        let drain_rate = self.routing().drain_rate;
        let drain = if totals.events == 0 {
            0.0
        } else if drain_rate > 0.0 {
            totals.events as f64 / drain_rate
        } else {
            f64::INFINITY
        };
        self.metrics.queue.set_drain_estimate(drain);
        let mut last_round = self.gauge_round.lock().await;
        if last_round.is_some_and(|t| t > arrived) {
            return;
        }
        *last_round = Some(Instant::now());
        let overdue_before = unix_millis().saturating_sub(
            i64::try_from(self.deletion_overdue_after.as_millis()).unwrap_or(i64::MAX),
        );
        let read = async {
            let oldest = self.queue.oldest_received_at().await?;
            let dead = self.queue.dead_letter_counts().await?;
            let ledger = self.queue.deletion_summary(overdue_before).await?;
            Ok::<_, crate::queue::QueueError>((oldest, dead, ledger))
        };
        match read.await {
            Ok((oldest, dead, ledger)) => {
                let age = oldest.map_or(0.0, |t| (unix_millis() - t).max(0) as f64 / 1000.0);
                self.metrics.queue.set_oldest_age(age);
                self.metrics.queue.set_dead_letters(&dead);
                let counts: Vec<(&str, &str, u64)> = ledger
                    .iter()
                    .map(|s| (s.route.as_str(), s.status.as_str(), s.count))
                    .collect();
                let overdue: Vec<(&str, u64)> = ledger
                    .iter()
                    .filter(|s| s.status.is_open())
                    .map(|s| (s.route.as_str(), s.overdue))
                    .collect();
                self.metrics.deletions.set_ledger_all(&counts, &overdue);
            }
            Err(e) => {
                tracing::warn!(message = "Cannot read the queue for metrics.", error = %e);
            }
        }
    }
}

/// Serves one request. Never fails: every path has a defined status.
pub async fn serve(req: Request<Incoming>, state: Arc<IngestState>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let (response, outcome) = if req.method() == Method::POST && req.uri().path() == "/currents" {
        match handler::accept(req, &state).await {
            Ok(a) => {
                let outcome = if a.accepted + a.duplicates == 0 {
                    "empty"
                } else {
                    "accepted"
                };
                let body = json!({ "accepted": a.accepted, "duplicates": a.duplicates });
                (json_response(StatusCode::OK, &body), outcome)
            }
            Err(e) => {
                log_refusal(&e);
                (e.to_response(), e.outcome())
            }
        }
    } else {
        // Only ingest reads a body: any other request lets its body go at once instead of
        // holding it (and, on HTTP/2, its flow-control window) while it is answered.
        let (parts, _) = req.into_parts();
        match admin(&parts.method, parts.uri.path(), &state).await {
            Admin::Counted(response, outcome) => (response, outcome),
            Admin::Uncounted(response) => return response,
        }
    };
    state.metrics.ingest.request(
        outcome,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// The answer of a path other than `POST /currents`; probes and scrapes are not counted as
/// ingest requests.
enum Admin {
    Counted(Response<Full<Bytes>>, &'static str),
    Uncounted(Response<Full<Bytes>>),
}

async fn admin(method: &Method, path: &str, state: &Arc<IngestState>) -> Admin {
    match (method, path) {
        (_, "/currents") => {
            let mut r = json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({ "error": "method_not_allowed", "message": "use POST" }),
            );
            r.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
            Admin::Counted(r, "method_not_allowed")
        }
        (&Method::GET | &Method::HEAD, "/healthz") => {
            Admin::Uncounted(text(StatusCode::OK, "ok\n"))
        }
        (&Method::GET | &Method::HEAD, "/readyz") => Admin::Uncounted(if state.is_draining() {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        } else if !state.queue.totals().healthy {
            text(StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n")
        } else if state.is_saturated() {
            text(StatusCode::SERVICE_UNAVAILABLE, "saturated\n")
        } else {
            text(StatusCode::OK, "ready\n")
        }),
        (&Method::GET | &Method::HEAD, "/metrics") => {
            state.refresh_queue_gauges().await;
            let st = Arc::clone(state);
            let rendered = tokio::task::spawn_blocking(move || st.metrics.render())
                .await
                .unwrap_or_default();
            let mut r = Response::new(Full::new(Bytes::from(rendered)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            Admin::Uncounted(r)
        }
        _ => Admin::Counted(
            json_response(
                StatusCode::NOT_FOUND,
                &json!({ "error": "not_found", "message": "Braze Currents posts to /currents" }),
            ),
            "not_found",
        ),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

fn log_refusal(e: &IngestError) {
    let status = e.status().as_u16();
    match e {
        IngestError::Store(_) => {
            tracing::warn!(message = "Batch refused.", status, outcome = e.outcome(), error = %e)
        }
        _ => tracing::info!(message = "Batch refused.", status, outcome = e.outcome(), error = %e),
    }
}
