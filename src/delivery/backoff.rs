//! Exponential backoff with full jitter, as a validated type.

use std::time::Duration;

/// `delay(attempt)` is uniform in `[0, min(cap, base × 2^attempt)]` ("full jitter"): retries of
/// many forwarders, or of many batches, spread out instead of arriving together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
}

impl Backoff {
    /// The longest delay.
    pub fn cap(&self) -> Duration {
        self.cap
    }
}

impl Backoff {
    pub fn try_new(base: Duration, cap: Duration) -> Result<Self, String> {
        if base.is_zero() {
            return Err("the base delay must be greater than zero".into());
        }
        if cap < base {
            return Err(format!(
                "the cap ({cap:?}) must be at least the base delay ({base:?})"
            ));
        }
        Ok(Self { base, cap })
    }

    /// The upper bound of the delay after `attempt` consecutive failures (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// A random delay in `[0, ceiling(attempt)]`; `unit` is a uniform sample in `[0, 1]`.
    pub fn delay_with(&self, attempt: u32, unit: f64) -> Duration {
        self.ceiling(attempt).mul_f64(unit.clamp(0.0, 1.0))
    }

    /// A random delay in `[0, ceiling(attempt)]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, rand::random::<f64>())
    }
}

/// The configured retry delays (validated there: `0 < initial <= max`).
impl From<&crate::config::RetryBackoff> for Backoff {
    fn from(r: &crate::config::RetryBackoff) -> Self {
        let base = r.initial.max(Duration::from_nanos(1));
        Self {
            base,
            cap: r.max.max(base),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let b = Backoff::try_new(Duration::from_secs(1), Duration::from_secs(60)).unwrap();
        let secs: Vec<u64> = (0..9).map(|a| b.ceiling(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn delay_is_full_jitter_within_the_ceiling() {
        let b = Backoff::try_new(Duration::from_millis(100), Duration::from_secs(10)).unwrap();
        assert_eq!(b.delay_with(3, 0.0), Duration::ZERO);
        assert_eq!(b.delay_with(3, 1.0), Duration::from_millis(800));
        assert_eq!(b.delay_with(3, 0.5), Duration::from_millis(400));
        for a in 0..40 {
            assert!(b.delay(a) <= b.ceiling(a));
        }
    }

    #[test]
    fn invalid_parameters_are_refused() {
        assert!(Backoff::try_new(Duration::ZERO, Duration::from_secs(1)).is_err());
        assert!(Backoff::try_new(Duration::from_secs(2), Duration::from_secs(1)).is_err());
    }
}
