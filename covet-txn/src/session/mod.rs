//! One transaction (or one autocommit session) on one connection: opening
//! it (taking the connection, BEGIN), its savepoints, and its end (COMMIT,
//! ROLLBACK, or giving an autocommit connection back), driven through the
//! transaction's state machine.
//!
//! The session owns the SQL and the state machine and returns typed
//! results; what hooks run around its end is the call's business. Sessions
//! of the three drivers are held erased as a [`SessionHandle`], an enum, so
//! that no statement pays for a boxed future.

mod branch;
mod ended;
mod epoch;
mod handle;
mod open;
mod probes;
mod recovery;
mod slot;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use sqlx::pool::PoolConnection;

pub(crate) use self::branch::finish_on;
pub(crate) use self::epoch::PrimaryEpoch;
pub use self::handle::{SessionErase, SessionHandle};
pub(crate) use self::open::{Opening, Source};
pub(crate) use self::probes::ProbeCache;
use self::recovery::{Cutoff, Held, Origin, abandon};
pub use self::slot::TxConn;
use self::slot::{ConnectionSlot, Lease, Slot};
use crate::backend::{Driver, Restore};
use crate::dialect::{BranchId, Dialect, SavepointAction, SavepointName};
use crate::error::{Error, Operation};
use crate::failure::{CommitOutcome, FailureKind};
use crate::hooks::list::HookList;
use crate::hooks::run::HookHolder;
use crate::observe::metrics::{ActiveTransaction, ActiveTx};
use crate::observe::{Observer, TxAccount};
use crate::options::Isolation;
use crate::state::{Machine, TxId, TxState, Verdict};

/// The driver-independent part of a session: identity, what it began with,
/// its state machine, its hooks, and where it is counted.
#[derive(Debug)]
pub(crate) struct SessionCore {
    pub(crate) id: TxId,
    pub(crate) manager_id: u64,
    pub(crate) name: &'static str,
    /// The dialect's OpenTelemetry `db.system` name.
    pub(crate) system: &'static str,
    pub(crate) isolation: Option<Isolation>,
    pub(crate) read_only: bool,
    /// `false` for the autocommit session of `supports`, `never` and
    /// `not_supported`.
    pub(crate) transactional: bool,
    /// Whether the connection is borrowed from an autocommit session rather
    /// than taken from the pool.
    pub(crate) borrows_connection: bool,
    /// Which attempt of a retrying call this is, from 1.
    pub(crate) attempt: u32,
    pub(crate) started_at: Instant,
    pub(crate) machine: Machine,
    /// The depth of the innermost savepoint scope running now (1: none).
    depth: AtomicU32,
    pub(crate) hooks: HookList,
    /// Where a transaction (not an autocommit session) is counted.
    pub(crate) account: Option<TxAccount>,
}

impl SessionCore {
    pub(crate) fn depth(&self) -> u32 {
        self.depth.load(Ordering::Acquire)
    }

    /// Goes one savepoint scope deeper from `depth`; `false` if the session
    /// is not at `depth` (another scope is open below it).
    pub(crate) fn enter_scope(&self, depth: u32) -> bool {
        self.depth
            .compare_exchange(depth, depth + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Back to `depth`, when the scope entered from it ends.
    pub(crate) fn leave_scope(&self, depth: u32) {
        self.depth.store(depth, Ordering::Release);
    }

    /// The observer of the function that began the transaction.
    pub(crate) fn observer(&self) -> Option<&Observer> {
        self.account.as_ref().map(TxAccount::observer)
    }

    pub(super) fn finish(&self, outcome: CommitOutcome) {
        if let Some(account) = &self.account {
            account.finish(outcome);
        }
    }
}

/// A transaction or autocommit session on one connection.
#[doc(hidden)]
pub struct Session<DB: Driver> {
    pub(crate) core: SessionCore,
    resolve_ambiguous_commit: bool,
    /// What puts back the session settings the BEGIN changed.
    restore: Restore,
    slot: ConnectionSlot<DB>,
    origin: Origin<DB>,
    dialect: Arc<dyn Dialect<DB>>,
    /// For asking, on a fresh connection, what became of a COMMIT that was
    /// cut off, and for finishing a prepared branch.
    pool: sqlx::Pool<DB>,
    /// The primary the connection came from, when the manager follows a
    /// failover: a cut-off COMMIT is resolved only on that primary.
    epoch: Option<PrimaryEpoch>,
    /// The branch of a two-phase commit this transaction is.
    branch: Option<BranchId>,
    /// A prepared branch's connection, kept for phase two: MySQL finishes a
    /// branch only on the connection that prepared it while that connection
    /// lives. Closed if phase two never comes, so that recovery can.
    prepared_conn: std::sync::Mutex<Option<PoolConnection<DB>>>,
}

/// Why COMMIT did not happen.
#[derive(Debug)]
pub(crate) enum CommitError {
    /// The transaction may not commit; nothing was sent, and it is still
    /// open for the caller to roll back.
    Refused(Verdict),
    /// COMMIT (or what precedes it) failed; the transaction is over.
    Failed(Error),
}

impl<DB: Driver> Session<DB> {
    /// Takes the connection out of the slot for one use.
    pub(crate) fn lend(&self) -> Result<PoolConnection<DB>, Error> {
        let mut slot = self.slot.lock();
        match std::mem::replace(&mut *slot, Slot::Borrowed) {
            Slot::Idle(conn) => Ok(conn),
            Slot::Borrowed => Err(Error::ConnectionBorrowed),
            Slot::Closed => {
                *slot = Slot::Closed;
                Err(Error::TransactionAborted(
                    self.core
                        .machine
                        .aborted()
                        .unwrap_or("it has already ended"),
                ))
            }
        }
    }

    /// Puts a lent connection back, or abandons it if the session ended
    /// meanwhile.
    pub(crate) fn give_back(&self, conn: PoolConnection<DB>) {
        let mut slot = self.slot.lock();
        match *slot {
            Slot::Borrowed => *slot = Slot::Idle(conn),
            Slot::Idle(_) | Slot::Closed => {
                drop(slot);
                self.abandon_connection(conn);
            }
        }
    }

    /// Ends the session's use of its connection at once: the connection is
    /// abandoned (now, or when its borrower hands it back) and every later
    /// use fails with `reason`.
    pub(crate) fn abort(&self, reason: &'static str) {
        let was = self.core.machine.abort(reason);
        // Cut off while COMMIT was in flight, it may well have committed:
        // whoever holds the COMMIT (its background recovery, or the
        // resolution of an ambiguous commit) counts how it ended.
        if was != TxState::Committing {
            self.core.finish(CommitOutcome::Aborted);
        }
        if let Slot::Idle(conn) = self.slot.close() {
            self.abandon_connection(conn);
        }
    }

    fn abandon_connection(&self, conn: PoolConnection<DB>) {
        abandon(
            conn,
            self.restore,
            Arc::clone(&self.dialect),
            &self.origin,
            None,
        );
    }

    /// Runs one savepoint statement inside the transaction.
    pub(crate) async fn savepoint(
        &self,
        action: SavepointAction,
        name: SavepointName<'_>,
    ) -> Result<(), Error> {
        let operation = match action {
            SavepointAction::Create => Operation::Savepoint,
            SavepointAction::Release => Operation::ReleaseSavepoint,
            SavepointAction::RollbackTo | SavepointAction::RollbackAndRelease => {
                Operation::RollbackToSavepoint
            }
        };
        let mut lease = Lease::take(self)?;
        let result = match name {
            SavepointName::Scope(depth) => {
                DB::scope_savepoint(lease.conn(), &*self.dialect, action, depth).await
            }
            SavepointName::Named(name) => {
                let sql = self.dialect.savepoint(action, SavepointName::Named(name));
                DB::execute(lease.conn(), sql).await
            }
        };
        lease.finish();
        result.map_err(|source| Error::database(operation, source))
    }

    /// Takes the connection out of the slot for the session's end.
    pub(super) fn take_for_end(&self) -> Result<Held<'_, DB>, Error> {
        match self.slot.close() {
            Slot::Idle(conn) => {
                if let Some(reason) = self.core.machine.aborted() {
                    self.abandon_connection(conn);
                    self.core.finish(CommitOutcome::Aborted);
                    return Err(Error::TransactionAborted(reason));
                }
                Ok(Held::new(conn, self.restore, &self.dialect, &self.origin))
            }
            Slot::Borrowed => {
                self.core
                    .machine
                    .abort("a `TxConn` guard outlived the transaction's body");
                self.core.finish(CommitOutcome::Aborted);
                Err(Error::ConnectionBorrowed)
            }
            Slot::Closed => {
                self.core.machine.end(TxState::Failed);
                self.core.finish(CommitOutcome::Aborted);
                Err(Error::TransactionAborted(
                    self.core
                        .machine
                        .aborted()
                        .unwrap_or("it has already ended"),
                ))
            }
        }
    }

    /// Gives an autocommit session's connection back.
    pub(crate) fn release(&self) -> Result<(), Error> {
        self.take_for_end().map(|mut held| held.release())
    }

    /// Rolls the transaction back and gives the connection back to where it
    /// came from (if ROLLBACK fails, the connection is recovered or closed,
    /// and the server rolls back). After a `failure` that has already ended
    /// the transaction on the server, without waiting for the ROLLBACK's
    /// answer where it can.
    pub(crate) async fn rollback(&self, failure: Option<FailureKind>) -> Result<(), Error> {
        let mut held = self.take_for_end()?;
        self.core.machine.begin_rollback();
        self.core.finish(CommitOutcome::Aborted);
        if self.rolls_back_unawaited(failure) {
            self.roll_back_unawaited(held);
            self.core.machine.end(TxState::RolledBack);
            return Ok(());
        }
        let ended = self.roll_back_held(&mut held).await;
        match ended {
            Ok(restored) => {
                self.core.machine.end(TxState::RolledBack);
                if restored {
                    held.release();
                }
                Ok(())
            }
            Err(source) => {
                self.core.machine.end(TxState::Failed);
                Err(Error::database(Operation::Rollback, source))
            }
        }
    }

    /// Commits the transaction and gives the connection back to where it
    /// came from.
    pub(crate) async fn commit(self: &Arc<Self>) -> Result<(), CommitError> {
        let mut held = self.take_for_end().map_err(CommitError::Failed)?;
        let token = match (self.resolve_ambiguous_commit, self.dialect.commit_token()) {
            (true, Some(sql)) => match DB::fetch_text(held.conn(), sql, None).await {
                Ok(token) => token,
                // The transaction cannot commit (on PostgreSQL: a swallowed
                // error aborted it, and COMMIT would quietly roll back). No
                // COMMIT was sent, so the transaction is still open whatever
                // the backend does with a failed COMMIT.
                Err(source) => {
                    self.core.machine.end(TxState::Failed);
                    self.core.finish(CommitOutcome::Aborted);
                    held.roll_back_and_release().await;
                    return Err(CommitError::Failed(Error::database(
                        Operation::Commit,
                        source,
                    )));
                }
            },
            _ => None,
        };
        if let Err(verdict) = self.core.machine.begin_commit() {
            self.core.machine.end(TxState::Failed);
            self.core.finish(CommitOutcome::Aborted);
            held.roll_back_and_release().await;
            return Err(CommitError::Refused(verdict));
        }
        held.cutoff = Some(Cutoff {
            session: Arc::clone(self),
            token: token.clone(),
        });
        let committed = held.end(true).await;
        held.cutoff = None;
        match committed {
            Ok(restored) => {
                self.core.finish(CommitOutcome::Committed);
                self.core.machine.end(TxState::Committed);
                if restored {
                    held.release();
                }
                Ok(())
            }
            Err(source)
                if crate::backend::classify(&*self.dialect, &source)
                    == Some(FailureKind::ConnectionLost) =>
            {
                // The connection is gone; `held` drops armed and abandons it.
                // The state stays `Committing` until the outcome is known;
                // cancelled meanwhile, it counts as unknown.
                drop(held);
                let unresolved = Unresolved(&self.core);
                let outcome = match &token {
                    // Boxed: it waits for a pooled connection, whose
                    // future is kilobytes, and every COMMIT's future would
                    // carry that space for this rare path.
                    Some(token) => {
                        let lookup = Box::pin(DB::resolve_commit(
                            self.pool.clone(),
                            Arc::clone(&self.dialect),
                            token.clone(),
                        ));
                        PrimaryEpoch::resolve_within(self.epoch.as_ref(), lookup).await
                    }
                    None => CommitOutcome::Unknown,
                };
                std::mem::forget(unresolved);
                self.core
                    .machine
                    .end(if outcome == CommitOutcome::Committed {
                        TxState::Committed
                    } else {
                        TxState::Failed
                    });
                self.core.finish(outcome);
                Err(CommitError::Failed(Error::AmbiguousCommit {
                    outcome,
                    transaction_id: token,
                }))
            }
            Err(source) => {
                self.core.machine.end(TxState::Failed);
                self.core.finish(CommitOutcome::Aborted);
                held.roll_back_after_failed_commit().await;
                Err(CommitError::Failed(Error::database(
                    Operation::Commit,
                    source,
                )))
            }
        }
    }
}

/// Counts a commit whose connection was lost as unknown if the resolution
/// of its outcome is cancelled.
struct Unresolved<'a>(&'a SessionCore);

impl Drop for Unresolved<'_> {
    fn drop(&mut self) {
        self.0.finish(CommitOutcome::Unknown);
    }
}

impl<DB: Driver> HookHolder for Session<DB> {
    fn hook_list(&self) -> &HookList {
        &self.core.hooks
    }
}

impl<DB: Driver> ActiveTx for Session<DB> {
    fn describe(&self, now: Instant) -> ActiveTransaction {
        let core = &self.core;
        ActiveTransaction {
            id: core.id.get(),
            function: core.name.to_owned(),
            depth: core.depth(),
            isolation: core
                .isolation
                .map(|level| Isolation::name(level).to_owned()),
            state: core.machine.state().name().to_owned(),
            attempt: core.attempt,
            age_ms: now.saturating_duration_since(core.started_at).as_secs_f64() * 1000.0,
        }
    }
}
