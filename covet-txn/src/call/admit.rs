//! Admitting an attempt before it opens its session: only a call that
//! begins a transaction with nothing else of its manager open in its task
//! waits (a nested scope, a joined call or a `requires_new` call inside a
//! transaction never does: it would wait while holding a connection, and
//! perhaps the very turn it waits for). The wait counts against the call's
//! deadline. What the queues are is `admission`'s business.

use tokio::time::timeout_at;

use super::Call;
use super::enter::{Own, Way};
use crate::admission::Ask;
use crate::admission::limit::Queue;
use crate::error::Error;
use crate::failure::FailureKind;

impl<E: From<Error>> Call<E> {
    /// Waits for the attempt's turns, if it has any to wait for, and holds
    /// them for it until [`Call::end_turns`].
    pub(crate) async fn admit(&self, attempt: u32) -> Result<(), Error> {
        let options = &self.options.options;
        if options.test || !matches!(self.way(), Way::Own(Own::Begin { holding: 0 })) {
            return Ok(());
        }
        let writes = options.read_only != Some(true);
        let mut ask = Ask {
            function: self.name,
            contention: options.contention,
            queue: if attempt > 1 {
                Queue::Retry
            } else {
                Queue::First
            },
            keys: &options.conflict_keys,
            writes,
            overlaps: false,
        };
        let admission = self.engine.admission();
        if !admission.applies(&ask) {
            return Ok(());
        }
        ask.overlaps = writes
            && self.engine.reads_wait_for_commit(
                options
                    .isolation
                    .unwrap_or_else(|| self.engine.default_isolation()),
            );
        let admitted = admission.admit(ask);
        let ticket = match self.deadline {
            Some(deadline) => timeout_at(deadline.into(), admitted)
                .await
                .map_err(|_| self.timeout_error(attempt))?,
            None => admitted.await,
        };
        if let Some(waited) = ticket.waited {
            self.observer.admitted_after(attempt, waited);
        }
        self.turns.hold(ticket);
        Ok(())
    }

    /// Gives back the attempt's turns, telling its function how it ended:
    /// in a conflict with another transaction, or not (a commit, or a
    /// rollback of its own). Says whether a retry would wait in its
    /// function's lane (its limit admitted the attempt, and no turn is free
    /// now).
    pub(crate) fn end_turns(&self, error: Option<&E>) -> bool {
        let Some(ticket) = self.turns.take() else {
            return false;
        };
        let conflict = error.is_some_and(|error| {
            (self.inspect)(error)
                .and_then(|source| self.engine.classify(source))
                .is_some_and(|kind| {
                    matches!(
                        kind,
                        FailureKind::SerializationFailure
                            | FailureKind::Deadlock
                            | FailureKind::SnapshotConflict
                            | FailureKind::LockTimeout
                            | FailureKind::Busy
                    )
                })
        });
        ticket.end(conflict)
    }
}
