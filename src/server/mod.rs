//! The listener on `--listen` and the life of every connection on it: what a client that
//! connects may cost, whoever it is (README "Facing the internet").
//!
//! - **A cap on open connections** (`--max-connections`, lowered at start to fit the process's
//!   descriptor limit, so a flood can never exhaust descriptors). At the cap the longest-idle
//!   connection is closed to make room; when every connection is busy with a request, the new
//!   one is answered `503` with `Retry-After` and closed at once. Both are logged and counted.
//! - **A header-read timeout** (`--header-read-timeout`): from the first byte of a request (or
//!   of the connection: protocol sniffing, TLS handshake) to a complete head.
//! - **An idle timeout** (`--idle-timeout`): a connection with no request in progress is closed
//!   (HTTP/2 gets a GOAWAY) once it has been idle that long.
//! - **A body deadline** and **the ingest memory budget** are enforced per request by
//!   [`crate::ingest`].
//!
//! Each connection has a watchdog ([`watchdog`]) fed by its transport ([`io::TrackedIo`]) and
//! its service (request start and end); the registry ([`connections`]) owns the cap.

mod connections;
mod io;
pub mod tls;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::EdgeSettings;
use crate::ingest::{self, IngestState};
pub use connections::{Admission, Connections};
use connections::{ConnGuard, ConnState};
use io::TrackedIo;
use tls::{CertStore, TlsError};

/// Descriptors kept for everything but client connections (store, Heap clients, logs).
const RESERVED_DESCRIPTORS: u64 = 64;

/// How long a connection being closed gracefully may take before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What one connection may make hyper hold before a request reaches ingest's budget: the
/// request head (HTTP/1), and flow-control windows and streams (HTTP/2). hyper's defaults
/// (~400 KiB of head, 1 MiB windows, 200 streams) would let an unauthenticated client hold
/// hundreds of MiB across the connection cap.
const MAX_HEAD_BYTES: usize = 64 * 1024;
const H2_STREAM_WINDOW: u32 = 64 * 1024;
const H2_CONNECTION_WINDOW: u32 = 256 * 1024;
const H2_MAX_STREAMS: u32 = 16;
const H2_MAX_HEADER_LIST: u32 = 16 * 1024;

fn connection_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST);
    builder
}

/// How long accepting waits for an evicted connection to release its descriptor.
const EVICTION_WAIT: Duration = Duration::from_secs(1);

/// What a refused connection is told before it is closed.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: 77\r\n\r\n{\"error\":\"too_many_connections\",\"message\":\"connection limit reached; retry\"}\n";

/// Why the server closed a connection (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloseReason {
    IdleTimeout,
    HeaderTimeout,
}

impl CloseReason {
    fn as_str(self) -> &'static str {
        match self {
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::HeaderTimeout => "header_timeout",
        }
    }
}

/// The listener, its connections and their limits.
pub struct Server {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    connections: Arc<Connections>,
    state: Arc<IngestState>,
    edge: EdgeSettings,
    stop: CancellationToken,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listener", &self.listener)
            .field("tls", &self.tls.is_some())
            .field("edge", &self.edge)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Serves `listener` with `edge`'s limits; the connection cap is lowered (with a warning)
    /// when the descriptor limit cannot hold it. With TLS configured, the certificate is
    /// loaded now (an unusable pair stops the start) and watched for changes and `SIGHUP`.
    pub fn new(
        listener: TcpListener,
        edge: &EdgeSettings,
        state: Arc<IngestState>,
    ) -> Result<Self, TlsError> {
        let max = fit_descriptor_limit(edge.max_connections);
        let stop = CancellationToken::new();
        let tls = match &edge.tls {
            None => None,
            Some(files) => {
                let store =
                    CertStore::load(&files.cert, &files.key, state.metrics.reloads.clone())?;
                let acceptor = store.acceptor().map_err(|e| TlsError::Read {
                    path: files.cert.clone(),
                    message: e.to_string(),
                })?;
                tokio::spawn(watch_certificate(store, stop.clone()));
                Some(acceptor)
            }
        };
        Ok(Self {
            listener,
            tls,
            connections: Connections::new(max, Arc::clone(&state)),
            state,
            edge: edge.clone(),
            stop,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until the future is dropped, serving each on its own task.
    pub async fn accept_loop(&self) {
        let builder = connection_builder();
        let mut refusals = RefusalLog::default();
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(message = "Accept failed.", error = %e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(guard) = self.admit().await else {
                self.count_closed("refused");
                refusals.note(self.connections.len());
                // Best effort and never waits: the socket buffer of a new connection is empty.
                // Over TLS a plain-text answer would only be a handshake error: just close.
                if self.tls.is_none() {
                    let _ = stream.try_write(REFUSAL);
                }
                continue;
            };
            let _ = stream.set_nodelay(true);
            let conn = Conn {
                guard,
                state: Arc::clone(&self.state),
                builder: builder.clone(),
                edge: self.edge.clone(),
                stop: self.stop.clone(),
            };
            tokio::spawn(conn.run(stream, self.tls.clone()));
        }
    }

    /// A place for one more connection: at the cap, the longest-idle connection is closed and
    /// this waits (at most [`EVICTION_WAIT`]) until its descriptor is released. `None` when
    /// every connection is busy with a request. Accepting waits meanwhile, so a connect flood
    /// queues in the kernel's backlog rather than in descriptors.
    async fn admit(&self) -> Option<ConnGuard> {
        let deadline = Instant::now() + EVICTION_WAIT;
        loop {
            match self.connections.admit() {
                Admission::Admitted(g) => return Some(g),
                Admission::Refused => return None,
                Admission::MadeRoom { evicted } => {
                    if evicted {
                        self.count_closed("evicted");
                    }
                    if Instant::now() >= deadline {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }

    /// Closes every connection gracefully (HTTP/1 after its request, HTTP/2 with a GOAWAY),
    /// waiting at most `within`; returns whether all closed in time.
    pub async fn close_connections(&self, within: Duration) -> bool {
        self.stop.cancel();
        let deadline = Instant::now() + within;
        while !self.connections.is_empty() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    fn count_closed(&self, reason: &str) {
        count_close(&self.state, reason);
    }
}

/// One admitted connection and what serving it needs.
struct Conn {
    guard: ConnGuard,
    state: Arc<IngestState>,
    builder: auto::Builder<TokioExecutor>,
    edge: EdgeSettings,
    stop: CancellationToken,
}

impl Conn {
    fn watched(&self) -> &Arc<ConnState> {
        self.guard.state()
    }

    /// Serves the connection (after its TLS handshake, if any) until it ends, its watchdog
    /// closes it, it is evicted, or the server stops.
    async fn run(self, stream: TcpStream, tls: Option<TlsAcceptor>) {
        let io = TrackedIo::new(stream, Arc::clone(self.watched()));
        let Some(acceptor) = tls else {
            return self.serve(TokioIo::new(io)).await;
        };
        // The handshake is part of the head: the header-read timeout covers it.
        let handshake = tokio::select! {
            done = acceptor.accept(io) => done,
            why = watchdog(self.watched(), &self.edge) => {
                count_close(&self.state, why.as_str());
                return;
            }
            _ = self.watched().evict.cancelled() => return,
            _ = self.stop.cancelled() => return,
        };
        match handshake {
            Ok(tls) => self.serve(TokioIo::new(tls)).await,
            Err(e) => {
                self.state.metrics.connections.handshake_failed(&e);
            }
        }
    }

    async fn serve<S>(self, io: TokioIo<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let svc_conn = Arc::clone(self.watched());
        let svc_state = Arc::clone(&self.state);
        let svc = service_fn(move |req: Request<Incoming>| {
            let request = svc_conn.request_started(req.version() == Version::HTTP_2);
            let st = Arc::clone(&svc_state);
            async move {
                let response = ingest::serve(req, st).await;
                drop(request);
                Ok::<_, Infallible>(response)
            }
        });
        let conn = self.builder.serve_connection(io, svc);
        tokio::pin!(conn);
        let graceful = tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(message = "Connection ended with an error.", error = %e);
                }
                return;
            }
            why = watchdog(self.watched(), &self.edge) => {
                self.state.metrics.connections.timed_out(why.as_str());
                // A head that never completed has no request to finish: drop it at once.
                why == CloseReason::IdleTimeout
            }
            // Evicted (already counted): idle by definition, closed at once.
            _ = self.watched().evict.cancelled() => false,
            _ = self.stop.cancelled() => true,
        };
        if graceful {
            conn.as_mut().graceful_shutdown();
            // Closing, and so the longest idle: an eviction ends the wait at once.
            tokio::select! {
                _ = tokio::time::timeout(CLOSE_GRACE, conn) => {}
                _ = self.watched().evict.cancelled() => {}
            }
        }
    }
}

fn count_close(state: &IngestState, reason: &str) {
    state.metrics.connections.closed(reason);
}

/// Re-reads the certificate when its files change, and on `SIGHUP`, until `stop`.
async fn watch_certificate(store: Arc<CertStore>, stop: CancellationToken) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(message = "Cannot listen for SIGHUP; TLS files are still watched.", error = %e);
            None
        }
    };
    let mut tick = tokio::time::interval(tls::WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let force = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => false,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        let s = Arc::clone(&store);
        let _ = tokio::task::spawn_blocking(move || s.reload(force)).await;
    }
}

/// Resolves when the connection must close: idle for `idle_timeout`, or a request head begun
/// `header_read_timeout` ago and still incomplete. Never while a request is in progress (the
/// body deadline of ingest bounds that).
async fn watchdog(conn: &ConnState, edge: &EdgeSettings) -> CloseReason {
    let header = edge.header_read_timeout.as_millis() as u64;
    let idle = edge.idle_timeout.as_millis() as u64;
    loop {
        let wait = if conn.in_flight() > 0 {
            None
        } else {
            let now = conn.now_ms();
            let (deadline, reason) = match conn.head_started() {
                Some(t) => (t + header, CloseReason::HeaderTimeout),
                None => (conn.idle_since() + idle, CloseReason::IdleTimeout),
            };
            if now >= deadline {
                return reason;
            }
            Some(Duration::from_millis(deadline - now))
        };
        match wait {
            Some(d) => {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = conn.changed.notified() => {}
                }
            }
            None => conn.changed.notified().await,
        }
    }
}

/// Logs refused connections at most every 10 s, with how many since the last line.
#[derive(Default)]
struct RefusalLog {
    last: Option<Instant>,
    since_last: u64,
}

impl RefusalLog {
    fn note(&mut self, open: usize) {
        self.since_last += 1;
        if self
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            tracing::warn!(
                message = "Connection limit reached and every connection is busy: refusing new connections with 503.",
                refused = self.since_last,
                open,
            );
            self.last = Some(Instant::now());
            self.since_last = 0;
        }
    }
}

/// The connection cap that the descriptor limit can hold: raises the soft limit toward the
/// hard one if needed, then keeps [`RESERVED_DESCRIPTORS`] for everything else.
fn fit_descriptor_limit(configured: usize) -> usize {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let need = configured as u64 + RESERVED_DESCRIPTORS;
    let mut limit = getrlimit(Resource::Nofile);
    if let Some(soft) = limit.current
        && soft < need
        && limit.maximum.is_none_or(|hard| hard > soft)
    {
        let raised = limit.maximum.map_or(need, |hard| hard.min(need));
        if setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(raised),
                maximum: limit.maximum,
            },
        )
        .is_ok()
        {
            limit.current = Some(raised);
        }
    }
    let Some(soft) = limit.current else {
        return configured;
    };
    let fits = soft.saturating_sub(RESERVED_DESCRIPTORS).max(1) as usize;
    if fits < configured {
        tracing::warn!(
            message = "The descriptor limit cannot hold --max-connections; using a lower connection cap. Raise `ulimit -n` to restore it.",
            max_connections = configured,
            descriptor_limit = soft,
            connection_cap = fits,
        );
        fits
    } else {
        configured
    }
}
