//! SQLite: one writer at a time and always serializable. Writing transactions
//! that ask for `serializable` take the write lock up front (`BEGIN
//! IMMEDIATE`), because a deferred transaction that reads and then writes
//! fails with `SQLITE_BUSY` under contention whatever the busy timeout.
//! Read-only and read-uncommitted are connection pragmas, restored at the end.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::future::Future;
use std::time::Duration;

use sqlx::error::DatabaseError;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::SqliteError;
use sqlx::{Sqlite, SqliteConnection};

use super::execute_raw;
use super::sealed::BackendOps;
use crate::options::{Isolation, TxOptions};
use crate::retry::FailureKind;

impl BackendOps for Sqlite {
    const SYSTEM: &'static str = "sqlite";

    // SQLite runs in-process: there is no server to stop at the deadline.
    fn begin_sql(options: &TxOptions, _server_timeout: Option<Duration>) -> Cow<'static, str> {
        let read_only = options.read_only == Some(true);
        Cow::Borrowed(match (options.isolation, read_only) {
            (Some(Isolation::ReadUncommitted), true) => {
                "PRAGMA query_only = ON; PRAGMA read_uncommitted = ON; BEGIN DEFERRED"
            }
            (Some(Isolation::ReadUncommitted), false) => {
                "PRAGMA read_uncommitted = ON; BEGIN DEFERRED"
            }
            (_, true) => "PRAGMA query_only = ON; BEGIN DEFERRED",
            (Some(Isolation::Serializable), false) => "BEGIN IMMEDIATE",
            (_, false) => "BEGIN DEFERRED",
        })
    }

    fn classify(error: &(dyn StdError + 'static)) -> Option<FailureKind> {
        let database = error.downcast_ref::<SqliteError>()?;
        // SQLITE_BUSY, SQLITE_LOCKED and their extended codes: BUSY_RECOVERY,
        // LOCKED_SHAREDCACHE, BUSY_SNAPSHOT, LOCKED_VTAB, BUSY_TIMEOUT.
        match database.code()?.parse::<i32>().ok()? {
            5 | 6 | 261 | 262 | 517 | 518 | 773 => Some(FailureKind::Busy),
            _ => None,
        }
    }

    fn restore_sql(options: &TxOptions, _server_timeout: bool) -> Option<&'static str> {
        let read_only = options.read_only == Some(true);
        match (options.isolation, read_only) {
            (Some(Isolation::ReadUncommitted), true) => {
                Some("PRAGMA query_only = OFF; PRAGMA read_uncommitted = OFF")
            }
            (Some(Isolation::ReadUncommitted), false) => Some("PRAGMA read_uncommitted = OFF"),
            (_, true) => Some("PRAGMA query_only = OFF"),
            (_, false) => None,
        }
    }

    fn execute<'c>(
        conn: &'c mut SqliteConnection,
        sql: Cow<'static, str>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c {
        execute_raw::<Sqlite>(conn, sql)
    }

    fn abandon(mut conn: PoolConnection<Sqlite>, options: &TxOptions) {
        // SQLite's worker thread runs commands in order and always to the end,
        // so a ROLLBACK queued now runs after whatever was cut off and leaves
        // the connection clean. Closing instead would destroy an in-memory
        // database, so close only when no runtime is left to roll back on.
        let restore = Sqlite::restore_sql(options, false);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    // Fails harmlessly when the transaction never began.
                    let _ = Sqlite::execute(&mut conn, Cow::Borrowed("ROLLBACK")).await;
                    if let Some(restore) = restore
                        && Sqlite::execute(&mut conn, Cow::Borrowed(restore))
                            .await
                            .is_err()
                    {
                        drop(conn.detach());
                    }
                });
            }
            Err(_) => drop(conn.detach()),
        }
    }
}
