//! Who has a session's connection at each moment. The connection lives in a
//! slot and leaves it only for one statement at a time, in a guard: a
//! [`Lease`] for the runtime's own statements, a [`TxConn`] for the user's.
//! A guard dropped before its statement is known to be finished hands the
//! connection to the background recovery instead of back to the slot.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard};

use sqlx::pool::PoolConnection;

use super::Session;
use crate::backend::Driver;
use crate::error::Error;

/// Who has the connection right now.
pub(crate) enum Slot<DB: Driver> {
    /// In the slot, ready for the next statement.
    Idle(PoolConnection<DB>),
    /// Lent to a guard for one statement (or to a `TxConn`).
    Borrowed,
    /// Gone: the session ended or was abandoned. A connection handed back now
    /// is abandoned too.
    Closed,
}

/// A session's slot.
pub(crate) struct ConnectionSlot<DB: Driver>(Mutex<Slot<DB>>);

impl<DB: Driver> ConnectionSlot<DB> {
    pub(crate) fn new(conn: PoolConnection<DB>) -> Self {
        ConnectionSlot(Mutex::new(Slot::Idle(conn)))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Slot<DB>> {
        // The slot holds no invariant a panic could break half-way: recover it.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Empties the slot for good, returning the connection if it was there.
    pub(crate) fn close(&self) -> Slot<DB> {
        std::mem::replace(&mut *self.lock(), Slot::Closed)
    }
}

/// The connection lent out of the slot for one statement the runtime runs.
/// Dropped before `finish` (the statement's future was cancelled), it aborts
/// the session: what the server did with the statement is unknown.
pub(crate) struct Lease<'s, DB: Driver> {
    session: &'s Session<DB>,
    conn: Option<PoolConnection<DB>>,
}

impl<'s, DB: Driver> Lease<'s, DB> {
    pub(crate) fn take(session: &'s Session<DB>) -> Result<Self, Error> {
        Ok(Lease {
            session,
            conn: Some(session.lend()?),
        })
    }

    pub(crate) fn conn(&mut self) -> &mut DB::Connection {
        self.conn
            .as_deref_mut()
            .expect("a leased connection is present until finished")
    }

    pub(crate) fn finish(mut self) {
        if let Some(conn) = self.conn.take() {
            self.session.give_back(conn);
        }
    }
}

impl<DB: Driver> Drop for Lease<'_, DB> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.session
                .abort("a statement of the transaction was cancelled while in flight");
            self.session.abandon_connection(conn);
        }
    }
}

/// The current transaction's connection, lent to the caller.
///
/// Get one with [`conn`](crate::conn) (or the typed
/// [`postgres::conn`](crate::postgres::conn) and its siblings); use
/// `&mut *guard` wherever sqlx takes an executor. While it is alive the
/// transaction cannot run anything else (a nested transactional call fails
/// with [`Error::ConnectionBorrowed`]), so keep it for a statement or a few,
/// not across other transactional calls.
///
/// ```
/// # async fn demo() -> Result<(), covet_txn::Error> {
/// use sqlx::Sqlite;
/// let count: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts")
///     .fetch_one(&mut *covet_txn::conn::<Sqlite>()?)
///     .await?;
/// # let _ = count; Ok(()) }
/// ```
pub struct TxConn<DB: Driver> {
    session: Arc<Session<DB>>,
    conn: Option<PoolConnection<DB>>,
}

impl<DB: Driver> TxConn<DB> {
    pub(crate) fn lend_from(session: &Arc<Session<DB>>) -> Result<Self, Error> {
        let conn = session.lend()?;
        Ok(TxConn {
            session: Arc::clone(session),
            conn: Some(conn),
        })
    }
}

impl<DB: Driver> Deref for TxConn<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        self.conn
            .as_deref()
            .expect("a TxConn holds its connection until dropped")
    }
}

impl<DB: Driver> DerefMut for TxConn<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        self.conn
            .as_deref_mut()
            .expect("a TxConn holds its connection until dropped")
    }
}

impl<DB: Driver> Drop for TxConn<DB> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.session.give_back(conn);
        }
    }
}

impl<DB: Driver> fmt::Debug for TxConn<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxConn")
            .field("transaction", &self.session.core.id)
            .field("backend", &self.session.core.system)
            .finish()
    }
}
