//! SQLite: one writer at a time and always serializable. Writing transactions
//! that ask for `serializable` take the write lock up front (`BEGIN
//! IMMEDIATE`), because a deferred transaction that reads and then writes
//! fails with `SQLITE_BUSY` under contention whatever the busy timeout.
//! Read-only and read-uncommitted are connection pragmas, restored at the end.

use std::borrow::Cow;
use std::future::Future;

use sqlx::pool::PoolConnection;
use sqlx::{Sqlite, SqliteConnection};

use super::execute_raw;
use super::sealed::BackendOps;
use crate::options::{Isolation, TxOptions};

impl BackendOps for Sqlite {
    const SYSTEM: &'static str = "sqlite";

    fn begin_sql(options: &TxOptions) -> Cow<'static, str> {
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

    fn restore_sql(options: &TxOptions) -> Option<&'static str> {
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
        let restore = Sqlite::restore_sql(options);
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
