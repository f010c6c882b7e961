//! The admission turns of a call's running attempt, kept where settling
//! reaches them: its COMMIT going out may give its keys on (see
//! `admission::keys`). Admitting puts them here and the attempt's end takes
//! them (`admit`).

use std::sync::Mutex;

use crate::admission::Ticket;
use crate::admission::limit::lock;

/// The running attempt's admission turns, if it has any.
#[derive(Debug, Default)]
pub(crate) struct Turns(Mutex<Option<Ticket>>);

impl Turns {
    pub(crate) fn hold(&self, ticket: Ticket) {
        *lock(&self.0) = Some(ticket);
    }

    pub(crate) fn take(&self) -> Option<Ticket> {
        lock(&self.0).take()
    }

    /// The attempt's COMMIT is about to go out.
    pub(crate) async fn commit_going_out(&self) {
        // Taken out across the wait: a guard must not be held over an
        // await, and a cancelled wait drops the turns with the attempt.
        let Some(mut ticket) = self.take() else {
            return;
        };
        ticket.commit_going_out().await;
        self.hold(ticket);
    }

    /// The attempt's COMMIT was answered.
    pub(crate) fn commit_answered(&self) {
        if let Some(ticket) = lock(&self.0).as_mut() {
            ticket.commit_answered();
        }
    }
}
