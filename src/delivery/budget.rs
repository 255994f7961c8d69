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
//!
//! Across restarts (product.md §9): a GCRA limiter's whole state is one instant, when its
//! budget is whole again (its *refill time*); a fresh limiter is the same limiter after that
//! instant. So a restart can only exceed a budget if it comes before the refill time, by the
//! cells still owed. [`Budgets`] mirrors the refill times (governor keeps its own private),
//! tells the lane whether they are worth saving — only when the cells owed exceed what a fresh
//! start may add without any window going over the budget, the *slack* below it — and
//! restores saved ones by spending the owed cells at start.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

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

    /// Most cells this limiter admits in any window of `window`: the burst at once, then one
    /// per period.
    pub fn worst_window(&self, window: Duration) -> u64 {
        u64::from(self.burst) - 1 + window.as_nanos().div_ceil(self.period.as_nanos()) as u64
    }

    /// How far ahead of now the refill time may be before a fresh limiter (a restart that
    /// forgot it) could put more than `budget` cells in a window: the cells the shape leaves
    /// below the budget, in periods.
    fn slack(&self, budget: NonZeroU32, window: Duration) -> Duration {
        let spare = u64::from(budget.get()).saturating_sub(self.worst_window(window));
        self.period * spare.min(u64::from(u32::MAX)) as u32
    }
}

#[derive(Debug)]
pub struct Budgets {
    app: AppLimiter,
    identity: IdentityLimiter,
    app_shape: BudgetShape,
    identity_shape: BudgetShape,
    /// The refill times, mirrored on tokio's clock: the app's, and each identity's while it is
    /// in the future (pruned with the limiter).
    app_refill: Instant,
    identity_refill: HashMap<String, Instant>,
    app_slack: Duration,
    identity_slack: Duration,
    /// Until then, an identity first seen by this limiter may owe what the last process did not
    /// save (at most its slack): it is charged for it ([`Self::start`]).
    identity_unsaved_until: Instant,
}

/// A budget's refill time as saved: UNIX µs, wall clock.
fn to_unix_micros(at: Instant) -> i64 {
    let now = crate::queue::unix_micros();
    let ahead = at.saturating_duration_since(Instant::now()).as_micros();
    now.saturating_add(i64::try_from(ahead).unwrap_or(i64::MAX))
}

/// How far ahead of now a saved UNIX µs time is (zero when past).
pub(super) fn ahead_of_now(unix_micros: i64) -> Duration {
    let ahead = unix_micros.saturating_sub(crate::queue::unix_micros());
    Duration::from_micros(ahead.max(0) as u64)
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
            app_refill: Instant::now(),
            identity_refill: HashMap::new(),
            app_slack: app_shape.slack(app, window),
            identity_slack: identity_shape.slack(identity, window),
            identity_unsaved_until: Instant::now(),
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
    pub async fn take_app(&mut self, n: usize) -> Duration {
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
        self.app_refill = spent(self.app_refill, self.app_shape, n.get());
        waited
    }

    /// Takes one identity cell for `key`, or tells how long until one is available.
    pub fn take_identity(&mut self, key: &str) -> Result<(), Duration> {
        let unsaved = self
            .identity_unsaved_until
            .saturating_duration_since(Instant::now());
        if !unsaved.is_zero() && !self.identity_refill.contains_key(key) {
            self.restore_identity(key, unsaved);
        }
        match self.identity.check_key(&key.to_owned()) {
            Ok(()) => {
                let shape = self.identity_shape;
                let refill = self
                    .identity_refill
                    .entry(key.to_owned())
                    .or_insert_with(Instant::now);
                *refill = spent(*refill, shape, 1);
                Ok(())
            }
            Err(not_until) => Err(not_until.wait_time_from(TokioClock.now())),
        }
    }

    /// Forgets identities whose budget is full again (bounds memory).
    pub fn forget_idle_identities(&mut self) {
        self.identity.retain_recent();
        self.identity.shrink_to_fit();
        let now = Instant::now();
        self.identity_refill.retain(|_, at| *at > now);
        self.identity_refill.shrink_to_fit();
    }

    /// The app budget's refill time (UNIX µs) when a restart that forgot it could exceed the
    /// budget, else `None`.
    pub fn app_worth_saving(&self) -> Option<i64> {
        let owed = self.app_refill.saturating_duration_since(Instant::now());
        (owed > self.app_slack).then(|| to_unix_micros(self.app_refill))
    }

    /// The identities whose refill time a restart must not forget, with it (UNIX µs), sorted.
    pub fn identities_worth_saving(&self) -> Vec<(String, i64)> {
        let now = Instant::now();
        let mut worth: Vec<(String, i64)> = self
            .identity_refill
            .iter()
            .filter(|(_, at)| at.saturating_duration_since(now) > self.identity_slack)
            .map(|(k, at)| (k.clone(), to_unix_micros(*at)))
            .collect();
        worth.sort();
        worth
    }

    /// A process starts: what the last one saved is `app_owed` (zero if nothing). What it did
    /// not save owes at most the slack — it saved whenever it owed more — so the start is
    /// charged the larger of the two, and each identity first used within its slack from now
    /// is charged what is left of it. A crash loop thus never forgives the slack twice.
    pub fn start(&mut self, app_owed: Duration) {
        self.restore_app(app_owed.max(self.app_slack));
        self.identity_unsaved_until = Instant::now() + self.identity_slack;
    }

    /// Continues from the budgets of a lane this one replaces (a reload that changed their
    /// shape): what the old limiters still owed, in time, is owed by the new ones.
    pub fn continue_from(&mut self, old: &Budgets) {
        let now = Instant::now();
        self.restore_app(old.app_refill.saturating_duration_since(now));
        for (key, at) in &old.identity_refill {
            self.restore_identity(key, at.saturating_duration_since(now));
        }
        self.identity_unsaved_until = self.identity_unsaved_until.max(old.identity_unsaved_until);
    }

    /// Continues from a saved app refill time: spends the cells still owed (at most a burst).
    pub fn restore_app(&mut self, owed: Duration) {
        let cells = owed_cells(owed, self.app_shape);
        if let Some(n) = NonZeroU32::new(cells) {
            let _ = self.app.check_n(n);
            self.app_refill = spent(self.app_refill, self.app_shape, cells);
        }
    }

    /// Continues from a saved identity refill time.
    pub fn restore_identity(&mut self, key: &str, owed: Duration) {
        let cells = owed_cells(owed, self.identity_shape);
        if let Some(n) = NonZeroU32::new(cells) {
            let _ = self.identity.check_key_n(&key.to_owned(), n);
            let refill = self
                .identity_refill
                .entry(key.to_owned())
                .or_insert_with(Instant::now);
            *refill = spent(*refill, self.identity_shape, cells);
        }
    }
}

/// The refill time after `n` more cells were taken now: GCRA's arrival time.
fn spent(refill: Instant, shape: BudgetShape, n: u32) -> Instant {
    refill.max(Instant::now()) + shape.period * n
}

/// Cells a limiter of `shape` still owes `owed` ahead of now, rounded up, at most a burst.
fn owed_cells(owed: Duration, shape: BudgetShape) -> u32 {
    let cells = owed.as_nanos().div_ceil(shape.period.as_nanos().max(1));
    cells.min(u128::from(shape.burst)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_window_can_exceed_the_budget() {
        let w = Duration::from_secs(60);
        for budget in [
            1u32, 2, 10, 59, 60, 100, 999, 1000, 15_000, 60_000, 1_000_000,
        ] {
            for max_burst in [1u32, 100, 1000] {
                let shape = BudgetShape::new(NonZeroU32::new(budget).unwrap(), w, max_burst);
                assert!(
                    shape.worst_window(w) <= budget as u64,
                    "budget {budget}, burst cap {max_burst}: {shape:?} admits {}",
                    shape.worst_window(w)
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
        let mut b = Budgets::new(
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

    #[tokio::test(start_paused = true)]
    async fn a_new_budget_shape_owes_what_the_old_one_spent() {
        let minute = Duration::from_secs(60);
        let nz = |n| NonZeroU32::new(n).unwrap();
        let mut old = Budgets::new(nz(6_000), nz(6_000), minute, 1000);
        assert_eq!(old.take_app(100).await, Duration::ZERO, "a burst");
        let owed = old.app_shape().period * 100;
        // A reload raises the budget: a larger burst, a shorter period.
        let mut new = Budgets::new(nz(12_000), nz(6_000), minute, 1000);
        assert!(!new.same_shape(&old));
        new.continue_from(&old);
        let waited = new.take_app(new.max_batch()).await;
        assert!(
            waited + Duration::from_millis(1) >= owed,
            "the new shape sent a whole burst {waited:?} after the old one's (owed {owed:?})"
        );
    }

    #[tokio::test]
    async fn identity_over_budget_is_refused_with_a_wait() {
        let mut b = Budgets::new(
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
