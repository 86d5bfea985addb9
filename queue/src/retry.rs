//! When a failed job runs again.

use std::time::Duration;

/// How a job type is retried after a failure.
///
/// After the `n`-th failed attempt the job waits
/// `min(initial_backoff * 2^(n-1), max_backoff)`, plus up to 10 % jitter
/// (derived from the job id, so jobs that failed together spread out), and is
/// then claimed again. The defaults ([`RetryPolicy::DEFAULT`]) are:
///
/// | setting | default |
/// |---|---|
/// | `max_attempts` | `None`: retried until it succeeds (failing jobs stay visible to operators) |
/// | `initial_backoff` | 10 seconds |
/// | `max_backoff` | 1 hour |
///
/// so a failing job runs again after about 10 s, 20 s, 40 s, ... and then
/// hourly. With `max_attempts: Some(n)`, the `n`-th failure marks the job
/// dead instead; so does any [`PerformError::permanent`](crate::PerformError::permanent).
///
/// ```
/// use std::time::Duration;
/// use skiplock::RetryPolicy;
///
/// const POLICY: RetryPolicy = RetryPolicy::DEFAULT
///     .max_attempts(5)
///     .initial_backoff(Duration::from_secs(1));
/// // After the third failure: 4 s, plus up to 10 % jitter.
/// let wait = POLICY.backoff(3, 42);
/// assert!(wait >= Duration::from_secs(4) && wait <= Duration::from_millis(4400));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts before the job is marked dead; `None` retries forever.
    pub max_attempts: Option<u32>,
    /// The wait after the first failure.
    pub initial_backoff: Duration,
    /// The longest wait between two attempts (before jitter).
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// The default policy: retry forever, 10 s doubling up to 1 hour.
    pub const DEFAULT: RetryPolicy = RetryPolicy {
        max_attempts: None,
        initial_backoff: Duration::from_secs(10),
        max_backoff: Duration::from_secs(3600),
    };

    /// This policy, but the job is dead after `attempts` failed attempts.
    /// `0` is treated as `1`: a job always runs at least once.
    pub const fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(if attempts == 0 { 1 } else { attempts });
        self
    }

    /// This policy, with another wait after the first failure.
    pub const fn initial_backoff(mut self, backoff: Duration) -> Self {
        self.initial_backoff = backoff;
        self
    }

    /// This policy, with another cap on the wait.
    pub const fn max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = backoff;
        self
    }

    /// Whether a job that has now failed `failed_attempts` times is dead.
    pub fn is_exhausted(&self, failed_attempts: u32) -> bool {
        self.max_attempts.is_some_and(|max| failed_attempts >= max)
    }

    /// The wait before the next attempt of a job that has now failed
    /// `failed_attempts` times (at least 1). `seed` spreads the jitter; the
    /// runner passes the job id.
    pub fn backoff(&self, failed_attempts: u32, seed: u64) -> Duration {
        let doublings = failed_attempts.saturating_sub(1).min(63);
        let base = self
            .initial_backoff
            .checked_mul(1u32.checked_shl(doublings.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(Duration::MAX)
            .min(self.max_backoff);
        // Up to 10 % more, the same for the same job and attempt.
        let spread = splitmix64(seed ^ u64::from(failed_attempts).rotate_left(32)) % 1_000;
        base + base.mul_f64(spread as f64 / 10_000.0)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped_with_at_most_ten_percent_jitter() {
        let policy = RetryPolicy::DEFAULT;
        for (attempt, base) in [
            (1, 10),
            (2, 20),
            (3, 40),
            (9, 2560),
            (10, 3600),
            (500, 3600),
        ] {
            for seed in 0..50 {
                let wait = policy.backoff(attempt, seed);
                let base = Duration::from_secs(base);
                assert!(
                    wait >= base && wait <= base.mul_f64(1.1),
                    "{attempt}: {wait:?}"
                );
            }
        }
    }

    #[test]
    fn jitter_differs_between_jobs() {
        let policy = RetryPolicy::DEFAULT;
        let waits: std::collections::HashSet<_> = (0..20).map(|id| policy.backoff(3, id)).collect();
        assert!(waits.len() > 10);
    }

    #[test]
    fn exhaustion_counts_failed_attempts() {
        let policy = RetryPolicy::DEFAULT.max_attempts(3);
        assert!(!policy.is_exhausted(2));
        assert!(policy.is_exhausted(3));
        assert!(!RetryPolicy::DEFAULT.is_exhausted(u32::MAX));
        assert_eq!(RetryPolicy::DEFAULT.max_attempts(0).max_attempts, Some(1));
    }
}
