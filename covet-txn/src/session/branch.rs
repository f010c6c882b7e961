//! A session as one branch of a two-phase commit: phase one (PREPARE,
//! which keeps the connection for phase two) and phase two (COMMIT or
//! ROLLBACK of the prepared branch). What a branch begins with and how it
//! rolls back before PREPARE stay with the session's open and rollback.

use std::borrow::Cow;
use std::sync::PoisonError;

use super::recovery::Held;
use super::{CommitError, Session};
use crate::backend::{Driver, TextRows};
use crate::dialect::{BranchId, PreparedTransactions};
use crate::error::{Error, Operation};
use crate::failure::CommitOutcome;
use crate::state::TxState;

impl<DB: Driver> Session<DB> {
    /// Rolls back the transaction on its held connection and restores the
    /// session: with ROLLBACK, or with a branch's own statement where the
    /// plain one cannot end it (a MySQL XA branch). `Ok(false)`: rolled
    /// back, but the session could not be restored.
    pub(super) async fn roll_back_held(
        &self,
        held: &mut Held<'_, DB>,
    ) -> Result<bool, sqlx::Error> {
        let own = self.branch.as_ref().and_then(|branch| {
            self.dialect
                .prepared_transactions()
                .and_then(|prepared| prepared.rollback_unprepared(branch))
        });
        let Some(sql) = own else {
            return held.end(false).await;
        };
        DB::execute(held.conn(), Cow::Owned(sql)).await?;
        let restore = held.restore;
        Ok(DB::restore(held.conn(), restore).await)
    }

    /// Phase one of a two-phase commit: prepares the branch, so that its
    /// work survives anything short of the coordinator's decision, and keeps
    /// the connection for phase two. MySQL finishes a branch only on the
    /// connection that prepared it while that connection lives; and on any
    /// database, phase two (and the decision, on the log's database) must
    /// not wait for a pool whose connections may all be waiting for this
    /// branch's locks. Refused, like COMMIT, when the transaction may not
    /// commit; a failed PREPARE leaves nothing prepared.
    pub(crate) async fn prepare(&self) -> Result<(), CommitError> {
        let (Some(branch), Some(prepared)) = (&self.branch, self.dialect.prepared_transactions())
        else {
            return Err(CommitError::Failed(Error::TwoPhaseUnsupported {
                system: self.dialect.system(),
            }));
        };
        let mut held = self.take_for_end().map_err(CommitError::Failed)?;
        if let Err(verdict) = self.core.machine.begin_commit() {
            self.core.machine.end(TxState::Failed);
            self.core.finish(CommitOutcome::Aborted);
            if matches!(self.roll_back_held(&mut held).await, Ok(true)) {
                held.release();
            }
            return Err(CommitError::Refused(verdict));
        }
        match DB::prepare_branch(held.conn(), prepared.prepare(branch)).await {
            Ok(()) => {
                self.core.machine.end(TxState::Prepared);
                let restore = held.restore;
                // Not restored, the connection drops armed: it is recovered
                // or closed, and the branch waits for phase two or recovery.
                if DB::restore(held.conn(), restore).await {
                    let conn = held.disarm();
                    *self
                        .prepared_conn
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(conn);
                }
                Ok(())
            }
            // The connection drops armed and is recovered or closed; a
            // branch the server did not prepare is rolled back with it.
            Err(source) => {
                self.core.machine.end(TxState::Failed);
                self.core.finish(CommitOutcome::Aborted);
                Err(CommitError::Failed(Error::database(
                    Operation::Prepare,
                    source,
                )))
            }
        }
    }

    /// Runs a text query on the connection kept after PREPARE, outside any
    /// transaction; `None` if none is kept.
    pub(crate) async fn text_rows_on_kept(
        &self,
        sql: String,
        parameters: Vec<String>,
    ) -> Option<Result<TextRows, sqlx::Error>> {
        let kept = self
            .prepared_conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let mut conn = kept?;
        let rows = DB::text_rows(&mut conn, sql, parameters).await;
        // A query that failed other than with the database's answer may
        // leave the connection in any state: it closes rather than finish
        // the branch, which recovery then does.
        if matches!(rows, Err(ref error) if !matches!(error, sqlx::Error::Database(_))) {
            conn.close_on_drop();
        } else {
            *self
                .prepared_conn
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(conn);
        }
        Some(rows)
    }

    /// Phase two: commits or rolls back the prepared branch, on the
    /// connection kept for it or one of the pool. `Ok(false)`: the branch was already finished
    /// (by recovery).
    pub(crate) async fn finish_prepared(&self, commit: bool) -> Result<bool, Error> {
        let (Some(branch), Some(prepared)) = (&self.branch, self.dialect.prepared_transactions())
        else {
            return Err(Error::TwoPhaseUnsupported {
                system: self.dialect.system(),
            });
        };
        let kept = self
            .prepared_conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let finished = match kept {
            Some(mut conn) => {
                let finished = finish_on::<DB>(&mut conn, prepared, branch, commit).await;
                if finished.is_err() {
                    conn.close_on_drop();
                }
                finished
            }
            None => {
                let mut conn = crate::boxed::pinned(|| self.pool.acquire())
                    .await
                    .map_err(|source| Error::database(Operation::Acquire, source))?;
                finish_on::<DB>(&mut conn, prepared, branch, commit).await
            }
        };
        if finished.is_ok() {
            self.core.machine.end(if commit {
                TxState::Committed
            } else {
                TxState::RolledBack
            });
            self.core.finish(if commit {
                CommitOutcome::Committed
            } else {
                CommitOutcome::Aborted
            });
        }
        finished
    }
}

/// Commits or rolls back a prepared branch on `conn`. `Ok(false)`: the
/// database knows no such branch here (someone finished it, or, on MySQL,
/// another live connection holds it).
pub(crate) async fn finish_on<DB: Driver>(
    conn: &mut DB::Connection,
    prepared: &dyn PreparedTransactions,
    branch: &BranchId,
    commit: bool,
) -> Result<bool, Error> {
    match DB::execute(conn, Cow::Owned(prepared.finish(branch, commit))).await {
        Ok(()) => Ok(true),
        Err(sqlx::Error::Database(database)) if prepared.is_out_of_reach(&*database) => Ok(false),
        Err(source) => Err(Error::database(Operation::FinishPrepared, source)),
    }
}

impl<DB: Driver> Drop for Session<DB> {
    // A prepared branch whose phase two never came: its connection is
    // closed, not pooled, so that the branch is left to recovery (MySQL
    // lets no other connection finish it while this one lives).
    fn drop(&mut self) {
        let kept = self
            .prepared_conn
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut conn) = kept {
            conn.close_on_drop();
        }
    }
}
