//! The two outbound budgets, enforced with governor: events per app id and events per
//! identity, each per window (Heap's minute).
//!
//! Heap states limits per minute; we must never exceed them in *any* sliding 60-second window,
//! as measured by Heap. A GCRA limiter with rate `r` and burst `b` admits at most `b + r·W`
//! cells in any window `W`, so we pick `b` = 1/60 of the budget (at most the bulk size) and
//! `r = (0.99·B − b) / W`: any window then holds at most 99 % of the budget — the 1 % covers
//! network jitter between our clock and Heap's — while a backlog drains at ~97 % of it.
//!
//! The limiters read tokio's clock ([`TokioClock`]) and waits sleep on tokio's timer, so a test
//! on paused time drives the budgets exactly, without waiting for real.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// Now, on tokio's clock (paused and advanced in tests) as a `std` instant.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    type Instant = std::time::Instant;

    fn now(&self) -> Self::Instant {
        tokio::time::Instant::now().into_std()
    }
}

type AppLimiter =
    RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<std::time::Instant>>;
type IdentityLimiter =
    RateLimiter<String, HashMapStateStore<String>, TokioClock, NoOpMiddleware<std::time::Instant>>;

/// Burst and quota of one budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetShape {
    pub burst: u32,
    pub period: Duration,
}

impl BudgetShape {
    /// `budget` cells per `window`, at most `max_burst` at once.
    pub fn new(budget: NonZeroU32, window: Duration, max_burst: u32) -> Self {
        let budget = budget.get();
        let usable = ((budget as f64) * 0.99).floor().max(1.0) as u32;
        let burst = (budget / 60).clamp(1, max_burst.max(1));
        if usable <= burst {
            // Tiny budgets: one cell per window, spaced a little more than a window apart.
            return Self {
                burst: 1,
                period: window + Duration::from_millis(1),
            };
        }
        Self {
            burst,
            period: window / (usable - burst),
        }
    }

    fn quota(&self) -> Quota {
        Quota::with_period(self.period)
            .expect("period is non-zero")
            .allow_burst(NonZeroU32::new(self.burst).expect("burst is at least 1"))
    }

    /// Cells per second once the burst is spent.
    pub fn rate(&self) -> f64 {
        1.0 / self.period.as_secs_f64()
    }
}

#[derive(Debug)]
pub struct Budgets {
    app: AppLimiter,
    identity: IdentityLimiter,
    app_shape: BudgetShape,
    identity_shape: BudgetShape,
}

impl Budgets {
    pub fn new(app: NonZeroU32, identity: NonZeroU32, window: Duration, max_batch: usize) -> Self {
        let app_shape = BudgetShape::new(app, window, max_batch.min(u32::MAX as usize) as u32);
        let identity_shape = BudgetShape::new(identity, window, u32::MAX);
        Self {
            app: RateLimiter::direct_with_clock(app_shape.quota(), TokioClock),
            identity: RateLimiter::hashmap_with_clock(identity_shape.quota(), TokioClock),
            app_shape,
            identity_shape,
        }
    }

    /// Whether `other` enforces the same budgets (so one can stand in for the other).
    pub fn same_shape(&self, other: &Budgets) -> bool {
        self.app_shape == other.app_shape && self.identity_shape == other.identity_shape
    }

    /// Largest number of events one request may carry (the app burst).
    pub fn max_batch(&self) -> usize {
        self.app_shape.burst as usize
    }

    pub fn app_shape(&self) -> BudgetShape {
        self.app_shape
    }

    pub fn identity_shape(&self) -> BudgetShape {
        self.identity_shape
    }

    /// Waits until `n` app cells (at most [`Self::max_batch`]) are free and takes them.
    /// Returns how long it waited. Cancel-safe: nothing is taken if the future is dropped.
    ///
    /// tokio's timer fires on whole milliseconds, later than asked; a lane that takes full
    /// bursts would lose that lateness for good (up to 1 % of the budget with a scaled window).
    /// So the timer sleep ends one tick early and the last fraction of a tick is slept on a
    /// blocking-pool thread, to the microsecond. On a paused clock (tests) that sleep does not
    /// move time, so a timer sleep finishes the wait.
    pub async fn take_app(&self, n: usize) -> Duration {
        const TICK: Duration = Duration::from_millis(1);
        let n = NonZeroU32::new(n.clamp(1, self.max_batch()) as u32).unwrap_or(NonZeroU32::MIN);
        let started = tokio::time::Instant::now();
        let mut waited = Duration::ZERO;
        let mut fine = false;
        // n <= burst, so the capacity error (`Err`) cannot happen.
        while let Ok(Err(not_until)) = self.app.check_n(n) {
            let wait = not_until.wait_time_from(TokioClock.now());
            if wait > TICK {
                tokio::time::sleep(wait - TICK).await;
                fine = false;
            } else if !fine {
                let _ = tokio::task::spawn_blocking(move || std::thread::sleep(wait)).await;
                fine = true;
            } else {
                tokio::time::sleep(wait).await;
            }
            waited = started.elapsed();
        }
        waited
    }

    /// Takes one identity cell for `key`, or tells how long until one is available.
    pub fn take_identity(&self, key: &str) -> Result<(), Duration> {
        match self.identity.check_key(&key.to_owned()) {
            Ok(()) => Ok(()),
            Err(not_until) => Err(not_until.wait_time_from(TokioClock.now())),
        }
    }

    /// Forgets identities whose budget is full again (bounds memory).
    pub fn forget_idle_identities(&self) {
        self.identity.retain_recent();
        self.identity.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Most cells a GCRA limiter of this shape admits in any half-open window `(t - W, t]`:
    /// the burst at once, then one per period.
    fn worst_window(shape: BudgetShape, window: Duration) -> u64 {
        shape.burst as u64 - 1 + (window.as_secs_f64() / shape.period.as_secs_f64()).ceil() as u64
    }

    #[test]
    fn no_window_can_exceed_the_budget() {
        let w = Duration::from_secs(60);
        for budget in [
            1u32, 2, 10, 59, 60, 100, 999, 1000, 15_000, 60_000, 1_000_000,
        ] {
            for max_burst in [1u32, 100, 1000] {
                let shape = BudgetShape::new(NonZeroU32::new(budget).unwrap(), w, max_burst);
                assert!(
                    worst_window(shape, w) <= budget as u64,
                    "budget {budget}, burst cap {max_burst}: {shape:?} admits {}",
                    worst_window(shape, w)
                );
                assert!(shape.burst <= max_burst);
            }
        }
    }

    #[test]
    fn defaults_drain_at_over_95_percent() {
        let w = Duration::from_secs(60);
        let app = BudgetShape::new(NonZeroU32::new(15_000).unwrap(), w, 1000);
        assert_eq!(app.burst, 250);
        let per_minute = app.rate() * 60.0;
        assert!(per_minute / 15_000.0 >= 0.96, "{per_minute}");
        let id = BudgetShape::new(NonZeroU32::new(1000).unwrap(), w, u32::MAX);
        assert!(id.rate() * 60.0 / 1000.0 >= 0.95);
        // Scaled windows keep the same shape.
        let scaled = BudgetShape::new(NonZeroU32::new(15_000).unwrap(), w / 10, 1000);
        assert_eq!(scaled.burst, app.burst);
        assert!((scaled.rate() - app.rate() * 10.0).abs() < 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_app_budget_waits_on_tokio_time_for_exactly_the_missing_cells() {
        // 6,000 a minute: a burst of 100, then one cell every 10.1 ms.
        let b = Budgets::new(
            NonZeroU32::new(6_000).unwrap(),
            NonZeroU32::new(6_000).unwrap(),
            Duration::from_secs(60),
            1000,
        );
        let shape = b.app_shape();
        assert_eq!(b.take_app(shape.burst as usize).await, Duration::ZERO);
        let started = tokio::time::Instant::now();
        let waited = b.take_app(10).await;
        assert_eq!(waited, started.elapsed(), "the wait is on tokio's clock");
        // tokio's timer has millisecond ticks: the wait ends on the first tick at or after.
        let tick = Duration::from_millis(1);
        assert!(
            waited >= shape.period * 10 && waited <= shape.period * 10 + tick,
            "{waited:?}"
        );
        let one = b.take_app(1).await;
        assert!(
            one >= shape.period - tick && one <= shape.period + tick,
            "{one:?}"
        );
    }

    #[tokio::test]
    async fn identity_over_budget_is_refused_with_a_wait() {
        let b = Budgets::new(
            NonZeroU32::new(15_000).unwrap(),
            NonZeroU32::new(120).unwrap(),
            Duration::from_secs(60),
            1000,
        );
        let burst = b.identity_shape().burst;
        for _ in 0..burst {
            b.take_identity("hot").unwrap();
        }
        let wait = b.take_identity("hot").unwrap_err();
        assert!(wait > Duration::ZERO && wait <= b.identity_shape().period);
        b.take_identity("cold").unwrap();
        assert_eq!(b.take_app(10).await, Duration::ZERO);
    }
}
