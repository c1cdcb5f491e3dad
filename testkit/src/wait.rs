//! Waiting for a condition with a deadline: never a fixed sleep to synchronise.
//!
//! [`wait_for`] is the one async wait every test uses: it polls an async check on tokio's
//! clock (so it also runs under paused time) and hands back what the check found.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often [`wait_for`] asks again.
pub const POLL: Duration = Duration::from_millis(10);

/// Asks `check` every [`POLL`] until it answers `Some`, for at most `deadline` (tokio's
/// clock); returns that answer, or `None` once the deadline passed. The check runs at least
/// once, and once more at the deadline. For example (`store` and `shard` from the test):
///
/// ```text
/// let swept = wait_for(Duration::from_secs(10), || async {
///     let swept = store.sweep(shard).await.ok()?;
///     (swept.unresolved == 0).then_some(swept)
/// })
/// .await
/// .expect("the sweep finishes every intent");
/// ```
pub async fn wait_for<T, Check, Checked>(deadline: Duration, mut check: Check) -> Option<T>
where
    Check: FnMut() -> Checked,
    Checked: Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        let last_chance = tokio::time::Instant::now() >= end;
        if let Some(found) = check().await {
            return Some(found);
        }
        if last_chance {
            return None;
        }
        // Polling interval of a condition wait with a deadline.
        tokio::time::sleep(POLL.min(end - tokio::time::Instant::now())).await;
    }
}

/// Waits for `condition` with a deadline, polling every 10 ms without blocking the runtime:
/// for conditions that tasks on the same runtime must bring about (a gateway in the test's own
/// runtime, say). Returns whether it held.
pub async fn wait_until(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    wait_for(deadline, || std::future::ready(condition().then_some(())))
        .await
        .is_some()
}

/// Waits for `condition` with a deadline, polling every 20 ms and blocking the thread (for
/// conditions outside the runtime: processes, servers). Returns whether it held.
pub fn wait_until_blocking(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        // Polling interval of a condition wait with a deadline.
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn it_answers_what_the_check_found_or_none_at_the_deadline() {
        let started = tokio::time::Instant::now();
        let mut asked = 0;
        let found = wait_for(Duration::from_secs(1), || {
            asked += 1;
            let now = asked;
            async move { (now == 5).then_some(now) }
        })
        .await;
        assert_eq!(found, Some(5));
        assert_eq!(started.elapsed(), POLL * 4);
        let started = tokio::time::Instant::now();
        let never: Option<()> = wait_for(Duration::from_secs(1), || async { None }).await;
        assert_eq!(never, None);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }
}
