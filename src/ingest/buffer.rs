//! The ingest memory budget: bytes of request bodies held at once, all requests together.
//!
//! Why bytes, and why reserved as the body grows: a count of "body slots" bounds memory only
//! by `slots × largest body` (hundreds of MiB), and a client that opens a body and stalls holds
//! a whole slot, so a few stalled uploads starve everyone. Here a request reserves what it
//! actually holds — the raw body as its frames arrive (not the declared `Content-Length`: a
//! client that declares 8 MiB and stalls must not hold 8 MiB), the decoded body as it inflates
//! — and gives it back when it is answered. The price: when many large uploads arrive at once
//! and together outgrow the budget, each waits for room with what it has; the first to reach
//! its deadline answers 503 and frees its share for the next (the semaphore is fair), so the
//! budget drains instead of staying deadlocked. A stalled
//! upload holds only what it sent. A request that cannot get room within
//! `--ingest-wait-timeout` is answered 503 + `Retry-After` (Braze retries later) instead of
//! waiting without bound, and while any request waits, `/readyz` reports the instance saturated
//! so a load balancer sends new work elsewhere.
//!
//! The budget is a semaphore counted in KiB (tokio takes at most `u32` permits per acquire).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;

/// The unit of the semaphore's permits.
const UNIT: u64 = 1024;

/// No room in the budget within the wait deadline (or the budget was closed at shutdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoom {
    Saturated,
    Closed,
}

#[derive(Debug)]
pub struct IngestBuffer {
    permits: Semaphore,
    capacity_units: u32,
    wait: Duration,
    waiting: AtomicUsize,
}

impl IngestBuffer {
    pub fn new(capacity_bytes: u64, wait: Duration) -> Self {
        let capacity_units = (capacity_bytes / UNIT).clamp(1, u64::from(u32::MAX)) as u32;
        Self {
            permits: Semaphore::new(capacity_units as usize),
            capacity_units,
            wait,
            waiting: AtomicUsize::new(0),
        }
    }

    /// An empty reservation, grown with [`Reservation::grow_to`].
    pub fn reservation(&self) -> Reservation<'_> {
        Reservation {
            buffer: self,
            units: 0,
        }
    }

    /// Bytes reserved by requests right now.
    pub fn used_bytes(&self) -> u64 {
        u64::from(self.capacity_units)
            .saturating_sub(self.permits.available_permits() as u64)
            .saturating_mul(UNIT)
    }

    /// Requests waiting for room right now (> 0 means the instance is saturated).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Wakes every waiter with [`NoRoom::Closed`]; used when the server stops.
    pub fn close(&self) {
        self.permits.close();
    }
}

/// Bytes one request holds in the budget; given back on drop.
#[derive(Debug)]
pub struct Reservation<'a> {
    buffer: &'a IngestBuffer,
    units: u32,
}

impl Reservation<'_> {
    /// Grows the reservation to cover `bytes`, waiting at most the budget's wait timeout.
    /// A request larger than the whole budget can never fit: it is refused at once.
    pub async fn grow_to(&mut self, bytes: u64) -> Result<(), NoRoom> {
        let want = units_for(bytes);
        if want <= self.units {
            return Ok(());
        }
        if want > self.buffer.capacity_units {
            return Err(NoRoom::Saturated);
        }
        let more = want - self.units;
        let permit = match self.buffer.permits.try_acquire_many(more) {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::Closed) => return Err(NoRoom::Closed),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                // Counted while waiting, and uncounted even if this future is dropped (a reset
                // stream, a body deadline): a count that sticks would keep /readyz at 503.
                let _waiting = Waiting::enter(&self.buffer.waiting);
                let got =
                    tokio::time::timeout(self.buffer.wait, self.buffer.permits.acquire_many(more))
                        .await;
                match got {
                    Ok(Ok(p)) => p,
                    Ok(Err(_)) => return Err(NoRoom::Closed),
                    Err(_) => return Err(NoRoom::Saturated),
                }
            }
        };
        permit.forget();
        self.units = want;
        Ok(())
    }

    /// Gives back what is reserved beyond `bytes` (a compressed body, once decoded).
    pub fn shrink_to(&mut self, bytes: u64) {
        let keep = units_for(bytes);
        if keep < self.units {
            self.buffer
                .permits
                .add_permits((self.units - keep) as usize);
            self.units = keep;
        }
    }

    pub fn bytes(&self) -> u64 {
        u64::from(self.units) * UNIT
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.units > 0 {
            self.buffer.permits.add_permits(self.units as usize);
        }
    }
}

/// One request waiting for room; uncounted when dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn units_for(bytes: u64) -> u32 {
    bytes.div_ceil(UNIT).min(u64::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_add_up_and_are_given_back() {
        let b = IngestBuffer::new(10 * UNIT, Duration::from_millis(10));
        let mut r1 = b.reservation();
        r1.grow_to(3 * UNIT + 1).await.unwrap();
        assert_eq!(b.used_bytes(), 4 * UNIT);
        let mut r2 = b.reservation();
        r2.grow_to(6 * UNIT).await.unwrap();
        assert_eq!(b.used_bytes(), 10 * UNIT);
        r1.shrink_to(UNIT);
        assert_eq!(b.used_bytes(), 7 * UNIT);
        drop(r2);
        drop(r1);
        assert_eq!(b.used_bytes(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_budget_refuses_after_the_wait_and_counts_the_waiter() {
        let b = std::sync::Arc::new(IngestBuffer::new(4 * UNIT, Duration::from_secs(5)));
        let mut held = b.reservation();
        held.grow_to(4 * UNIT).await.unwrap();
        let b2 = std::sync::Arc::clone(&b);
        let waiter = tokio::spawn(async move {
            let mut r = b2.reservation();
            r.grow_to(UNIT).await
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(b.waiting(), 1);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(waiter.await.unwrap(), Err(NoRoom::Saturated));
        assert_eq!(b.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gets_room_when_a_holder_finishes() {
        let b = std::sync::Arc::new(IngestBuffer::new(4 * UNIT, Duration::from_secs(5)));
        let mut held = b.reservation();
        held.grow_to(4 * UNIT).await.unwrap();
        let b2 = std::sync::Arc::clone(&b);
        let waiter = tokio::spawn(async move {
            let mut r = b2.reservation();
            r.grow_to(2 * UNIT).await.map(|_| r.bytes())
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(held);
        assert_eq!(waiter.await.unwrap(), Ok(2 * UNIT));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_dropped_mid_wait_is_no_longer_counted() {
        let b = std::sync::Arc::new(IngestBuffer::new(4 * UNIT, Duration::from_secs(5)));
        let mut held = b.reservation();
        held.grow_to(4 * UNIT).await.unwrap();
        let b2 = std::sync::Arc::clone(&b);
        let waiter = tokio::spawn(async move { b2.reservation().grow_to(UNIT).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(b.waiting(), 1);
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(
            b.waiting(),
            0,
            "a cancelled wait must not leave the instance saturated"
        );
    }

    #[tokio::test]
    async fn more_than_the_whole_budget_is_refused_at_once_and_close_wakes_waiters() {
        let b = IngestBuffer::new(4 * UNIT, Duration::from_secs(3600));
        assert_eq!(
            b.reservation().grow_to(5 * UNIT).await,
            Err(NoRoom::Saturated)
        );
        let mut held = b.reservation();
        held.grow_to(4 * UNIT).await.unwrap();
        b.close();
        assert_eq!(b.reservation().grow_to(UNIT).await, Err(NoRoom::Closed));
    }
}
