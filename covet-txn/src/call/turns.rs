//! The admission turns of a call's running attempt, kept where settling
//! reaches them: its COMMIT going out may give some of them on (see
//! `admission::keys` and `admission::limit`). Admitting puts them here and
//! the attempt's end takes them (`admit`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::admission::Ticket;
use crate::admission::limit::lock;

/// The running attempt's admission turns, if it has any.
#[derive(Debug, Default)]
pub(crate) struct Turns {
    ticket: Mutex<Option<Ticket>>,
    /// Whether the ticket gives any turn on at COMMIT: the attempts of
    /// every other call take no lock around their COMMIT.
    gives_on_at_commit: AtomicBool,
}

impl Turns {
    pub(crate) fn hold(&self, ticket: Ticket) {
        self.gives_on_at_commit
            .store(ticket.gives_on_at_commit(), Ordering::Relaxed);
        *lock(&self.ticket) = Some(ticket);
    }

    pub(crate) fn take(&self) -> Option<Ticket> {
        self.gives_on_at_commit.store(false, Ordering::Relaxed);
        lock(&self.ticket).take()
    }

    /// The attempt's COMMIT is about to go out.
    pub(crate) fn commit_going_out(&self) {
        if self.gives_on_at_commit.load(Ordering::Relaxed)
            && let Some(ticket) = lock(&self.ticket).as_mut()
        {
            ticket.commit_going_out();
        }
    }

    /// The attempt's COMMIT was answered.
    pub(crate) fn commit_answered(&self) {
        if self.gives_on_at_commit.load(Ordering::Relaxed)
            && let Some(ticket) = lock(&self.ticket).as_mut()
        {
            ticket.commit_answered();
        }
    }
}
