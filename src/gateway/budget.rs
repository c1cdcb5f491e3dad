//! Memory budgets: the bytes one connection, and the whole gateway, may hold in requests and
//! answers at once.
//!
//! A request takes its bytes before it is decoded and run (what decoding builds, and the most
//! its answer can be); it gives back what its answer did not use once the answer is built,
//! and the rest once the answer is written. A connection that cannot get its bytes stops
//! reading, so a client that sends faster than it reads, or asks for more than it can take,
//! is slowed down rather than buffered. Bytes are taken from the connection's budget first,
//! then from the gateway's, always in that order, so two requests can never wait on each
//! other.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A connection's view of the budgets.
#[derive(Clone)]
pub struct Budgets {
    connection: Arc<Semaphore>,
    connection_cap: usize,
    gateway: Arc<Semaphore>,
}

/// Bytes held against both budgets; dropped, they go back.
pub struct Held {
    connection: Option<OwnedSemaphorePermit>,
    gateway: Option<OwnedSemaphorePermit>,
}

impl Budgets {
    /// A new connection's budget of `connection_cap` bytes, inside the shared `gateway` one.
    pub fn new(connection_cap: usize, gateway: Arc<Semaphore>) -> Budgets {
        Budgets {
            connection: Arc::new(Semaphore::new(connection_cap)),
            connection_cap,
            gateway,
        }
    }

    /// The most one request may hold.
    pub fn cap(&self) -> usize {
        self.connection_cap
    }

    /// Holds nothing yet (see [`Held::grow`]).
    pub fn none(&self) -> Held {
        Held {
            connection: None,
            gateway: None,
        }
    }

    /// Waits for `bytes` (at most [`Budgets::cap`]; more is clamped to it) from the
    /// connection's budget, then from the gateway's.
    pub async fn take(&self, bytes: usize) -> Held {
        let bytes = u32::try_from(bytes.min(self.connection_cap)).unwrap_or(u32::MAX);
        if bytes == 0 {
            return Held {
                connection: None,
                gateway: None,
            };
        }
        // The semaphores are never closed, so acquiring fails only if they were; then there
        // is nothing to hold.
        let connection = self.connection.clone().acquire_many_owned(bytes).await.ok();
        let gateway = self.gateway.clone().acquire_many_owned(bytes).await.ok();
        Held {
            connection,
            gateway,
        }
    }
}

impl Held {
    /// Takes `bytes` more (as [`Budgets::take`]) and holds them with these.
    pub async fn grow(&mut self, budgets: &Budgets, bytes: usize) {
        let more = budgets.take(bytes).await;
        for (mine, theirs) in [
            (&mut self.connection, more.connection),
            (&mut self.gateway, more.gateway),
        ] {
            match (mine.as_mut(), theirs) {
                (Some(mine), Some(theirs)) => mine.merge(theirs),
                (None, theirs) => *mine = theirs,
                (Some(_), None) => {}
            }
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.gateway.as_ref().map_or(0, |p| p.num_permits())
    }

    /// Gives back everything above `bytes`.
    pub fn shrink_to(&mut self, bytes: usize) {
        for permit in [&mut self.connection, &mut self.gateway]
            .into_iter()
            .flatten()
        {
            let excess = permit.num_permits().saturating_sub(bytes);
            if excess > 0 {
                drop(permit.split(excess));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[tokio::test]
    async fn bytes_come_back_when_shrunk_and_dropped() {
        let gateway = Arc::new(Semaphore::new(100));
        let budgets = Budgets::new(60, gateway.clone());
        let mut held = budgets.take(50).await;
        assert_eq!(held.bytes(), 50);
        assert_eq!(gateway.available_permits(), 50);
        held.shrink_to(20);
        assert_eq!(held.bytes(), 20);
        assert_eq!(gateway.available_permits(), 80);
        assert_eq!(budgets.connection.available_permits(), 40);
        // More than the connection may hold is clamped, not waited for forever.
        let big = budgets.take(1000);
        drop(held);
        let big = big.await;
        assert_eq!(big.bytes(), 60);
        drop(big);
        assert_eq!(gateway.available_permits(), 100);
    }

    #[tokio::test]
    async fn a_connection_at_its_cap_waits_while_others_go_on() {
        let gateway = Arc::new(Semaphore::new(100));
        let greedy = Budgets::new(40, gateway.clone());
        let other = Budgets::new(40, gateway.clone());
        let first = greedy.take(40).await;
        let second = greedy.take(1);
        tokio::pin!(second);
        assert!(second.as_mut().now_or_never().is_none());
        let theirs = other.take(40).await;
        assert_eq!(theirs.bytes(), 40);
        drop(first);
        assert_eq!(second.await.bytes(), 1);
    }
}
