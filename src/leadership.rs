//! One deliverer per Heap app id, cluster-wide (product.md §8): with several forwarder
//! replicas on one JetStream queue, each lane is held by exactly one replica at a time, through
//! a lease ([`Leases`]) that the holder renews while it holds it.
//!
//! Why a lease and a fence, not only a lease: a replica that stops being scheduled (a long GC
//! pause elsewhere, `SIGSTOP`, a VM freeze) cannot know that its lease ran out and another
//! replica took the lane. So the holder gives its lane's [`Sender`] a [`Fence`], set to end a
//! margin *before* the lease does, on its own monotonic clock, from the moment it *sent* the
//! request that won or renewed the lease: after a freeze, the fence is closed before any other
//! replica could have taken over, and the lane cannot start one more request to Heap. A request
//! that found the fence closed never starts; the lane waiting on it is stopped by its
//! supervisor ([`run_led`]) once the lease is known lost.
//!
//! What the next holder needs travels with the lease through the queue: the lane saves its
//! budget state and pause ([`crate::queue::SavedLane`]) before each request that spends its
//! budget, and a lane that starts reads it before sending anything, so no 60-second window at
//! Heap exceeds a budget across a handover. Events are acknowledged in the queue only after
//! Heap accepted them, so a batch in flight when its holder died is sent again by the next one
//! with the same idempotency keys.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prometheus::IntGauge;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::delivery::{Delivery, LaneCarry, SendFuture, Sender};
use crate::queue::QueueError;

/// The future a [`Leases`] method returns.
pub type LeaseFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, QueueError>> + Send + 'a>>;

/// A held lease: the lane's app id and the revision the next renewal must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub app_id: String,
    pub revision: u64,
}

/// Where leases live, shared by every replica (JetStream: one record per app id, changed by
/// compare-and-set on its revision).
pub trait Leases: Send + Sync + std::fmt::Debug {
    /// Takes the lease of `app_id` for `ttl` when nobody holds it or its holder let it run
    /// out; `None` when another replica holds it.
    fn acquire<'a>(&'a self, app_id: &'a str, ttl: Duration) -> LeaseFuture<'a, Option<Lease>>;
    /// Extends a held lease by `ttl` from now; `None` when it was lost (another replica took
    /// it).
    fn renew<'a>(&'a self, lease: &'a Lease, ttl: Duration) -> LeaseFuture<'a, Option<Lease>>;
    /// Gives a held lease up at once, so another replica takes the lane without waiting for
    /// it to run out.
    fn release<'a>(&'a self, lease: &'a Lease) -> LeaseFuture<'a, ()>;
}

/// Until when this replica may start requests for a lane (a tokio instant: paused time in
/// tests). Closed until granted.
#[derive(Debug, Clone, Default)]
pub struct Fence {
    until: Arc<Mutex<Option<Instant>>>,
}

impl Fence {
    fn grant(&self, until: Instant) {
        *self.until.lock().expect("fence lock") = Some(until);
    }

    fn close(&self) {
        *self.until.lock().expect("fence lock") = None;
    }

    /// Whether a request may start now.
    pub fn holds(&self) -> bool {
        self.until
            .lock()
            .expect("fence lock")
            .is_some_and(|until| Instant::now() < until)
    }

    fn deadline(&self) -> Option<Instant> {
        *self.until.lock().expect("fence lock")
    }
}

/// A lane's [`Sender`] behind its [`Fence`]: a request starts only while the fence holds;
/// otherwise it never starts (and never completes: the lane is stopped).
#[derive(Debug)]
pub struct FencedSender {
    inner: Arc<dyn Sender>,
    fence: Fence,
}

impl FencedSender {
    pub fn new(inner: Arc<dyn Sender>, fence: Fence) -> Self {
        Self { inner, fence }
    }
}

impl Sender for FencedSender {
    fn post(&self, path: &'static str, body: Bytes) -> SendFuture<'_> {
        if self.fence.holds() {
            self.inner.post(path, body)
        } else {
            tracing::warn!(
                message = "A request to Heap was not sent: this replica no longer holds the lane's lease.",
                endpoint = path,
            );
            Box::pin(std::future::pending())
        }
    }

    fn consumes(&self) -> bool {
        self.inner.consumes()
    }
}

/// How a led lane runs.
#[derive(Debug, Clone)]
pub struct Leadership {
    pub leases: Arc<dyn Leases>,
    /// The lease time: a dead holder's lane is taken over within about this long.
    pub ttl: Duration,
}

impl Leadership {
    /// The fence closes this long before the lease runs out (clock skew between replicas and
    /// the latency of the request that won the lease fit in it).
    fn margin(&self) -> Duration {
        self.ttl / 5
    }
    /// A held lease is renewed this often.
    fn renew_every(&self) -> Duration {
        self.ttl / 4
    }
    /// A replica that does not hold a lane asks for it this often.
    fn standby_every(&self) -> Duration {
        self.ttl / 10
    }
}

/// Runs a lane under its lease until `stop`: stands by while another replica holds it; while
/// this one holds it, runs `first`, then at every later takeover a [`Delivery`] made afresh by
/// `make` (what the last holder left is read from the queue) and renews the lease; when the lease is lost,
/// closes the fence and stops that delivery at once. On `stop`, lets the delivery finish its
/// request in flight and releases the lease. `leader` is the lane's
/// `currents_heap_lane_leader` series.
pub async fn run_led(
    leadership: Leadership,
    app_id: String,
    fence: Fence,
    first: Delivery,
    make: impl Fn() -> Delivery + Send + 'static,
    leader: IntGauge,
    stop: CancellationToken,
) -> Option<LaneCarry> {
    let mut carry = None;
    let mut first = Some(first);
    loop {
        leader.set(0);
        if stop.is_cancelled() {
            return carry;
        }
        let asked = Instant::now();
        let lease = match leadership.leases.acquire(&app_id, leadership.ttl).await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                wait(leadership.standby_every(), &stop).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(message = "Asking for a lane's lease failed; asking again.", app_id = %app_id, error = %e);
                wait(leadership.standby_every(), &stop).await;
                continue;
            }
        };
        fence.grant(asked + leadership.ttl - leadership.margin());
        leader.set(1);
        tracing::info!(message = "This replica holds the lane.", app_id = %app_id);
        let lane_stop = CancellationToken::new();
        let delivery = first.take().unwrap_or_else(&make);
        let mut task = tokio::spawn(delivery.run(lane_stop.clone()));
        let (held, finished) = hold(&leadership, &fence, lease, &stop, &mut task).await;
        match finished {
            Some(c) => carry = Some(c),
            None if held.is_some() => {
                // Stopping: the request in flight finishes, while the lease still covers it.
                lane_stop.cancel();
                carry = (&mut task).await.ok();
            }
            None => {
                // Lost: nothing more may start, and nothing in flight is waited for.
                fence.close();
                lane_stop.cancel();
                task.abort();
                let _ = task.await;
                tracing::warn!(message = "This replica lost the lane's lease; another replica delivers it.", app_id = %app_id);
            }
        }
        fence.close();
        leader.set(0);
        if let Some(lease) = held
            && let Err(e) = leadership.leases.release(&lease).await
        {
            tracing::warn!(message = "Releasing a lane's lease failed; it runs out by itself.", app_id = %app_id, error = %e);
        }
        if stop.is_cancelled() {
            return carry;
        }
    }
}

/// Renews the lease while the lane runs. Returns the lease when it is still held (stop, or the
/// lane ended by itself) and the lane's carry when it ended; `(None, None)` when the lease was
/// lost (another replica took it, or it could not be renewed before the fence closed).
async fn hold(
    leadership: &Leadership,
    fence: &Fence,
    mut lease: Lease,
    stop: &CancellationToken,
    task: &mut tokio::task::JoinHandle<LaneCarry>,
) -> (Option<Lease>, Option<LaneCarry>) {
    loop {
        tokio::select! {
            finished = &mut *task => return (Some(lease), finished.ok()),
            _ = stop.cancelled() => return (Some(lease), None),
            _ = tokio::time::sleep(leadership.renew_every()) => {}
        }
        let asked = Instant::now();
        match leadership.leases.renew(&lease, leadership.ttl).await {
            Ok(Some(renewed)) => {
                lease = renewed;
                fence.grant(asked + leadership.ttl - leadership.margin());
            }
            Ok(None) => return (None, None),
            Err(e) => {
                tracing::warn!(message = "Renewing a lane's lease failed; retrying until it runs out.", app_id = %lease.app_id, error = %e);
                if fence.deadline().is_none_or(|d| Instant::now() >= d) {
                    return (None, None);
                }
            }
        }
        if !fence.holds() {
            // The renewal came back after the fence closed (this replica was frozen, or NATS
            // slow): another replica may already hold the lane.
            return (None, None);
        }
    }
}

async fn wait(d: Duration, stop: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.cancelled() => {}
    }
}
