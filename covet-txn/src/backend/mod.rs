//! The one trait behind which every database difference lives.
//!
//! A backend module owns its SQL (how to begin at an isolation level, how to
//! end, what a savepoint statement looks like) and what to do with a
//! connection whose transaction was abandoned mid-way. Nothing outside
//! `backend/` matches on the database.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::future::Future;
use std::time::Duration;

use sqlx::error::DatabaseError;

use crate::error::CommitOutcome;
use crate::retry::FailureKind;

use crate::options::Access;
#[cfg(any(feature = "postgres", feature = "mysql"))]
use crate::options::Isolation;

#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

/// A database covet-txn can run transactions on: [`sqlx::Postgres`],
/// [`sqlx::MySql`] (also MariaDB) and [`sqlx::Sqlite`], each behind its cargo
/// feature.
///
/// The trait is sealed: its methods are the runtime's business.
pub trait Backend: sqlx::Database + sealed::BackendOps {}

impl<DB: sqlx::Database + sealed::BackendOps> Backend for DB {}

/// The statement that puts back the session settings a transaction's BEGIN
/// changed, if it changed any.
pub(crate) type Restore = Option<&'static str>;

/// A COMMIT whose call was cancelled while it was in flight.
#[derive(Debug, Clone, Default)]
pub struct InFlightCommit {
    /// The transaction's server-side id, taken before COMMIT when the call
    /// asked to resolve ambiguous commits.
    pub(crate) token: Option<String>,
}

/// Which savepoint a statement is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SavepointName<'a> {
    /// The savepoint of the nested scope at this depth (2 for the first).
    Scope(u32),
    /// A savepoint the user created by hand, by its checked name.
    Named(&'a str),
}

/// What a savepoint statement does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SavepointAction {
    Create,
    Release,
    /// Roll back and keep the savepoint for another rollback.
    RollbackTo,
    /// Roll back and free the savepoint, as a scope does when it fails.
    RollbackAndRelease,
}

pub(crate) mod sealed {
    use super::*;

    /// The per-database operations. Implemented once per backend module.
    pub trait BackendOps: sqlx::Database + Sized {
        /// The OpenTelemetry `db.system` name.
        const SYSTEM: &'static str;

        /// Whether a COMMIT that fails with the server's answer has always
        /// ended the transaction, so that no ROLLBACK needs to follow.
        const FAILED_COMMIT_ENDS_TRANSACTION: bool = false;

        /// The statement (possibly several, sent as one request) that begins a
        /// transaction with these options. With `server_timeout`, it also
        /// bounds the server's statements and lock waits by that time.
        fn begin_sql(options: &Access, server_timeout: Option<Duration>) -> Cow<'static, str>;

        /// Begins a transaction. Returns the statement that puts back the
        /// session settings the BEGIN changed, to run when the transaction
        /// ends, even if the BEGIN failed part-way; and the BEGIN's result.
        fn begin<'c>(
            conn: &'c mut Self::Connection,
            options: &Access,
            server_timeout: Option<Duration>,
        ) -> impl Future<Output = (Restore, Result<(), sqlx::Error>)> + Send + 'c {
            let sql = Self::begin_sql(options, server_timeout);
            async move { (None, Self::execute(conn, sql).await) }
        }

        /// The retryable failure a database error stands for, if it is this
        /// backend's error and a retryable one.
        fn classify(error: &(dyn DatabaseError + 'static)) -> Option<FailureKind>;

        /// The error as a database error, if it is this backend's concrete
        /// error type (a user's error may hold one without sqlx's wrapper).
        fn as_database_error<'a>(
            error: &'a (dyn StdError + 'static),
        ) -> Option<&'a (dyn DatabaseError + 'static)>;

        /// Something to identify the transaction by after its COMMIT was cut
        /// off, taken just before COMMIT (one more statement).
        fn commit_token(
            _conn: &mut Self::Connection,
        ) -> impl Future<Output = Result<Option<String>, sqlx::Error>> + Send + '_ {
            std::future::ready(Ok(None))
        }

        /// Asks the server, on a fresh connection, what became of the
        /// transaction `token` identifies.
        fn resolve_commit(
            _pool: &sqlx::Pool<Self>,
            _token: &str,
        ) -> impl Future<Output = CommitOutcome> + Send {
            std::future::ready(CommitOutcome::Unknown)
        }

        /// The statement for a savepoint action. `name` is a validated
        /// identifier, never raw user input.
        fn savepoint_sql(action: SavepointAction, name: &str) -> String {
            match action {
                SavepointAction::Create => format!("SAVEPOINT {name}"),
                SavepointAction::Release => format!("RELEASE SAVEPOINT {name}"),
                SavepointAction::RollbackTo => format!("ROLLBACK TO SAVEPOINT {name}"),
                // Rolling back keeps the savepoint alive on every server; releasing
                // it in the same request frees it without another round trip.
                SavepointAction::RollbackAndRelease => {
                    format!("ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}")
                }
            }
        }

        /// Commits the transaction and runs `restore`. `Err`: COMMIT failed;
        /// `Ok(false)`: it committed, but the session could not be restored.
        fn commit(
            conn: &mut Self::Connection,
            restore: Restore,
        ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send + '_ {
            async move {
                Self::execute(conn, Cow::Borrowed("COMMIT")).await?;
                Ok(Self::restore(conn, restore).await)
            }
        }

        /// Rolls the transaction back (succeeding when none is open) and runs
        /// `restore`, as `commit` does.
        fn rollback(
            conn: &mut Self::Connection,
            restore: Restore,
        ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send + '_ {
            async move {
                Self::execute(conn, Cow::Borrowed("ROLLBACK")).await?;
                Ok(Self::restore(conn, restore).await)
            }
        }

        /// Puts back the session settings a BEGIN changed; `false` if that
        /// failed and the connection's settings are unknown.
        fn restore(
            conn: &mut Self::Connection,
            restore: Restore,
        ) -> impl Future<Output = bool> + Send + '_ {
            async move {
                match restore {
                    Some(sql) => Self::execute(conn, Cow::Borrowed(sql)).await.is_ok(),
                    None => true,
                }
            }
        }

        /// Runs a nested scope's savepoint statement.
        fn scope_savepoint(
            conn: &mut Self::Connection,
            action: SavepointAction,
            depth: u32,
        ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + '_ {
            let name = format!("covet_sp_{depth}");
            Self::execute(conn, Cow::Owned(Self::savepoint_sql(action, &name)))
        }

        /// Sends trusted SQL in one request over the simple protocol.
        fn execute<'c>(
            conn: &'c mut Self::Connection,
            sql: Cow<'static, str>,
        ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c;

        /// Rolls back and restores the session, as the last step of
        /// `recover`: a session that could not be restored is an error.
        fn roll_back_cleanly(
            conn: &mut Self::Connection,
            restore: Restore,
        ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + '_ {
            async move {
                if Self::rollback(conn, restore).await? {
                    Ok(())
                } else {
                    Err(sqlx::Error::Protocol(
                        "the session's settings could not be put back".to_owned(),
                    ))
                }
            }
        }

        /// Brings back a connection whose future was dropped while a
        /// statement was in flight: reads the server's answer to it (sqlx
        /// reads pending replies before sending anything new), ends any
        /// transaction left open, and restores the session. With `commit`,
        /// the statement in flight was COMMIT, and the result says what
        /// became of it. `Err`: the connection cannot be trusted and is
        /// closed.
        fn recover(
            conn: &mut Self::Connection,
            restore: Restore,
            commit: Option<InFlightCommit>,
        ) -> impl Future<Output = Result<Option<CommitOutcome>, sqlx::Error>> + Send + '_;
    }
}

/// The database error one link of an error chain holds, in any of the
/// shapes it takes there: a `sqlx::Error`, the `Box<dyn DatabaseError>` that
/// `sqlx::Error::source()` yields (which is what an `#[error(transparent)]`
/// wrapper forwards to), or a backend's concrete error type.
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
    if let Some(database) = <sqlx::Postgres as sealed::BackendOps>::as_database_error(error) {
        return Some(database);
    }
    #[cfg(feature = "mysql")]
    if let Some(database) = <sqlx::MySql as sealed::BackendOps>::as_database_error(error) {
        return Some(database);
    }
    #[cfg(feature = "sqlite")]
    if let Some(database) = <sqlx::Sqlite as sealed::BackendOps>::as_database_error(error) {
        return Some(database);
    }
    None
}

/// The retryable failure one link of an error chain stands for: a database
/// error of any compiled-in backend, or a lost connection.
pub(crate) fn classify(error: &(dyn StdError + 'static)) -> Option<FailureKind> {
    if let Some(database) = database_error(error) {
        return classify_database(database);
    }
    match error.downcast_ref::<sqlx::Error>() {
        Some(sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed) => {
            Some(FailureKind::ConnectionLost)
        }
        Some(_) => None,
        None => error
            .downcast_ref::<std::io::Error>()
            .map(|_| FailureKind::ConnectionLost),
    }
}

fn classify_database(database: &(dyn DatabaseError + 'static)) -> Option<FailureKind> {
    #[cfg(feature = "postgres")]
    if let Some(kind) = <sqlx::Postgres as sealed::BackendOps>::classify(database) {
        return Some(kind);
    }
    #[cfg(feature = "mysql")]
    if let Some(kind) = <sqlx::MySql as sealed::BackendOps>::classify(database) {
        return Some(kind);
    }
    #[cfg(feature = "sqlite")]
    if let Some(kind) = <sqlx::Sqlite as sealed::BackendOps>::classify(database) {
        return Some(kind);
    }
    None
}

/// How long the server may keep working past the client's deadline: the
/// client gives up first and reports a timeout, and the server stops
/// shortly after, freeing the transaction's locks.
pub(crate) const SERVER_TIMEOUT_GRACE: Duration = Duration::from_millis(100);

/// The longest server-side timeout set: PostgreSQL's `statement_timeout` is
/// a 32-bit count of milliseconds (about 24.8 days). A deadline further away
/// is left to the client alone.
pub(crate) const SERVER_TIMEOUT_LIMIT: Duration = Duration::from_millis(i32::MAX as u64);

/// Runs `sql` through sqlx's raw-SQL path, the one that sends several
/// statements in one request and logs them like any other statement.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
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

/// The access-mode clause PostgreSQL and MySQL share.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn access_clause(options: &Access) -> &'static str {
    match options.read_only {
        Some(true) => " READ ONLY",
        Some(false) => " READ WRITE",
        None => "",
    }
}

/// The isolation level written for SQL, if one was asked for.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn isolation_sql(options: &Access) -> Option<&'static str> {
    options.isolation.map(Isolation::sql)
}
