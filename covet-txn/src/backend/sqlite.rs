//! SQLite: one writer at a time and always serializable. Writing
//! transactions that ask for `serializable` take the write lock up front
//! (`BEGIN IMMEDIATE`), because a deferred transaction that reads and then
//! writes fails with `SQLITE_BUSY` under contention whatever the busy
//! timeout. Read-only and read-uncommitted are connection pragmas, which the
//! pool may have set itself: they are read once per manager and changed only
//! where they differ.
//!
//! BEGIN, COMMIT, ROLLBACK and nested scopes' savepoints go through sqlx's
//! own transaction manager: the connection's worker thread then knows a
//! transaction is open, rolls back a BEGIN whose answer nobody waits for,
//! and runs these as dedicated commands (cheaper than a prepared statement
//! each).

use std::borrow::Cow;
use std::error::Error as StdError;
use std::sync::Arc;

use sqlx::error::DatabaseError;
use sqlx::sqlite::{SqliteError, SqliteTransactionManager};
use sqlx::{Row, SqlSafeStr, Sqlite, SqliteConnection};
use sqlx_core::transaction::TransactionManager;

use super::{Driver, InFlightCommit, Restore, TextRows, execute_raw, roll_back_cleanly, text_rows};
use crate::admission::writers::WriterGate;
use crate::dialect::{Begin, BeginRequest, BranchId, Dialect, SavepointAction, SavepointName};
use crate::failure::{CommitOutcome, FailureKind};
use crate::options::Isolation;

/// SQLite's rules: `SQLITE_BUSY`, `SQLITE_LOCKED` and their extended codes
/// are retried.
#[derive(Debug, Clone, Copy, Default)]
pub struct SqliteDialect;

/// Reads the two pragmas a transaction may switch on.
const READ_PRAGMAS: &str = "SELECT (SELECT query_only FROM pragma_query_only()), \
     (SELECT read_uncommitted FROM pragma_read_uncommitted())";

impl Dialect<Sqlite> for SqliteDialect {
    fn system(&self) -> &'static str {
        "sqlite"
    }

    fn default_isolation(&self) -> Isolation {
        Isolation::Serializable
    }

    // Only the first transaction that needs a pragma pays the extra trip to
    // the worker; the runtime keeps the answer.
    fn probe(&self, request: &BeginRequest) -> Option<&'static str> {
        let access = request.access;
        (access.read_only == Some(true) || access.isolation == Some(Isolation::ReadUncommitted))
            .then_some(READ_PRAGMAS)
    }

    // SQLite runs in-process: there is no server to stop at the deadline.
    fn begin(&self, request: &BeginRequest, probed: &[bool]) -> Begin {
        let access = request.access;
        let query_only_on = probed.first().copied().unwrap_or(false);
        let uncommitted_on = probed.get(1).copied().unwrap_or(false);
        let set_query_only = access.read_only == Some(true) && !query_only_on;
        let set_uncommitted =
            access.isolation == Some(Isolation::ReadUncommitted) && !uncommitted_on;
        match (set_query_only, set_uncommitted) {
            (true, true) => Begin::restoring(
                "PRAGMA query_only = ON; PRAGMA read_uncommitted = ON; BEGIN DEFERRED",
                "PRAGMA query_only = OFF; PRAGMA read_uncommitted = OFF",
            ),
            (true, false) => Begin::restoring(
                "PRAGMA query_only = ON; BEGIN DEFERRED",
                "PRAGMA query_only = OFF",
            ),
            (false, true) => Begin::restoring(
                "PRAGMA read_uncommitted = ON; BEGIN DEFERRED",
                "PRAGMA read_uncommitted = OFF",
            ),
            (false, false) => {
                Begin::plain(match (access.isolation, access.read_only == Some(true)) {
                    (Some(Isolation::Serializable), false) => "BEGIN IMMEDIATE",
                    _ => "BEGIN DEFERRED",
                })
            }
        }
    }

    fn savepoint(&self, action: SavepointAction, name: SavepointName<'_>) -> Cow<'static, str> {
        crate::dialect::standard_savepoint(action, name)
    }

    fn classify(&self, error: &(dyn DatabaseError + 'static)) -> Option<FailureKind> {
        let database = error.try_downcast_ref::<SqliteError>()?;
        // SQLITE_BUSY, SQLITE_LOCKED and their extended codes: BUSY_RECOVERY,
        // LOCKED_SHAREDCACHE, BUSY_SNAPSHOT, LOCKED_VTAB, BUSY_TIMEOUT.
        match database.code()?.parse::<i32>().ok()? {
            5 | 6 | 261 | 262 | 517 | 518 | 773 => Some(FailureKind::Busy),
            _ => None,
        }
    }
}

impl Driver for Sqlite {
    fn default_dialect() -> Arc<dyn Dialect<Sqlite>> {
        Arc::new(SqliteDialect)
    }

    /// A database file's gate, by its canonical path; none for an in-memory
    /// database (it has no file on disk), which belongs to one pool.
    fn writer_gate(pool: &sqlx::Pool<Sqlite>) -> Option<WriterGate> {
        let options = pool.connect_options();
        let path = std::fs::canonicalize(options.get_filename()).ok()?;
        Some(WriterGate::of(path.to_string_lossy().into_owned()))
    }

    fn execute<'c>(
        conn: &'c mut SqliteConnection,
        sql: Cow<'static, str>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c {
        execute_raw::<Sqlite>(conn, sql)
    }

    async fn probe(
        conn: &mut SqliteConnection,
        sql: &'static str,
    ) -> Result<Vec<bool>, sqlx::Error> {
        let row = sqlx::query(sql).fetch_one(conn).await?;
        (0..row.len()).map(|column| row.try_get(column)).collect()
    }

    fn begin<'c>(
        conn: &'c mut SqliteConnection,
        statement: Cow<'static, str>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c {
        let statement = match statement {
            Cow::Borrowed(text) => text.into_sql_str(),
            Cow::Owned(text) => sqlx::AssertSqlSafe(text).into_sql_str(),
        };
        SqliteTransactionManager::begin(conn, Some(statement))
    }

    // sqlx counts transaction levels per connection and ends only the
    // innermost one per call: at depth 2, its "commit" is a RELEASE. A scope
    // savepoint still open here (a nested scope cut off mid-way) must not
    // turn the transaction's COMMIT into a RELEASE, nor its ROLLBACK into a
    // ROLLBACK TO that leaves the transaction open on a pooled connection.
    async fn end(
        conn: &mut SqliteConnection,
        commit: bool,
        _statement: &'static str,
        restore: Restore,
    ) -> Result<bool, sqlx::Error> {
        if commit {
            if SqliteTransactionManager::get_transaction_depth(conn) > 1 {
                return Err(sqlx::Error::InvalidArgument(
                    "a savepoint of this SQLite transaction is still open, so COMMIT would only \
                     release it; the transaction was rolled back instead"
                        .to_owned(),
                ));
            }
            SqliteTransactionManager::commit(conn).await?;
        } else {
            while SqliteTransactionManager::get_transaction_depth(conn) > 0 {
                SqliteTransactionManager::rollback(conn).await?;
            }
        }
        Ok(Self::restore(conn, restore).await)
    }

    // Nested scopes use sqlx's numbered savepoints, run by the worker as
    // dedicated commands. A rolled-back savepoint stays on SQLite's stack
    // until the transaction ends, which costs SQLite nothing. (Not an `async
    // fn`: that would capture the dialect's borrow, which the trait's future
    // may not hold.)
    #[allow(clippy::manual_async_fn)]
    fn scope_savepoint<'c>(
        conn: &'c mut SqliteConnection,
        _dialect: &dyn Dialect<Sqlite>,
        action: SavepointAction,
        _depth: u32,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c {
        async move {
            match action {
                SavepointAction::Create => SqliteTransactionManager::begin(conn, None).await,
                SavepointAction::Release => SqliteTransactionManager::commit(conn).await,
                SavepointAction::RollbackTo | SavepointAction::RollbackAndRelease => {
                    SqliteTransactionManager::rollback(conn).await
                }
            }
        }
    }

    async fn fetch_text(
        conn: &mut SqliteConnection,
        sql: &'static str,
        parameter: Option<String>,
    ) -> Result<Option<String>, sqlx::Error> {
        let mut query = sqlx::query_scalar(sql);
        if let Some(parameter) = parameter {
            query = query.bind(parameter);
        }
        query.fetch_one(conn).await
    }

    // SQLite's worker thread runs commands in order and always to the end:
    // a round trip to it lets whatever was cut off (a BEGIN whose answer
    // nobody took, a statement, a COMMIT) finish. Then sqlx's count of open
    // transactions is exact: none left means a COMMIT in flight committed.
    // Closing instead would destroy an in-memory database, so a failure here
    // is the last resort.
    async fn recover(
        conn: &mut SqliteConnection,
        dialect: &dyn Dialect<Sqlite>,
        restore: Restore,
        commit: Option<InFlightCommit>,
    ) -> Result<Option<CommitOutcome>, sqlx::Error> {
        sqlx::Connection::ping(&mut *conn).await?;
        let outcome = if SqliteTransactionManager::get_transaction_depth(conn) == 0 {
            CommitOutcome::Committed
        } else {
            CommitOutcome::Aborted
        };
        roll_back_cleanly(conn, dialect, restore).await?;
        Ok(commit.map(|_| outcome))
    }

    fn text_rows<'c>(
        conn: &'c mut SqliteConnection,
        sql: String,
        parameters: Vec<String>,
    ) -> impl Future<Output = Result<TextRows, sqlx::Error>> + Send + 'c {
        text_rows::<Sqlite>(conn, sql, parameters)
    }

    // SQLite cannot hold a prepared transaction, so it never has one.
    async fn list_branches(
        _conn: &mut SqliteConnection,
        _sql: &'static str,
    ) -> Result<Vec<BranchId>, sqlx::Error> {
        Ok(Vec::new())
    }

    fn as_database_error<'a>(
        error: &'a (dyn StdError + 'static),
    ) -> Option<&'a (dyn DatabaseError + 'static)> {
        error
            .downcast_ref::<SqliteError>()
            .map(|database| database as &(dyn DatabaseError + 'static))
    }
}
