//! A circuit breaker per shard: after `failures_to_open` consecutive failures the shard's
//! requests fail at once (no connection attempt, no waiting on a timeout) for `cooldown`; then
//! one probe request is let through, and its outcome closes or reopens the breaker.
//!
//! Pure state and time arithmetic; the caller passes `now`, so tests need no clock. Times are
//! tokio's, as the store's are, so that a cooldown follows paused time in tests.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// What the breaker says about sending a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Send it.
    Yes,
    /// Send it as the single probe of a half-open breaker.
    Probe,
    /// Do not send it: fail fast.
    No,
}

/// The breaker's state, for metrics and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// One probe is (or may be) in flight.
    HalfOpen,
    /// Requests fail fast.
    Open,
}

impl BreakerState {
    /// 0 closed, 1 half-open, 2 open: the value of the state gauge.
    pub fn as_gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }

    /// Lower-case name for status pages.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }
}

#[derive(Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// One shard's breaker.
#[derive(Debug)]
pub struct Breaker {
    failures_to_open: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(failures_to_open: u32, cooldown: Duration) -> Breaker {
        Breaker {
            failures_to_open: failures_to_open.max(1),
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a plain value; a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May a request be sent at `now`?
    pub fn admit(&self, now: Instant) -> Admit {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Admit::Yes,
            State::Open { until } if now < until => Admit::No,
            State::Open { .. } => {
                *state = State::HalfOpen { probing: true };
                Admit::Probe
            }
            State::HalfOpen { probing: true } => Admit::No,
            State::HalfOpen { probing: false } => {
                *state = State::HalfOpen { probing: true };
                Admit::Probe
            }
        }
    }

    /// The shard answered.
    pub fn success(&self) {
        *self.lock() = State::Closed { failures: 0 };
    }

    /// The shard failed at `now`. Returns true when this failure opened the breaker.
    pub fn failure(&self, now: Instant) -> bool {
        let mut state = self.lock();
        match *state {
            State::Closed { failures } if failures + 1 < self.failures_to_open => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            State::Open { .. } => false,
            _ => {
                *state = State::Open {
                    until: now + self.cooldown,
                };
                true
            }
        }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_probes_after_the_cooldown() {
        let b = Breaker::new(3, Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(b.admit(t0), Admit::Yes);
        assert!(!b.failure(t0));
        b.success();
        assert!(!b.failure(t0));
        assert!(!b.failure(t0));
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.failure(t0), "the third consecutive failure opens it");
        assert_eq!(b.admit(t0 + Duration::from_millis(999)), Admit::No);
        let later = t0 + Duration::from_secs(1);
        assert_eq!(b.admit(later), Admit::Probe);
        assert_eq!(b.admit(later), Admit::No, "only one probe at a time");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.failure(later), "a failed probe reopens it");
        assert_eq!(b.admit(later), Admit::No);
        let again = later + Duration::from_secs(1);
        assert_eq!(b.admit(again), Admit::Probe);
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(again), Admit::Yes);
    }
}
