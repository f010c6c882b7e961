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
    pub(crate) fn commit_going_out(&self) {
        if let Some(ticket) = lock(&self.0).as_mut() {
            ticket.commit_going_out();
        }
    }

    /// The attempt's COMMIT was answered.
    pub(crate) fn commit_answered(&self) {
        if let Some(ticket) = lock(&self.0).as_mut() {
            ticket.commit_answered();
        }
    }
}
