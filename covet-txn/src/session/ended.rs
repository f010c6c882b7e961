//! The ROLLBACK after a failure that has already ended the transaction on
//! the server (a serialization failure, a deadlock: the dialect says
//! which). Its work is undone and its locks are released before the client
//! hears of the error, so the session does not wait for the ROLLBACK's
//! answer, just as hand-written sqlx does not when it drops a
//! `Transaction`: the driver queues the ROLLBACK for the connection's next
//! use (PostgreSQL: the pool's check as the connection goes back sends it
//! and reads its answer), or a background task sends it and then gives the
//! connection back (MySQL, MariaDB).
//!
//! What stays true: no transaction is left open on a pooled connection (a
//! ROLLBACK that fails, or does not answer within the dialect's recovery
//! deadline, closes its connection, and the server rolls back whatever
//! is left); the on_rollback hooks run once, at once, because the
//! transaction has rolled back whatever the ROLLBACK statement answers. A
//! failed ROLLBACK sent by the background task is counted as a failed
//! rollback when its answer comes; a queued one that fails is seen by the
//! pool's check, which logs it and closes the connection, and is not
//! counted. The session waits for the ROLLBACK as before where the
//! connection is lent by an autocommit session (its next statement would
//! read the answer), for a two-phase branch, and outside a Tokio runtime.

use std::sync::Arc;

use sqlx::pool::PoolConnection;

use super::Session;
use super::recovery::{Held, Origin};
use crate::backend::{Driver, Restore};
use crate::dialect::Dialect;
use crate::error::{Error, Operation};
use crate::failure::FailureKind;
use crate::observe::Observer;

impl<DB: Driver> Session<DB> {
    /// Whether the ROLLBACK after `failure` can go without the session
    /// waiting for it.
    pub(super) fn rolls_back_unawaited(&self, failure: Option<FailureKind>) -> bool {
        failure.is_some_and(|kind| self.dialect.failure_ends_transaction(kind))
            && matches!(self.origin, Origin::Pool)
            && self.branch.is_none()
            && tokio::runtime::Handle::try_current().is_ok()
    }

    /// Sends ROLLBACK without waiting for its answer, and gives the
    /// connection back; see the module's docs.
    pub(super) fn roll_back_unawaited(&self, held: Held<'_, DB>) {
        let restore = held.restore;
        let mut conn = held.disarm();
        if DB::queue_rollback(&mut conn, restore) {
            drop(conn);
            return;
        }
        let behind = RollbackBehind {
            conn: Some(conn),
            restore,
            dialect: Arc::clone(&self.dialect),
            observer: self.core.observer().cloned(),
        };
        // `rolls_back_unawaited` found a runtime; the task is detached.
        drop(tokio::spawn(behind.run()));
    }
}

/// A ROLLBACK sent from a task of its own, with the connection it ends.
/// Dropped before the answer came (the runtime shutting down), it closes
/// the connection rather than give it back with a reply in flight.
struct RollbackBehind<DB: Driver> {
    conn: Option<PoolConnection<DB>>,
    restore: Restore,
    dialect: Arc<dyn Dialect<DB>>,
    observer: Option<Observer>,
}

impl<DB: Driver> RollbackBehind<DB> {
    async fn run(mut self) {
        let Some(conn) = self.conn.as_deref_mut() else {
            return;
        };
        let ended = tokio::time::timeout(
            self.dialect.recovery_deadline(),
            DB::end(conn, false, self.dialect.rollback(), self.restore),
        )
        .await;
        match ended {
            // Back to the pool, clean.
            Ok(Ok(true)) => drop(self.conn.take()),
            // The session's settings are unknown: `self` closes it.
            Ok(Ok(false)) | Err(_) => {}
            Ok(Err(source)) => {
                if let Some(observer) = &self.observer {
                    observer.rollback_failed(None, &Error::database(Operation::Rollback, source));
                }
            }
        }
    }
}

impl<DB: Driver> Drop for RollbackBehind<DB> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}
