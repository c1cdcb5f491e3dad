//! Capped exponential backoff with full jitter: the one retry schedule of the store (retrying
//! a shard) and the Rust client (retrying the gateway).
//!
//! Attempt `n` waits a random time in `[0, min(max, base * 2^n)]`. The jitter spreads out
//! callers that failed together (a failover fails every caller of a shard at once), so they
//! do not come back together; the cap keeps a long outage from growing the wait past what a
//! caller with a deadline can use. Pure apart from the random draw, which
//! [`Backoff::delay_from`] takes as an argument, so tests need neither a clock nor randomness.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

/// A backoff schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The cap of the first retry's wait; it doubles per attempt.
    pub base: Duration,
    /// The largest cap.
    pub max: Duration,
}

/// Past this many doublings the cap is `max` for any sensible `base` (2^16 × 1 ms > 1 min).
const MAX_DOUBLINGS: u32 = 16;

impl Backoff {
    /// The longest wait of attempt `attempt` (0 for the first retry).
    pub fn cap(&self, attempt: u32) -> Duration {
        self.base
            .saturating_mul(1u32 << attempt.min(MAX_DOUBLINGS))
            .min(self.max)
    }

    /// A random wait for attempt `attempt`, in `[0, cap(attempt)]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_from(attempt, RandomState::new().hash_one(attempt))
    }

    /// The wait for attempt `attempt` given the random draw `random`.
    pub fn delay_from(&self, attempt: u32, random: u64) -> Duration {
        self.cap(attempt)
            .mul_f64((random % 10_000) as f64 / 10_000.0)
    }

    /// [`Backoff::delay`], but never past `remaining`: a caller with a deadline wakes up in
    /// time for one more attempt or for giving up.
    pub fn delay_within(&self, attempt: u32, remaining: Duration) -> Duration {
        self.delay(attempt).min(remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_cap_doubles_per_attempt_up_to_the_maximum() {
        let b = Backoff {
            base: 10 * MS,
            max: 500 * MS,
        };
        let caps: Vec<Duration> = (0..8).map(|a| b.cap(a)).collect();
        assert_eq!(caps, [10, 20, 40, 80, 160, 320, 500, 500].map(|ms| ms * MS));
        assert_eq!(
            b.cap(u32::MAX),
            500 * MS,
            "no overflow however many attempts"
        );
        let huge = Backoff {
            base: Duration::MAX,
            max: Duration::MAX,
        };
        assert_eq!(
            huge.cap(40),
            Duration::MAX,
            "saturates instead of overflowing"
        );
    }

    #[test]
    fn delays_stay_within_the_cap_and_spread_over_it() {
        let b = Backoff {
            base: 100 * MS,
            max: 100 * MS,
        };
        assert_eq!(b.delay_from(0, 0), Duration::ZERO);
        assert_eq!(b.delay_from(0, 5_000), 50 * MS);
        assert!(b.delay_from(0, 9_999) < 100 * MS);
        let draws: Vec<Duration> = (0..64).map(|_| b.delay(3)).collect();
        assert!(draws.iter().all(|d| *d <= 100 * MS));
        let distinct: std::collections::BTreeSet<Duration> = draws.into_iter().collect();
        assert!(
            distinct.len() > 8,
            "full jitter must spread retries, got {distinct:?}"
        );
    }

    #[test]
    fn a_delay_never_outlasts_the_time_left() {
        let b = Backoff {
            base: Duration::from_secs(10),
            max: Duration::from_secs(10),
        };
        for _ in 0..32 {
            assert!(b.delay_within(5, 3 * MS) <= 3 * MS);
        }
    }
}
