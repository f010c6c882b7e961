//! MySQL and MariaDB: `START TRANSACTION` has no isolation clause, so the
//! level is set by `SET TRANSACTION` sent in the same request, which costs no
//! extra round trip.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt::Write;
use std::future::Future;
use std::time::Duration;

use sqlx::error::DatabaseError;
use sqlx::mysql::MySqlDatabaseError;
use sqlx::pool::PoolConnection;
use sqlx::{MySql, MySqlConnection};

use super::sealed::BackendOps;
use super::{access_clause, execute_raw, isolation_sql};
use crate::options::Access;
use crate::retry::FailureKind;

impl BackendOps for MySql {
    const SYSTEM: &'static str = "mysql";

    fn begin_sql(options: &Access, server_timeout: Option<Duration>) -> Cow<'static, str> {
        let access = access_clause(options);
        if server_timeout.is_none() && options.isolation.is_none() {
            return if access.is_empty() {
                Cow::Borrowed("START TRANSACTION")
            } else {
                Cow::Owned(format!("START TRANSACTION{access}"))
            };
        }
        let mut sql = String::new();
        if let Some(timeout) = server_timeout {
            // Lock waits are bounded in whole seconds (at least 1); MariaDB
            // also bounds each statement (`/*M!` is read by MariaDB only).
            let lock_wait = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
            let _ = write!(
                sql,
                "SET SESSION innodb_lock_wait_timeout = {} /*M!100100 , max_statement_time = {:.3} */; ",
                lock_wait.max(1),
                timeout.as_secs_f64()
            );
        }
        if let Some(level) = isolation_sql(options) {
            let _ = write!(sql, "SET TRANSACTION ISOLATION LEVEL {level}; ");
        }
        let _ = write!(sql, "START TRANSACTION{access}");
        Cow::Owned(sql)
    }

    fn restore_sql(_options: &Access, server_timeout: bool) -> Option<&'static str> {
        server_timeout.then_some(
            "SET SESSION innodb_lock_wait_timeout = DEFAULT /*M!100100 , max_statement_time = DEFAULT */",
        )
    }

    fn classify(error: &(dyn DatabaseError + 'static)) -> Option<FailureKind> {
        let database = error.try_downcast_ref::<MySqlDatabaseError>()?;
        match database.number() {
            1213 => Some(FailureKind::Deadlock),
            1205 => Some(FailureKind::LockTimeout),
            1020 => Some(FailureKind::SnapshotConflict),
            // The connection was killed (MariaDB ER_CONNECTION_KILLED) or
            // went away: nothing of an unfinished transaction committed.
            1927 | 2006 | 2013 => Some(FailureKind::ConnectionLost),
            _ => None,
        }
    }

    fn as_database_error<'a>(
        error: &'a (dyn StdError + 'static),
    ) -> Option<&'a (dyn DatabaseError + 'static)> {
        error
            .downcast_ref::<MySqlDatabaseError>()
            .map(|database| database as &(dyn DatabaseError + 'static))
    }

    fn execute<'c>(
        conn: &'c mut MySqlConnection,
        sql: Cow<'static, str>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c {
        execute_raw::<MySql>(conn, sql)
    }

    fn abandon(conn: PoolConnection<MySql>, _options: &Access) {
        // A reply cut off mid-stream leaves the MySQL protocol out of step, and
        // returning such a connection to the pool can hang for ever. Closing
        // the socket is the only safe end; the server rolls back.
        drop(conn.detach());
    }
}
