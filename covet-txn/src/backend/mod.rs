//! The drivers: how each wire protocol sqlx speaks runs the SQL a dialect
//! writes, in as few requests as it allows, and how a connection whose
//! future was dropped mid-statement is brought back. One file per backend,
//! holding its driver and its built-in dialect; nothing outside this folder
//! matches on the database.
//!
//! The driver trait is sealed and implemented for sqlx's PostgreSQL, MySQL
//! and SQLite types only; what varies between databases that share a driver
//! is the dialect's business (`dialect`).

use std::borrow::Cow;
use std::error::Error as StdError;
use std::future::Future;
use std::sync::Arc;

use sqlx::error::DatabaseError;

use crate::admission::writers::WriterGate;
use crate::dialect::{BranchId, Dialect, SavepointAction};
use crate::error::Error;
use crate::failure::{self, CommitOutcome, FailureKind};

#[cfg(feature = "mysql")]
pub(crate) mod mysql;
#[cfg(feature = "outbox")]
pub(crate) mod outbox;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

/// The statement that puts back the session settings a transaction's BEGIN
/// changed, if it changed any.
pub(crate) type Restore = Option<&'static str>;

/// A COMMIT whose call was cancelled while it was in flight.
#[derive(Debug, Clone, Default)]
pub struct InFlightCommit {
    /// The transaction's server-side id, taken before COMMIT when the call
    /// asked to resolve ambiguous commits. Only PostgreSQL can look a
    /// transaction up by id afterwards, so other builds only carry it.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) token: Option<String>,
}

/// What a driver must also do when the outbox is compiled in: its SQL.
#[cfg(feature = "outbox")]
pub use self::outbox::OutboxDriver as OutboxSupport;

/// Nothing more without the outbox.
#[cfg(not(feature = "outbox"))]
pub trait OutboxSupport {}

#[cfg(not(feature = "outbox"))]
impl<DB: sqlx::Database> OutboxSupport for DB {}

/// A driver: one of sqlx's databases, as the runtime talks to it.
pub trait Driver: sqlx::Database + Sized + OutboxSupport {
    /// The dialect a manager uses unless its builder names another.
    fn default_dialect() -> Arc<dyn Dialect<Self>>;

    /// Sends trusted SQL in one request over the simple protocol.
    fn execute<'c>(
        conn: &'c mut Self::Connection,
        sql: Cow<'static, str>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c;

    /// Runs a dialect's probe and returns its one row of booleans.
    fn probe<'c>(
        conn: &'c mut Self::Connection,
        sql: &'static str,
    ) -> impl Future<Output = Result<Vec<bool>, sqlx::Error>> + Send + 'c;

    /// The in-process gate that admits one write transaction at a time to
    /// the pool's database, where the database itself lets only one run
    /// (SQLite files); `None` elsewhere.
    fn writer_gate(_pool: &sqlx::Pool<Self>) -> Option<WriterGate> {
        None
    }

    /// Begins a transaction with the dialect's statement.
    fn begin<'c>(
        conn: &'c mut Self::Connection,
        statement: Cow<'static, str>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c {
        Self::execute(conn, statement)
    }

    /// Commits (`commit`) or rolls back with the dialect's `statement`, then
    /// runs `restore`. `Err`: the statement itself failed; `Ok(false)`: it
    /// succeeded, but the session could not be restored.
    fn end<'c>(
        conn: &'c mut Self::Connection,
        _commit: bool,
        statement: &'static str,
        restore: Restore,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send + 'c {
        async move {
            Self::execute(conn, Cow::Borrowed(statement)).await?;
            Ok(Self::restore(conn, restore).await)
        }
    }

    /// Queues ROLLBACK in the connection's write buffer, to go out with
    /// whatever uses the connection next (the pool's check when it is given
    /// back), as sqlx's `start_rollback` does for a dropped `Transaction`;
    /// `false` if the driver cannot, and the caller must send it itself.
    fn queue_rollback(_conn: &mut Self::Connection, _restore: Restore) -> bool {
        false
    }

    /// Puts back the session settings a BEGIN changed; `false` if that
    /// failed and the connection's settings are unknown.
    fn restore<'c>(
        conn: &'c mut Self::Connection,
        restore: Restore,
    ) -> impl Future<Output = bool> + Send + 'c {
        async move {
            match restore {
                Some(sql) => Self::execute(conn, Cow::Borrowed(sql)).await.is_ok(),
                None => true,
            }
        }
    }

    /// Runs a nested scope's savepoint statement at `depth`.
    fn scope_savepoint<'c>(
        conn: &'c mut Self::Connection,
        dialect: &dyn Dialect<Self>,
        action: SavepointAction,
        depth: u32,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c {
        let sql = dialect.savepoint(action, crate::dialect::SavepointName::Scope(depth));
        Self::execute(conn, sql)
    }

    /// Runs a query that returns one text value, with an optional text
    /// parameter: the dialect's commit token and commit status.
    fn fetch_text<'c>(
        conn: &'c mut Self::Connection,
        sql: &'static str,
        parameter: Option<String>,
    ) -> impl Future<Output = Result<Option<String>, sqlx::Error>> + Send + 'c;

    /// Asks, on a connection of `pool` (not the transaction's), what became
    /// of the transaction `token` identifies.
    fn resolve_commit(
        pool: sqlx::Pool<Self>,
        dialect: Arc<dyn Dialect<Self>>,
        token: String,
    ) -> impl Future<Output = CommitOutcome> + Send {
        async move {
            let Some(status_sql) = dialect.commit_status() else {
                return CommitOutcome::Unknown;
            };
            // The killed connection may still be finishing: ask for a while.
            for _ in 0..20 {
                let Ok(mut conn) = pool.acquire().await else {
                    return CommitOutcome::Unknown;
                };
                let status = Self::fetch_text(&mut conn, status_sql, Some(token.clone())).await;
                match status.as_ref().map(Option::as_deref) {
                    Ok(Some("committed")) => return CommitOutcome::Committed,
                    Ok(Some("aborted")) => return CommitOutcome::Aborted,
                    Ok(Some(_)) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                    Ok(None) | Err(_) => return CommitOutcome::Unknown,
                }
            }
            CommitOutcome::Unknown
        }
    }

    /// Brings back a connection whose future was dropped while a statement
    /// was in flight: reads the server's answer to it (sqlx reads pending
    /// replies before sending anything new), ends any transaction left
    /// open, and restores the session. With `commit`, the statement in
    /// flight was COMMIT, and the result says what became of it. `Err`: the
    /// connection cannot be trusted and is closed.
    fn recover<'c>(
        conn: &'c mut Self::Connection,
        dialect: &'c dyn Dialect<Self>,
        restore: Restore,
        commit: Option<InFlightCommit>,
    ) -> impl Future<Output = Result<Option<CommitOutcome>, sqlx::Error>> + Send + 'c;

    /// Ends phase one of a two-phase commit with the dialect's PREPARE
    /// statement, which leaves the connection outside any transaction.
    fn prepare_branch<'c>(
        conn: &'c mut Self::Connection,
        sql: String,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c {
        Self::execute(conn, Cow::Owned(sql))
    }

    /// Runs a query whose parameters and columns are all text (the
    /// coordinator's decision log).
    fn text_rows<'c>(
        conn: &'c mut Self::Connection,
        sql: String,
        parameters: Vec<String>,
    ) -> impl Future<Output = Result<TextRows, sqlx::Error>> + Send + 'c;

    /// The prepared branches the dialect's list query finds.
    fn list_branches<'c>(
        conn: &'c mut Self::Connection,
        sql: &'static str,
    ) -> impl Future<Output = Result<Vec<BranchId>, sqlx::Error>> + Send + 'c;

    /// The error as a database error, if it is this driver's concrete error
    /// type (a user's error may hold one without sqlx's wrapper).
    fn as_database_error<'a>(
        error: &'a (dyn StdError + 'static),
    ) -> Option<&'a (dyn DatabaseError + 'static)>;
}

/// Rolls back and restores the session, as the last step of a recovery: a
/// session that could not be restored is an error.
pub(crate) async fn roll_back_cleanly<DB: Driver>(
    conn: &mut DB::Connection,
    dialect: &dyn Dialect<DB>,
    restore: Restore,
) -> Result<(), sqlx::Error> {
    if DB::end(conn, false, dialect.rollback(), restore).await? {
        Ok(())
    } else {
        Err(sqlx::Error::Protocol(
            "the session's settings could not be put back".to_owned(),
        ))
    }
}

/// The database error one link of an error chain holds, in any of the
/// shapes it takes there: a `sqlx::Error`, the `Box<dyn DatabaseError>` that
/// `sqlx::Error::source()` yields (which is what an `#[error(transparent)]`
/// wrapper forwards to), or a driver's concrete error type.
pub(crate) fn database_error<'a>(
    error: &'a (dyn StdError + 'static),
) -> Option<&'a (dyn DatabaseError + 'static)> {
    if let Some(driver) = error.downcast_ref::<sqlx::Error>() {
        return driver.as_database_error();
    }
    if let Some(boxed) = error.downcast_ref::<Box<dyn DatabaseError>>() {
        return Some(&**boxed);
    }
    #[cfg(feature = "postgres")]
    if let Some(database) = <sqlx::Postgres as Driver>::as_database_error(error) {
        return Some(database);
    }
    #[cfg(feature = "mysql")]
    if let Some(database) = <sqlx::MySql as Driver>::as_database_error(error) {
        return Some(database);
    }
    #[cfg(feature = "sqlite")]
    if let Some(database) = <sqlx::Sqlite as Driver>::as_database_error(error) {
        return Some(database);
    }
    None
}

/// The database error anywhere in an error's `source()` chain.
pub(crate) fn find_database_error<'a>(
    error: &'a (dyn StdError + 'static),
) -> Option<&'a (dyn DatabaseError + 'static)> {
    failure::chain(error).find_map(database_error)
}

/// The retryable failure inside an error, as `dialect` classifies database
/// errors, looking through the error's whole `source()` chain: a database
/// error in any shape, a lost connection, or one of covet-txn's own errors
/// that stands for one.
pub(crate) fn classify<DB: sqlx::Database>(
    dialect: &dyn Dialect<DB>,
    error: &(dyn StdError + 'static),
) -> Option<FailureKind> {
    failure::chain(error).find_map(|link| {
        if let Some(kind) = link
            .downcast_ref::<Error>()
            .and_then(Error::own_failure_kind)
        {
            return Some(kind);
        }
        if let Some(database) = database_error(link) {
            return dialect.classify(database);
        }
        match link.downcast_ref::<sqlx::Error>() {
            Some(sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed) => {
                Some(FailureKind::ConnectionLost)
            }
            Some(_) => None,
            None => link
                .downcast_ref::<std::io::Error>()
                .map(|_| FailureKind::ConnectionLost),
        }
    })
}

/// Runs `sql` through sqlx's raw-SQL path, the one that sends several
/// statements in one request and logs them like any other statement.
pub(crate) async fn execute_raw<'c, DB>(
    conn: &'c mut DB::Connection,
    sql: Cow<'static, str>,
) -> Result<(), sqlx::Error>
where
    DB: sqlx::Database,
    &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let statement = match sql {
        Cow::Borrowed(text) => sqlx::raw_sql(text),
        Cow::Owned(text) => sqlx::raw_sql(sqlx::AssertSqlSafe(text)),
    };
    statement.execute(conn).await.map(drop)
}

/// Rows of text columns, any of which may be NULL.
pub(crate) type TextRows = Vec<Vec<Option<String>>>;

/// `Driver::text_rows`, for any of sqlx's databases.
pub(crate) async fn text_rows<'c, DB>(
    conn: &'c mut DB::Connection,
    sql: String,
    parameters: Vec<String>,
) -> Result<TextRows, sqlx::Error>
where
    DB: sqlx::Database,
    &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'r> Option<String>: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    use sqlx::Row;
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for parameter in parameters {
        query = query.bind(parameter);
    }
    let rows = query.fetch_all(conn).await?;
    rows.iter()
        .map(|row| (0..row.len()).map(|column| row.try_get(column)).collect())
        .collect()
}

/// The access-mode clause PostgreSQL and MySQL share.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn access_clause(read_only: Option<bool>) -> &'static str {
    match read_only {
        Some(true) => " READ ONLY",
        Some(false) => " READ WRITE",
        None => "",
    }
}

/// How long the server may keep working past the client's deadline: the
/// client gives up first and reports a timeout, and the server stops
/// shortly after, freeing the transaction's locks.
pub(crate) const SERVER_TIMEOUT_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// The longest server-side timeout set: PostgreSQL's `statement_timeout` is
/// a 32-bit count of milliseconds (about 24.8 days). A deadline further away
/// is left to the client alone.
pub(crate) const SERVER_TIMEOUT_LIMIT: std::time::Duration =
    std::time::Duration::from_millis(i32::MAX as u64);
