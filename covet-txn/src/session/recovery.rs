//! Bringing back a connection whose future was dropped mid-statement. The
//! connection keeps its pool slot while a background task reads the
//! server's answer to what was in flight, rolls back whatever is still open
//! and restores the session; then it goes back to the pool, or is closed if
//! that fails or takes longer than the dialect allows.
//!
//! Closing at once would not undo a COMMIT the server already received: it
//! would only let the next borrower in before the commit shows. A COMMIT cut
//! off this way is recorded once its answer is read.

use std::sync::Arc;

use sqlx::pool::PoolConnection;

use super::Session;
use crate::backend::{Driver, InFlightCommit, Restore};
use crate::dialect::Dialect;
use crate::failure::CommitOutcome;

/// Where a session's connection came from, and so where it goes back to.
pub(crate) enum Origin<DB: Driver> {
    Pool,
    /// Borrowed from an autocommit session of the same manager; given back to
    /// it when this transaction ends.
    Lent(Arc<Session<DB>>),
}

/// A COMMIT in flight when its call's future was dropped.
pub(crate) struct Cutoff<DB: Driver> {
    pub(crate) session: Arc<Session<DB>>,
    pub(crate) token: Option<String>,
}

impl<DB: Driver> Cutoff<DB> {
    fn settle(self, outcome: CommitOutcome) {
        if let Some(account) = &self.session.core.account {
            account.settle_cancelled_commit(outcome);
        }
    }
}

/// A connection in the runtime's hands outside the slot: being begun or
/// ended. Dropped while armed (its future was cancelled, or a statement
/// failed in a way that leaves the connection's state unknown), it is
/// abandoned to the background recovery.
pub(crate) struct Held<'s, DB: Driver> {
    conn: Option<PoolConnection<DB>>,
    pub(crate) restore: Restore,
    dialect: &'s Arc<dyn Dialect<DB>>,
    origin: &'s Origin<DB>,
    /// Set while COMMIT is in flight.
    pub(crate) cutoff: Option<Cutoff<DB>>,
}

impl<'s, DB: Driver> Held<'s, DB> {
    pub(crate) fn new(
        conn: PoolConnection<DB>,
        restore: Restore,
        dialect: &'s Arc<dyn Dialect<DB>>,
        origin: &'s Origin<DB>,
    ) -> Self {
        Held {
            conn: Some(conn),
            restore,
            dialect,
            origin,
            cutoff: None,
        }
    }

    pub(crate) fn conn(&mut self) -> &mut DB::Connection {
        self.conn
            .as_deref_mut()
            .expect("a held connection is present until released")
    }

    pub(crate) fn disarm(mut self) -> PoolConnection<DB> {
        self.conn
            .take()
            .expect("a held connection is present until released")
    }

    /// Ends the transaction with the dialect's COMMIT (`commit`) or
    /// ROLLBACK, restoring the session. `Ok(false)`: it ended, but the
    /// session could not be restored, so the connection must not be reused.
    pub(crate) async fn end(&mut self, commit: bool) -> Result<bool, sqlx::Error> {
        let statement = if commit {
            self.dialect.commit()
        } else {
            self.dialect.rollback()
        };
        let restore = self.restore;
        DB::end(self.conn(), commit, statement, restore).await
    }

    /// Ends whatever transaction may be open: after a failed BEGIN (the
    /// request can hold several statements, some of which may have run), or
    /// before a COMMIT that must not be sent. Keeps the connection only if
    /// ROLLBACK and the session restore succeed.
    pub(crate) async fn roll_back_and_release(&mut self) {
        if matches!(self.end(false).await, Ok(true)) {
            self.release();
        }
    }

    /// After a COMMIT that failed with the server's answer, the transaction
    /// may still be open (SQLite keeps it on `SQLITE_BUSY`): roll back where
    /// the server has not already, and keep the connection only if that
    /// and the session restore work.
    pub(crate) async fn roll_back_after_failed_commit(&mut self) {
        let clean = if self.dialect.failed_commit_ends_transaction() {
            let restore = self.restore;
            DB::restore(self.conn(), restore).await
        } else {
            matches!(self.end(false).await, Ok(true))
        };
        if clean {
            self.release();
        }
    }

    /// Gives the connection back, clean, to where it came from.
    pub(crate) fn release(&mut self) {
        if let Some(conn) = self.conn.take() {
            match self.origin {
                Origin::Pool => drop(conn),
                Origin::Lent(parent) => parent.give_back(conn),
            }
        }
    }
}

impl<DB: Driver> Drop for Held<'_, DB> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            abandon(
                conn,
                self.restore,
                Arc::clone(self.dialect),
                self.origin,
                self.cutoff.take(),
            );
        }
    }
}

/// Hands a connection whose state is not known to be clean to the
/// background recovery (and, if an autocommit session lent it, aborts that
/// session: its connection is gone).
pub(crate) fn abandon<DB: Driver>(
    conn: PoolConnection<DB>,
    restore: Restore,
    dialect: Arc<dyn Dialect<DB>>,
    origin: &Origin<DB>,
    cutoff: Option<Cutoff<DB>>,
) {
    if let Origin::Lent(parent) = origin {
        parent.abort("a transaction begun on this session's connection was abandoned");
    }
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn(recover(conn, restore, dialect, cutoff))),
        Err(_) => {
            drop(conn.detach());
            if let Some(cutoff) = cutoff {
                cutoff.settle(CommitOutcome::Unknown);
            }
        }
    }
}

async fn recover<DB: Driver>(
    mut conn: PoolConnection<DB>,
    restore: Restore,
    dialect: Arc<dyn Dialect<DB>>,
    cutoff: Option<Cutoff<DB>>,
) {
    let in_flight = cutoff.as_ref().map(|cutoff| InFlightCommit {
        token: cutoff.token.clone(),
    });
    let recovered = tokio::time::timeout(
        dialect.recovery_deadline(),
        DB::recover(&mut conn, &*dialect, restore, in_flight),
    )
    .await;
    let outcome = match recovered {
        Ok(Ok(outcome)) => outcome.unwrap_or(CommitOutcome::Unknown),
        Ok(Err(_)) | Err(_) => {
            drop(conn.detach());
            CommitOutcome::Unknown
        }
    };
    // Recorded before the connection goes back to the pool, so that whoever
    // sees the connection again also sees the count.
    if let Some(cutoff) = cutoff {
        cutoff.settle(outcome);
    }
}
