//! SQLite: one writer at a time and always serializable. Writing transactions
//! that ask for `serializable` take the write lock up front (`BEGIN
//! IMMEDIATE`), because a deferred transaction that reads and then writes
//! fails with `SQLITE_BUSY` under contention whatever the busy timeout.
//! Read-only and read-uncommitted are connection pragmas, restored at the end.
//!
//! BEGIN, COMMIT and ROLLBACK go through sqlx's own transaction manager: the
//! connection's worker thread then knows a transaction is open, rolls back a
//! BEGIN whose answer nobody waits for, and runs these as dedicated commands
//! (cheaper than a prepared statement each).

use std::borrow::Cow;
use std::error::Error as StdError;
use std::future::Future;
use std::time::Duration;

use sqlx::error::DatabaseError;
use sqlx::sqlite::{SqliteError, SqliteTransactionManager};
use sqlx::{SqlSafeStr, Sqlite, SqliteConnection};
use sqlx_core::transaction::TransactionManager;

use super::sealed::BackendOps;
use super::{InFlightCommit, Restore, SavepointAction, execute_raw};
use crate::error::CommitOutcome;
use crate::options::{Access, Isolation};
use crate::retry::FailureKind;

impl BackendOps for Sqlite {
    const SYSTEM: &'static str = "sqlite";

    // SQLite runs in-process: there is no server to stop at the deadline.
    // The pragmas a read-only or read-uncommitted transaction needs are set
    // by `begin`, which knows whether the connection already has them.
    fn begin_sql(options: &Access, _server_timeout: Option<Duration>) -> Cow<'static, str> {
        let read_only = options.read_only == Some(true);
        Cow::Borrowed(match (options.isolation, read_only) {
            (Some(Isolation::Serializable), false) => "BEGIN IMMEDIATE",
            _ => "BEGIN DEFERRED",
        })
    }

    // `query_only` and `read_uncommitted` are connection state, which the
    // pool may have set itself: they are read first (one more trip to the
    // worker, only for transactions that need them), switched on only where
    // they are off, and switched back off after the transaction.
    fn begin<'c>(
        conn: &'c mut SqliteConnection,
        options: &Access,
        server_timeout: Option<Duration>,
    ) -> impl Future<Output = (Restore, Result<(), sqlx::Error>)> + Send + 'c {
        let wants_query_only = options.read_only == Some(true);
        let wants_uncommitted = options.isolation == Some(Isolation::ReadUncommitted);
        let plain = Self::begin_sql(options, server_timeout);
        async move {
            let (set_query_only, set_uncommitted) = if wants_query_only || wants_uncommitted {
                let current: Result<(bool, bool), sqlx::Error> = sqlx::query_as(
                    "SELECT (SELECT query_only FROM pragma_query_only()), \
                     (SELECT read_uncommitted FROM pragma_read_uncommitted())",
                )
                .fetch_one(&mut *conn)
                .await;
                match current {
                    Ok((query_only, uncommitted)) => (
                        wants_query_only && !query_only,
                        wants_uncommitted && !uncommitted,
                    ),
                    Err(error) => return (None, Err(error)),
                }
            } else {
                (false, false)
            };
            let (begin, restore) = match (set_query_only, set_uncommitted) {
                (true, true) => (
                    "PRAGMA query_only = ON; PRAGMA read_uncommitted = ON; BEGIN DEFERRED"
                        .into_sql_str(),
                    Some("PRAGMA query_only = OFF; PRAGMA read_uncommitted = OFF"),
                ),
                (true, false) => (
                    "PRAGMA query_only = ON; BEGIN DEFERRED".into_sql_str(),
                    Some("PRAGMA query_only = OFF"),
                ),
                (false, true) => (
                    "PRAGMA read_uncommitted = ON; BEGIN DEFERRED".into_sql_str(),
                    Some("PRAGMA read_uncommitted = OFF"),
                ),
                (false, false) => (sql_str(plain), None),
            };
            (
                restore,
                SqliteTransactionManager::begin(conn, Some(begin)).await,
            )
        }
    }

    fn classify(error: &(dyn DatabaseError + 'static)) -> Option<FailureKind> {
        let database = error.try_downcast_ref::<SqliteError>()?;
        // SQLITE_BUSY, SQLITE_LOCKED and their extended codes: BUSY_RECOVERY,
        // LOCKED_SHAREDCACHE, BUSY_SNAPSHOT, LOCKED_VTAB, BUSY_TIMEOUT.
        match database.code()?.parse::<i32>().ok()? {
            5 | 6 | 261 | 262 | 517 | 518 | 773 => Some(FailureKind::Busy),
            _ => None,
        }
    }

    // sqlx counts transaction levels per connection and ends only the
    // innermost one per call: at depth 2, its "commit" is a RELEASE. A scope
    // savepoint still open here (a nested scope cut off mid-way) must not
    // turn the transaction's COMMIT into a RELEASE, nor its ROLLBACK into a
    // ROLLBACK TO that leaves the transaction open on a pooled connection.
    async fn commit(conn: &mut SqliteConnection, restore: Restore) -> Result<bool, sqlx::Error> {
        if SqliteTransactionManager::get_transaction_depth(conn) > 1 {
            return Err(sqlx::Error::InvalidArgument(
                "a savepoint of this SQLite transaction is still open, so COMMIT would only \
                 release it; the transaction was rolled back instead"
                    .to_owned(),
            ));
        }
        SqliteTransactionManager::commit(conn).await?;
        Ok(Self::restore(conn, restore).await)
    }

    async fn rollback(conn: &mut SqliteConnection, restore: Restore) -> Result<bool, sqlx::Error> {
        while SqliteTransactionManager::get_transaction_depth(conn) > 0 {
            SqliteTransactionManager::rollback(conn).await?;
        }
        Ok(Self::restore(conn, restore).await)
    }

    // Nested scopes use sqlx's numbered savepoints, run by the worker as
    // dedicated commands. A rolled-back savepoint stays on SQLite's stack
    // until the transaction ends, which costs SQLite nothing.
    async fn scope_savepoint(
        conn: &mut SqliteConnection,
        action: SavepointAction,
        _depth: u32,
    ) -> Result<(), sqlx::Error> {
        match action {
            SavepointAction::Create => SqliteTransactionManager::begin(conn, None).await,
            SavepointAction::Release => SqliteTransactionManager::commit(conn).await,
            SavepointAction::RollbackTo | SavepointAction::RollbackAndRelease => {
                SqliteTransactionManager::rollback(conn).await
            }
        }
    }

    fn as_database_error<'a>(
        error: &'a (dyn StdError + 'static),
    ) -> Option<&'a (dyn DatabaseError + 'static)> {
        error
            .downcast_ref::<SqliteError>()
            .map(|database| database as &(dyn DatabaseError + 'static))
    }

    fn execute<'c>(
        conn: &'c mut SqliteConnection,
        sql: Cow<'static, str>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c {
        execute_raw::<Sqlite>(conn, sql)
    }

    // SQLite's worker thread runs commands in order and always to the end:
    // a round trip to it lets whatever was cut off (a BEGIN whose answer
    // nobody took, a statement, a COMMIT) finish. Then sqlx's count of open
    // transactions is exact: none left means a COMMIT in flight committed.
    // Closing instead would destroy an in-memory database, so a failure here
    // is the last resort.
    async fn recover(
        conn: &mut SqliteConnection,
        restore: Restore,
        commit: Option<InFlightCommit>,
    ) -> Result<Option<CommitOutcome>, sqlx::Error> {
        sqlx::Connection::ping(&mut *conn).await?;
        let outcome = if SqliteTransactionManager::get_transaction_depth(conn) == 0 {
            CommitOutcome::Committed
        } else {
            CommitOutcome::Aborted
        };
        Self::roll_back_cleanly(conn, restore).await?;
        Ok(commit.map(|_| outcome))
    }
}

fn sql_str(sql: Cow<'static, str>) -> sqlx::SqlStr {
    match sql {
        Cow::Borrowed(text) => text.into_sql_str(),
        Cow::Owned(text) => sqlx::AssertSqlSafe(text).into_sql_str(),
    }
}
