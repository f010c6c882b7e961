//! Admitting an attempt before it opens its session: only a call that
//! begins a transaction with nothing else of its manager open in its task
//! waits (a nested scope, a joined call or a `requires_new` call inside a
//! transaction never does: it would wait while holding a connection, and
//! perhaps the very turn it waits for). The wait counts against the call's
//! deadline. What the queues are is `admission`'s business.

use tokio::time::timeout_at;

use super::Call;
use super::enter::{Own, Way};
use crate::admission::limit::Queue;
use crate::admission::{Ask, Ticket};
use crate::error::Error;
use crate::failure::FailureKind;

impl<E: From<Error>> Call<E> {
    /// Waits for the attempt's turn, if it has one to wait for: `Ok(None)`
    /// when nothing gates it.
    pub(crate) async fn admit(&self, attempt: u32) -> Result<Option<Ticket>, Error> {
        let options = &self.options.options;
        if options.test || !matches!(self.way(), Way::Own(Own::Begin { holding: 0 })) {
            return Ok(None);
        }
        let ask = Ask {
            function: self.name,
            contention: options.contention,
            queue: if attempt > 1 {
                Queue::Retry
            } else {
                Queue::First
            },
            keys: &options.conflict_keys,
            writes: options.read_only != Some(true),
        };
        let admission = self.engine.admission();
        if !admission.applies(&ask) {
            return Ok(None);
        }
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
        Ok(Some(ticket))
    }

    /// Tells the attempt's function how it ended: in a conflict with
    /// another transaction, or not (a commit, or a rollback of its own).
    pub(crate) fn report_to(&self, ticket: &mut Ticket, error: Option<&E>) {
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
        ticket.ended(conflict);
    }
}
