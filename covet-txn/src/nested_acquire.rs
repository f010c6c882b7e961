//! Taking a second pooled connection for a `requires_new` call without
//! letting the pool deadlock.
//!
//! A task that waits for a `requires_new` connection already holds at least
//! one connection of the same pool (its outer transaction's), and keeps it
//! while it waits. When the connections held by such waiting tasks reach the
//! pool's maximum, no connection will ever be given back: every waiter fails
//! at once with [`Error::PoolExhaustedByNesting`] instead of waiting for its
//! deadline. This module counts those connections per manager; it never
//! touches a connection itself.

use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use futures_util::future::{Either, select};
use tokio::sync::Notify;

use crate::error::Error;

/// The connections held by tasks waiting for a `requires_new` connection of
/// one manager's pool.
#[derive(Debug, Default)]
pub(crate) struct NestedAcquires {
    held_by_waiters: AtomicU32,
    /// Moves on each time the pool was found exhausted: every task waiting
    /// then fails, not only the one that completed the count (which stops
    /// counting as soon as it fails).
    exhaustions: AtomicU64,
    exhausted: Notify,
}

impl NestedAcquires {
    /// Waits for `acquire` on behalf of a task that holds `held` of the
    /// pool's `max` connections, failing as soon as every connection the
    /// pool may open is held by tasks waiting like this one.
    pub(crate) async fn wait<T>(
        &self,
        held: u32,
        max: u32,
        acquire: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let _waiting = Waiting {
            acquires: self,
            held,
        };
        let exhausted = self.exhausted.notified();
        let mut exhausted = std::pin::pin!(exhausted);
        // Registered before the count is read, so that a waiter that
        // completes the count in between still wakes this one.
        exhausted.as_mut().enable();
        let seen = self.exhaustions.load(Ordering::Acquire);
        let total = self.held_by_waiters.fetch_add(held, Ordering::AcqRel) + held;
        if total >= max {
            self.exhaustions.fetch_add(1, Ordering::AcqRel);
            self.exhausted.notify_waiters();
            return Err(Error::PoolExhaustedByNesting { held: total, max });
        }
        let mut acquire = std::pin::pin!(acquire);
        loop {
            match select(acquire.as_mut(), exhausted.as_mut()).await {
                Either::Left((acquired, _)) => return acquired,
                Either::Right(((), _)) => {
                    if self.exhaustions.load(Ordering::Acquire) != seen {
                        return Err(Error::PoolExhaustedByNesting { held: max, max });
                    }
                    exhausted.set(self.exhausted.notified());
                    exhausted.as_mut().enable();
                }
            }
        }
    }
}

/// One task's connections, counted while it waits.
struct Waiting<'a> {
    acquires: &'a NestedAcquires,
    held: u32,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.acquires
            .held_by_waiters
            .fetch_sub(self.held, Ordering::AcqRel);
    }
}
