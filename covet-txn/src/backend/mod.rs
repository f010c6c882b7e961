//! The one trait behind which every database difference lives.
//!
//! A backend module owns its SQL (how to begin at an isolation level, how to
//! end, what a savepoint statement looks like) and what to do with a
//! connection whose transaction was abandoned mid-way. Nothing outside
//! `backend/` matches on the database.

use std::borrow::Cow;
use std::future::Future;

use sqlx::pool::PoolConnection;

#[cfg(any(feature = "postgres", feature = "mysql"))]
use crate::options::Isolation;
use crate::options::TxOptions;

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

        /// The statement (possibly several, sent as one request) that begins a
        /// transaction with these options.
        fn begin_sql(options: &TxOptions) -> Cow<'static, str>;

        /// A statement to run after COMMIT or ROLLBACK to undo session state
        /// that `begin_sql` set, if any.
        fn restore_sql(_options: &TxOptions) -> Option<&'static str> {
            None
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

        /// Sends trusted SQL in one request over the simple protocol.
        fn execute<'c>(
            conn: &'c mut Self::Connection,
            sql: Cow<'static, str>,
        ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c;

        /// Disposes of a connection whose protocol or transaction state is not
        /// known to be clean, so that it never returns to the pool inside a
        /// transaction.
        fn abandon(conn: PoolConnection<Self>, options: &TxOptions);
    }
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

/// The access-mode clause PostgreSQL and MySQL share.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn access_clause(options: &TxOptions) -> &'static str {
    match options.read_only {
        Some(true) => " READ ONLY",
        Some(false) => " READ WRITE",
        None => "",
    }
}

/// The isolation level written for SQL, if one was asked for.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn isolation_sql(options: &TxOptions) -> Option<&'static str> {
    options.isolation.map(Isolation::sql)
}
