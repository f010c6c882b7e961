//! One function's admission limit: at most `limit` of its attempts run at
//! once, the limit being the one at which the function has measured the
//! most useful attempts per second (`tuner`), between 1 and the pool's size.
//!
//! A retry whose attempt ends with no turn free (the others taken, and the
//! one it gave back taken by a waiting attempt or by a lowered limit) does
//! not sleep its backoff and compete again: it waits in the lane, for the
//! next turn ahead of first attempts, which pass one at a time through a
//! door before they queue for a turn, so that a retry waits behind at most
//! one of them. With a turn free at once there is no queue to go ahead of,
//! and a retry that skipped its backoff would only compete again at once
//! (at the pool's size, the function's attempts all run as they would
//! unmanaged): it sleeps its backoff first, and then takes the retries'
//! queue ([`GatePermit::end`] says which). Retries count within the limit: at a limit of 1 the
//! function's attempts never run beside one another, not even a retry
//! beside a first attempt, except that where every read of a read-write
//! attempt waits for the locks of a committing transaction (the dialect
//! says when: MySQL and MariaDB at SERIALIZABLE) such an attempt gives its
//! turn on as its COMMIT goes out, while the limit is below the pool's
//! size, so that the next one's BEGIN and first read overlap the commit's
//! flush instead of waiting for its answer. The queues are tokio
//! semaphores, which hand permits out first come, first served, and forget
//! a waiter whose future is dropped.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::tuner::Tuner;

/// A function's admission state.
#[derive(Debug)]
pub(crate) struct FunctionGate {
    attempts: Arc<Semaphore>,
    /// First attempts queue for a turn one at a time, so that retries go
    /// ahead of all but one of them.
    door: Semaphore,
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
    tuner: Tuner,
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

    /// A permit coming back: destroyed if the limit fell below what was
    /// handed out, free for the next attempt otherwise.
    fn take_back(&mut self, permit: OwnedSemaphorePermit) {
        if self.debt > 0 {
            self.debt -= 1;
            self.granted -= 1;
            permit.forget();
        } else {
            drop(permit);
        }
    }
}

/// Which queue an attempt waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Queue {
    /// A first attempt, through the door.
    First,
    /// A retry, ahead of first attempts.
    Retry,
}

/// A turn of a [`FunctionGate`], given back when dropped (or as its COMMIT
/// goes out, see [`GatePermit::give_on_at_commit`]).
#[derive(Debug)]
pub(crate) struct GatePermit {
    gate: Arc<FunctionGate>,
    permit: Option<OwnedSemaphorePermit>,
    /// How the attempt ended, once known: in a conflict or not. An attempt
    /// dropped before it said (cancelled, panicked) teaches the tuner
    /// nothing.
    conflict: Option<bool>,
    admitted: Instant,
}

impl FunctionGate {
    /// A gate that starts with `ceiling` attempts admitted at once (the
    /// pool's size: more could not run anyway).
    pub(crate) fn new(ceiling: u32) -> Self {
        let ceiling = ceiling.max(1);
        FunctionGate {
            attempts: Arc::new(Semaphore::new(ceiling as usize)),
            door: Semaphore::new(1),
            limit: Mutex::new(Limit {
                tuner: Tuner::new(ceiling, Instant::now()),
                granted: ceiling,
                debt: 0,
            }),
            limited: AtomicBool::new(false),
            waiting: AtomicU32::new(0),
        }
    }

    /// Waits for a turn, first come, first served within `queue`, retries
    /// ahead. Dropping the future leaves the queue and takes nothing.
    pub(crate) async fn admit(self: &Arc<Self>, queue: Queue) -> GatePermit {
        self.limited.store(true, Ordering::Relaxed);
        let permit = match self.try_admit(queue) {
            Some(permit) => permit,
            None => {
                let door = match queue {
                    Queue::First => Some(self.door.acquire().await),
                    Queue::Retry => None,
                };
                let permit = match Arc::clone(&self.attempts).acquire_owned().await {
                    Ok(permit) => permit,
                    Err(_) => unreachable!("admission semaphores are never closed"),
                };
                drop(door);
                permit
            }
        };
        let admitted = Instant::now();
        lock(&self.limit).tuner.attempt_started(admitted);
        GatePermit {
            gate: Arc::clone(self),
            permit: Some(permit),
            conflict: None,
            admitted,
        }
    }

    /// A turn at once, when one is free: without building the futures of
    /// a wait, which most attempts of a function below its limit never
    /// need. As fair as waiting: tokio hands a returned permit to the
    /// first waiter, so a permit is free only while nobody waits for it.
    fn try_admit(&self, queue: Queue) -> Option<OwnedSemaphorePermit> {
        let door = match queue {
            Queue::First => Some(self.door.try_acquire().ok()?),
            Queue::Retry => None,
        };
        let permit = Arc::clone(&self.attempts).try_acquire_owned().ok();
        drop(door);
        permit
    }

    /// Whether an attempt in `queue` would wait now.
    pub(crate) fn would_wait(&self, queue: Queue) -> bool {
        self.attempts.available_permits() == 0
            || (queue == Queue::First && self.door.available_permits() == 0)
    }

    /// Adds or destroys permits until `target` stand for the limit.
    fn follow(&self, limit: &mut Limit, target: u32) {
        while limit.effective() < target {
            if limit.debt > 0 {
                limit.debt -= 1;
            } else {
                self.attempts.add_permits(1);
                limit.granted += 1;
            }
        }
        while limit.effective() > target {
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
            .then(|| f64::from(lock(&self.limit).tuner.limit()))
    }

    /// Counts an attempt of the function as waiting until the guard drops.
    pub(crate) fn waiting_guard(&self) -> Waiting<'_> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(&self.waiting)
    }

    /// Attempts waiting for a turn now.
    pub(crate) fn waiting(&self) -> u32 {
        self.waiting.load(Ordering::Relaxed)
    }
}

impl GatePermit {
    /// The attempt ended, in a conflict with another transaction or not (a
    /// commit, or a rollback of its own): gives the turn back (if it was
    /// not given on at COMMIT), lets the tuner learn how the attempt ended,
    /// and says whether a retry would now wait in the lane: no turn is
    /// free.
    pub(crate) fn end(mut self, conflict: bool) -> bool {
        self.conflict = Some(conflict);
        let gate = Arc::clone(&self.gate);
        drop(self);
        gate.would_wait(Queue::Retry)
    }

    /// Gives the turn on as the attempt's COMMIT goes out, while the limit
    /// is below the pool's size: at the pool's size the next attempt would
    /// only wait in the pool for the committing one's connection instead
    /// of here, where retries go first. The tuner learns how the attempt
    /// ended when the permit drops.
    pub(crate) fn give_on_at_commit(&mut self) {
        let mut limit = lock(&self.gate.limit);
        if limit.effective() < limit.tuner.ceiling()
            && let Some(permit) = self.permit.take()
        {
            limit.take_back(permit);
        }
    }
}

impl Drop for GatePermit {
    fn drop(&mut self) {
        let mut limit = lock(&self.gate.limit);
        if let Some(permit) = self.permit.take() {
            limit.take_back(permit);
        }
        let now = Instant::now();
        let ran = now.saturating_duration_since(self.admitted);
        if let Some(target) = limit.tuner.attempt_finished(self.conflict, ran, now) {
            self.gate.follow(&mut limit, target);
        }
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

    #[tokio::test]
    async fn a_limit_that_falls_below_the_permits_out_destroys_them_as_they_return() {
        let gate = Arc::new(FunctionGate::new(4));
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(gate.admit(Queue::First).await);
        }
        gate.follow(&mut lock(&gate.limit), 2);
        held.truncate(1);
        assert_eq!(gate.attempts.available_permits(), 1);
        drop(held);
        assert_eq!(gate.attempts.available_permits(), 2);
        gate.follow(&mut lock(&gate.limit), 3);
        assert_eq!(gate.attempts.available_permits(), 3);
    }

    #[tokio::test]
    async fn a_turn_given_on_at_commit_admits_the_next_attempt_once() {
        let gate = Arc::new(FunctionGate::new(2));
        gate.follow(&mut lock(&gate.limit), 1);
        let mut committing = gate.admit(Queue::First).await;
        committing.give_on_at_commit();
        let next = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            gate.admit(Queue::First),
        )
        .await
        .expect("the turn went on as the COMMIT went out");
        assert!(
            committing.end(false),
            "the turn was given back twice: a retry would find it free"
        );
        drop(next);
        assert_eq!(gate.attempts.available_permits(), 1);
    }

    #[tokio::test]
    async fn at_the_pools_size_a_turn_is_kept_through_commit() {
        let gate = Arc::new(FunctionGate::new(1));
        let mut committing = gate.admit(Queue::First).await;
        committing.give_on_at_commit();
        assert!(
            gate.would_wait(Queue::First),
            "an attempt was admitted beyond the pool's size"
        );
        drop(committing);
        assert!(!gate.would_wait(Queue::First));
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

    #[tokio::test]
    async fn a_retry_takes_the_lane_only_when_no_turn_is_free() {
        let gate = Arc::new(FunctionGate::new(2));
        let alone = gate.admit(Queue::First).await;
        assert!(
            !alone.end(true),
            "a turn was free, yet the retry would wait"
        );

        let (first, second) = (
            gate.admit(Queue::First).await,
            gate.admit(Queue::First).await,
        );
        let waiter = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move {
                let _waiting = gate.waiting_guard();
                drop(gate.admit(Queue::First).await);
            }
        });
        // The waiter counts itself and parks in the same poll.
        while gate.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(
            first.end(true),
            "the turn went to the waiter, yet the retry would not wait"
        );
        drop(second);
        waiter.await.expect("no panic");
        assert_eq!(gate.attempts.available_permits(), 2);
    }
}
