//! Waiting for a condition with a deadline: never a fixed sleep to synchronise.

use std::time::{Duration, Instant};

/// Waits for `condition` with a deadline, polling every 10 ms without blocking the runtime:
/// for conditions that tasks on the same runtime must bring about (a gateway in the test's own
/// runtime, say). Returns whether it held.
pub async fn wait_until(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if condition() {
            return true;
        }
        if tokio::time::Instant::now() > end {
            return false;
        }
        // Polling interval of a condition wait with a deadline.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
