//! One function's adaptive admission limit and its retry lane.
//!
//! First attempts wait for one of `limit` permits; the limit shrinks by a
//! quarter when an attempt fails with a conflict and grows by `1 / limit`
//! when one commits (additive increase, multiplicative decrease), between 1
//! and the pool's size. Retries do not compete with first attempts: they go
//! through one lane, one at a time, instead of sleeping their backoff. Both
//! queues are tokio semaphores, which hand permits out first come, first
//! served, and forget a waiter whose future is dropped.
//!
//! Measured on the contended-transfer benchmark (see the README's
//! performance section): the lane keeps retries from colliding again with
//! everyone else, and the limit adapts to zero cost when nothing conflicts.
//! Halving it instead cut retries by 10–25 % and p99 in most contended
//! cells, with committed/s level within the noise of a loaded machine, but
//! MariaDB at 100 rows × 8 tasks measured 0.89–1.00× against 0.95–1.01×
//! (each rare conflict throttles longer), so a quarter stays.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What a conflict leaves of the limit.
const DECREASE: f64 = 0.75;

/// A function's admission state.
#[derive(Debug)]
pub(crate) struct FunctionGate {
    attempts: Arc<Semaphore>,
    lane: Arc<Semaphore>,
    limit: Mutex<Limit>,
    /// Whether any attempt went through the limit (a function whose calls
    /// only declare keys has none).
    limited: AtomicBool,
    /// Attempts of the function waiting for any of their turns.
    waiting: AtomicU32,
}

/// The limit and the permits that stand for it.
#[derive(Debug)]
struct Limit {
    current: f64,
    ceiling: f64,
    /// Permits that exist, handed out or not.
    granted: u32,
    /// Permits to destroy as they come back, because the limit fell below
    /// what was handed out.
    debt: u32,
}

impl Limit {
    fn effective(&self) -> u32 {
        self.granted - self.debt
    }

    /// The whole number of attempts the limit admits at once.
    fn target(&self) -> u32 {
        // The limit stays within 1..=ceiling, so the cast cannot truncate
        // more than its fraction.
        self.current.floor().max(1.0) as u32
    }
}

/// Which queue an attempt waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Queue {
    /// A first attempt, under the adaptive limit.
    First,
    /// A retry, through the one-at-a-time lane.
    Retry,
}

/// A permit of a [`FunctionGate`], given back when dropped.
#[derive(Debug)]
pub(crate) struct GatePermit {
    gate: Arc<FunctionGate>,
    permit: Option<OwnedSemaphorePermit>,
    queue: Queue,
}

impl FunctionGate {
    /// A gate that starts with `ceiling` attempts admitted at once (the
    /// pool's size: more could not run anyway).
    pub(crate) fn new(ceiling: u32) -> Self {
        let ceiling = ceiling.max(1);
        FunctionGate {
            attempts: Arc::new(Semaphore::new(ceiling as usize)),
            lane: Arc::new(Semaphore::new(1)),
            limit: Mutex::new(Limit {
                current: f64::from(ceiling),
                ceiling: f64::from(ceiling),
                granted: ceiling,
                debt: 0,
            }),
            limited: AtomicBool::new(false),
            waiting: AtomicU32::new(0),
        }
    }

    /// Waits for a permit in `queue`, first come, first served. Dropping
    /// the future leaves the queue and takes nothing.
    pub(crate) async fn admit(self: &Arc<Self>, queue: Queue) -> GatePermit {
        let semaphore = match queue {
            Queue::First => &self.attempts,
            Queue::Retry => &self.lane,
        };
        self.limited.store(true, Ordering::Relaxed);
        let permit = match Arc::clone(semaphore).acquire_owned().await {
            Ok(permit) => permit,
            // The semaphores are never closed.
            Err(_) => unreachable!("admission semaphores are never closed"),
        };
        GatePermit {
            gate: Arc::clone(self),
            permit: Some(permit),
            queue,
        }
    }

    /// Whether an attempt in `queue` would wait now.
    pub(crate) fn would_wait(&self, queue: Queue) -> bool {
        match queue {
            Queue::First => self.attempts.available_permits() == 0,
            Queue::Retry => self.lane.available_permits() == 0,
        }
    }

    /// An attempt committed: the limit grows by `1 / limit`.
    pub(crate) fn committed(&self) {
        let mut limit = lock(&self.limit);
        limit.current = (limit.current + 1.0 / limit.current).min(limit.ceiling);
        while limit.effective() < limit.target() {
            if limit.debt > 0 {
                limit.debt -= 1;
            } else {
                self.attempts.add_permits(1);
                limit.granted += 1;
            }
        }
    }

    /// An attempt failed with a conflict: the limit shrinks by a quarter.
    pub(crate) fn conflicted(&self) {
        let mut limit = lock(&self.limit);
        limit.current = (limit.current * DECREASE).max(1.0);
        while limit.effective() > limit.target() {
            if self.attempts.forget_permits(1) == 1 {
                limit.granted -= 1;
            } else {
                limit.debt += 1;
            }
        }
    }

    /// The current limit, if any attempt went through it.
    pub(crate) fn limit(&self) -> Option<f64> {
        self.limited
            .load(Ordering::Relaxed)
            .then(|| lock(&self.limit).current)
    }

    /// Counts an attempt of the function as waiting until the guard drops.
    pub(crate) fn waiting_guard(&self) -> Waiting<'_> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(&self.waiting)
    }

    /// Attempts waiting in either queue now.
    pub(crate) fn waiting(&self) -> u32 {
        self.waiting.load(Ordering::Relaxed)
    }
}

impl GatePermit {
    /// The gate the permit belongs to.
    pub(crate) fn gate(&self) -> &FunctionGate {
        &self.gate
    }
}

impl Drop for GatePermit {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        if self.queue == Queue::First {
            let mut limit = lock(&self.gate.limit);
            if limit.debt > 0 {
                limit.debt -= 1;
                limit.granted -= 1;
                permit.forget();
                return;
            }
        }
        drop(permit);
    }
}

/// Counts a waiter for as long as it waits, however its wait ends.
pub(crate) struct Waiting<'a>(&'a AtomicU32);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts_shrink_the_limit_and_commits_grow_it_back_to_the_ceiling() {
        let gate = FunctionGate::new(8);
        gate.conflicted();
        assert_eq!(lock(&gate.limit).current, 6.0);
        assert_eq!(gate.attempts.available_permits(), 6);
        for _ in 0..20 {
            gate.conflicted();
        }
        assert_eq!(lock(&gate.limit).current, 1.0);
        assert_eq!(gate.attempts.available_permits(), 1);
        for _ in 0..200 {
            gate.committed();
        }
        assert_eq!(lock(&gate.limit).current, 8.0);
        assert_eq!(gate.attempts.available_permits(), 8);
    }

    #[tokio::test]
    async fn a_limit_that_falls_below_the_permits_out_destroys_them_as_they_return() {
        let gate = Arc::new(FunctionGate::new(4));
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(gate.admit(Queue::First).await);
        }
        gate.conflicted();
        gate.conflicted();
        assert_eq!(gate.limit(), Some(2.25));
        held.truncate(1);
        assert_eq!(gate.attempts.available_permits(), 1);
        drop(held);
        assert_eq!(gate.attempts.available_permits(), 2);
    }

    #[tokio::test]
    async fn a_dropped_waiter_leaves_the_queue_without_taking_a_permit() {
        let gate = Arc::new(FunctionGate::new(1));
        let held = gate.admit(Queue::Retry).await;
        let waiter = gate.admit(Queue::Retry);
        let timed_out = tokio::time::timeout(std::time::Duration::from_millis(20), waiter).await;
        assert!(timed_out.is_err());
        assert_eq!(gate.waiting(), 0);
        drop(held);
        assert!(!gate.would_wait(Queue::Retry));
    }
}
