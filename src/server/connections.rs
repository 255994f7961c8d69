//! The open connections: how many there may be, which one gives way, and what each is doing.
//!
//! Why a registry and not just a counter: a cap alone lets a flood of idle connections lock
//! Braze out until they time out. At the cap, the connection that has been idle longest (no
//! request in progress) is closed to make room; only when every connection is busy with a
//! request is the new one refused. Each connection's [`ConnState`] also tells its watchdog
//! (see [`super::watchdog`]) when it went idle and when the next request's head began.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::ingest::IngestState;

/// What one connection is doing, shared by its IO wrapper, its service and its watchdog.
/// Times are milliseconds since the registry's epoch; 0 in `head_started` means "none".
#[derive(Debug)]
pub struct ConnState {
    epoch: Instant,
    in_flight: AtomicUsize,
    idle_since: AtomicU64,
    head_started: AtomicU64,
    /// After its first HTTP/2 request, bytes between requests are control frames (pings,
    /// settings), not a slow request head.
    is_h2: AtomicBool,
    /// Rung when a request starts or ends, or a head begins.
    pub(super) changed: Notify,
    /// Cancelled to evict this connection.
    pub(super) evict: CancellationToken,
}

impl ConnState {
    fn new(epoch: Instant) -> Self {
        let s = Self {
            epoch,
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            is_h2: AtomicBool::new(false),
            changed: Notify::new(),
            evict: CancellationToken::new(),
        };
        s.idle_since.store(s.now_ms(), Ordering::SeqCst);
        s
    }

    pub(super) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Bytes arrived; with no request in progress they begin the next request's head.
    pub(super) fn on_bytes_read(&self) {
        if self.in_flight.load(Ordering::SeqCst) == 0
            && !self.is_h2.load(Ordering::Relaxed)
            && self
                .head_started
                .compare_exchange(0, self.now_ms(), Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            self.changed.notify_one();
        }
    }

    /// A request's head is complete and the request is being served until the guard drops.
    pub(super) fn request_started(self: &Arc<Self>, http2: bool) -> RequestGuard {
        if http2 {
            self.is_h2.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.head_started.store(0, Ordering::SeqCst);
        self.changed.notify_one();
        RequestGuard(Arc::clone(self))
    }

    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub(super) fn idle_since(&self) -> u64 {
        self.idle_since.load(Ordering::SeqCst)
    }

    pub(super) fn head_started(&self) -> Option<u64> {
        match self.head_started.load(Ordering::SeqCst) {
            0 => None,
            t => Some(t),
        }
    }
}

/// Marks a request finished (and the connection idle from now) when dropped.
#[derive(Debug)]
pub(super) struct RequestGuard(Arc<ConnState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let s = &self.0;
        s.idle_since.store(s.now_ms(), Ordering::SeqCst);
        s.in_flight.fetch_sub(1, Ordering::SeqCst);
        s.changed.notify_one();
    }
}

/// Whether a new connection was admitted.
#[derive(Debug)]
pub enum Admission {
    Admitted(ConnGuard),
    /// At the cap: the longest-idle connection is being closed; try again once it is gone
    /// (its descriptor is counted until then, so the cap is never overshot).
    /// `evicted`: this call chose the victim (else an earlier eviction is still closing).
    MadeRoom {
        evicted: bool,
    },
    /// At the cap and every connection is busy with a request.
    Refused,
}

/// The registry of open connections.
#[derive(Debug)]
pub struct Connections {
    epoch: Instant,
    max: usize,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<ConnState>>>,
    state: Arc<IngestState>,
}

impl Connections {
    pub fn new(max: usize, state: Arc<IngestState>) -> Arc<Self> {
        state.metrics.connections.set_max(max);
        Arc::new(Self {
            epoch: Instant::now(),
            max,
            next_id: AtomicU64::new(1),
            open: Mutex::new(HashMap::new()),
            state,
        })
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new connection, or at the cap makes room by evicting the longest-idle one.
    /// Evicted connections stay counted until their task has dropped them.
    pub fn admit(self: &Arc<Self>) -> Admission {
        let mut open = self.lock();
        if open.len() >= self.max {
            let evicting = open.values().any(|c| c.evict.is_cancelled());
            if evicting {
                return Admission::MadeRoom { evicted: false };
            }
            let victim = open
                .values()
                .filter(|c| c.in_flight() == 0)
                .min_by_key(|c| c.idle_since());
            return match victim {
                Some(c) => {
                    c.evict.cancel();
                    Admission::MadeRoom { evicted: true }
                }
                None => {
                    self.state.connections_full.store(true, Ordering::SeqCst);
                    Admission::Refused
                }
            };
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(ConnState::new(self.epoch));
        open.insert(id, Arc::clone(&conn));
        self.state.connections_full.store(false, Ordering::SeqCst);
        self.state.metrics.connections.set_open(open.len());
        Admission::Admitted(ConnGuard {
            id,
            conn,
            registry: Arc::clone(self),
        })
    }

    fn remove(&self, id: u64) {
        let mut open = self.lock();
        open.remove(&id);
        self.state.metrics.connections.set_open(open.len());
        if open.len() < self.max {
            self.state.connections_full.store(false, Ordering::SeqCst);
        }
    }
}

/// One admitted connection; leaves the registry when dropped.
#[derive(Debug)]
pub struct ConnGuard {
    id: u64,
    conn: Arc<ConnState>,
    registry: Arc<Connections>,
}

impl ConnGuard {
    pub fn state(&self) -> &Arc<ConnState> {
        &self.conn
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.registry.remove(self.id);
    }
}
