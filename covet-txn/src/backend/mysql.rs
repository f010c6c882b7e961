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
use sqlx::{MySql, MySqlConnection};

use super::sealed::BackendOps;
use super::{InFlightCommit, Restore, access_clause, execute_raw, isolation_sql};
use crate::error::CommitOutcome;
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
            // The session's own values are kept in user variables first, so
            // that the end of the transaction puts back what the pool set,
            // not the server's defaults.
            let lock_wait = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
            let _ = write!(
                sql,
                "SET @covet_lock_wait = @@SESSION.innodb_lock_wait_timeout \
                 /*M!100100 , @covet_statement_time = @@SESSION.max_statement_time */; \
                 SET SESSION innodb_lock_wait_timeout = {} \
                 /*M!100100 , max_statement_time = {:.3} */; ",
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

    fn begin<'c>(
        conn: &'c mut MySqlConnection,
        options: &Access,
        server_timeout: Option<Duration>,
    ) -> impl Future<Output = (Restore, Result<(), sqlx::Error>)> + Send + 'c {
        let sql = Self::begin_sql(options, server_timeout);
        let restore = server_timeout.map(|_| RESTORE_TIMEOUTS);
        async move { (restore, Self::execute(conn, sql).await) }
    }

    fn commit(
        conn: &mut MySqlConnection,
        restore: Restore,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send + '_ {
        end(conn, restore, "COMMIT", COMMIT_AND_RESTORE)
    }

    fn rollback(
        conn: &mut MySqlConnection,
        restore: Restore,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send + '_ {
        end(conn, restore, "ROLLBACK", ROLLBACK_AND_RESTORE)
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

    async fn recover(
        conn: &mut MySqlConnection,
        restore: Restore,
        commit: Option<InFlightCommit>,
    ) -> Result<Option<CommitOutcome>, sqlx::Error> {
        // The answer to what was in flight is read first. Any error while
        // reading it may leave MySQL's reply stream out of step, so it
        // closes the connection; a tagged query at the end proves that each
        // answer was matched to its own request.
        sqlx::Connection::ping(&mut *conn).await?;
        Self::roll_back_cleanly(conn, restore).await?;
        let tag = crate::retry::unit_random().to_bits();
        let echoed: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT '{tag}'")))
            .fetch_one(&mut *conn)
            .await?;
        if echoed != tag.to_string() {
            return Err(sqlx::Error::Protocol(
                "a recovered connection answered out of step".to_owned(),
            ));
        }
        Ok(commit.map(|_| CommitOutcome::Committed))
    }
}

/// Puts back the lock-wait and statement timeouts the session had before a
/// transaction with a deadline began (a literal, to be joined to the end of
/// the transaction in one request).
macro_rules! restore_timeouts {
    () => {
        "SET SESSION innodb_lock_wait_timeout = @covet_lock_wait \
         /*M!100100 , max_statement_time = @covet_statement_time */"
    };
}

const RESTORE_TIMEOUTS: &str = restore_timeouts!();
const COMMIT_AND_RESTORE: &str = concat!("COMMIT; ", restore_timeouts!());
const ROLLBACK_AND_RESTORE: &str = concat!("ROLLBACK; ", restore_timeouts!());

/// Ends the transaction with `end`, and restores the session in the same
/// request when there is something to restore (`both` is the two together).
/// MySQL stops a multi-statement request at its first error, so an error in
/// the first result is the end's own; one after it, the restore's.
async fn end(
    conn: &mut MySqlConnection,
    restore: Restore,
    end: &'static str,
    both: &'static str,
) -> Result<bool, sqlx::Error> {
    use futures_util::TryStreamExt;
    if restore.is_none() {
        return execute_raw::<MySql>(conn, Cow::Borrowed(end))
            .await
            .map(|()| true);
    }
    let mut results = sqlx::raw_sql(both).execute_many(conn);
    results.try_next().await?;
    let rest = async {
        while results.try_next().await?.is_some() {}
        Ok::<(), sqlx::Error>(())
    };
    Ok(rest.await.is_ok())
}
