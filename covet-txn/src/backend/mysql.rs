//! MySQL and MariaDB: `START TRANSACTION` has no isolation clause, so the
//! level is set by `SET TRANSACTION` in the same request; a deadline sets
//! session timeouts in that request too, after keeping the session's own
//! values, which the COMMIT or ROLLBACK request puts back.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt::Write;
use std::sync::Arc;

use futures_util::TryStreamExt;
use sqlx::error::DatabaseError;
use sqlx::mysql::MySqlDatabaseError;
use sqlx::{MySql, MySqlConnection, Row};

use super::{
    Driver, InFlightCommit, Restore, TextRows, access_clause, execute_raw, roll_back_cleanly,
    text_rows,
};
use crate::dialect::{
    Begin, BeginRequest, BranchId, Dialect, PreparedTransactions, SavepointAction, SavepointName,
};
use crate::failure::{CommitOutcome, FailureKind};
use crate::options::Isolation;

/// MySQL's and MariaDB's rules: 1213 (deadlock), 1205 (lock wait timeout)
/// and 1020 (a row changed under MariaDB's snapshot isolation) are retried,
/// as are the codes of a killed or lost connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct MySqlDialect;

/// Puts back the lock-wait and statement timeouts the session had before a
/// transaction with a deadline began.
const RESTORE_TIMEOUTS: &str = "SET SESSION innodb_lock_wait_timeout = @covet_lock_wait \
     /*M!100100 , max_statement_time = @covet_statement_time */";

impl Dialect<MySql> for MySqlDialect {
    fn system(&self) -> &'static str {
        "mysql"
    }

    fn default_isolation(&self) -> Isolation {
        Isolation::RepeatableRead
    }

    fn begin(&self, request: &BeginRequest, _probed: &[bool]) -> Begin {
        let access = access_clause(request.access.read_only);
        let (isolation, timeout) = (request.access.isolation, request.server_timeout);
        let Some(timeout) = timeout else {
            return Begin::plain(start_statement(isolation, request.access.read_only));
        };
        // Lock waits are bounded in whole seconds (at least 1); MariaDB also
        // bounds each statement (`/*M!` is read by MariaDB only). The
        // session's own values are kept in user variables first, so that the
        // end of the transaction puts back what the pool set, not the
        // server's defaults.
        let lock_wait = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
        let mut sql = format!(
            "SET @covet_lock_wait = @@SESSION.innodb_lock_wait_timeout \
             /*M!100100 , @covet_statement_time = @@SESSION.max_statement_time */; \
             SET SESSION innodb_lock_wait_timeout = {} \
             /*M!100100 , max_statement_time = {:.3} */; ",
            lock_wait.max(1),
            timeout.as_secs_f64()
        );
        if let Some(level) = isolation {
            let _ = write!(sql, "SET TRANSACTION ISOLATION LEVEL {}; ", level.sql());
        }
        let _ = write!(sql, "START TRANSACTION{access}");
        Begin::restoring(sql, RESTORE_TIMEOUTS)
    }

    fn savepoint(&self, action: SavepointAction, name: SavepointName<'_>) -> Cow<'static, str> {
        crate::dialect::standard_savepoint(action, name)
    }

    fn classify(&self, error: &(dyn DatabaseError + 'static)) -> Option<FailureKind> {
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

    fn prepared_transactions(&self) -> Option<&dyn PreparedTransactions> {
        Some(self)
    }
}

/// A branch's XA id: the global id as `gtrid`, the participant as `bqual`.
fn xid(branch: &BranchId) -> String {
    format!("'{}','{}'", branch.global(), branch.participant())
}

impl PreparedTransactions for MySqlDialect {
    // The begin request with `XA START` in place of `START TRANSACTION`: an
    // XA branch has no access clause, and the settings before it stay.
    fn begin(&self, request: &BeginRequest, probed: &[bool], branch: &BranchId) -> Begin {
        let plain = Dialect::begin(self, request, probed);
        let settings = plain
            .statement
            .rfind("START TRANSACTION")
            .map_or("", |start| &plain.statement[..start]);
        let statement = format!("{settings}XA START {}", xid(branch));
        match plain.restore {
            Some(restore) => Begin::restoring(statement, restore),
            None => Begin::plain(statement),
        }
    }

    fn prepare(&self, branch: &BranchId) -> String {
        let xid = xid(branch);
        format!("XA END {xid}; XA PREPARE {xid}")
    }

    fn rollback_unprepared(&self, branch: &BranchId) -> Option<String> {
        let xid = xid(branch);
        Some(format!("XA END {xid}; XA ROLLBACK {xid}"))
    }

    fn finish(&self, branch: &BranchId, commit: bool) -> String {
        let verb = if commit { "COMMIT" } else { "ROLLBACK" };
        format!("XA {verb} {}", xid(branch))
    }

    // ER_XAER_NOTA: unknown XID.
    fn is_out_of_reach(&self, error: &(dyn DatabaseError + 'static)) -> bool {
        error
            .try_downcast_ref::<MySqlDatabaseError>()
            .is_some_and(|database| database.number() == 1397)
    }

    fn list(&self) -> &'static str {
        "XA RECOVER"
    }

    fn create_log(&self, table: &str) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {table} (global_id VARCHAR(64) PRIMARY KEY, \
             coordinator VARCHAR(32) NOT NULL, decision VARCHAR(8) NOT NULL, \
             decided_at BIGINT NOT NULL) ENGINE = InnoDB"
        )
    }

    fn record(&self, table: &str) -> String {
        format!(
            "INSERT INTO {table} (global_id, coordinator, decision, decided_at) \
             VALUES (?, ?, ?, ?)"
        )
    }

    fn read(&self, table: &str) -> String {
        format!("SELECT decision FROM {table} WHERE global_id = ?")
    }

    fn decisions(&self, table: &str) -> String {
        format!("SELECT global_id, decision FROM {table} WHERE coordinator = ?")
    }

    fn forget(&self, table: &str) -> String {
        format!("DELETE FROM {table} WHERE global_id = ?")
    }
}

/// `START TRANSACTION` with the isolation level and access mode, in one
/// request, without building a string for any combination.
fn start_statement(isolation: Option<Isolation>, read_only: Option<bool>) -> &'static str {
    macro_rules! start {
        ($($level:literal)?) => {
            match access_clause(read_only) {
                " READ ONLY" => concat!($("SET TRANSACTION ISOLATION LEVEL ", $level, "; ",)? "START TRANSACTION READ ONLY"),
                " READ WRITE" => concat!($("SET TRANSACTION ISOLATION LEVEL ", $level, "; ",)? "START TRANSACTION READ WRITE"),
                _ => concat!($("SET TRANSACTION ISOLATION LEVEL ", $level, "; ",)? "START TRANSACTION"),
            }
        };
    }
    match isolation {
        None => start!(),
        Some(Isolation::ReadUncommitted) => start!("READ UNCOMMITTED"),
        Some(Isolation::ReadCommitted) => start!("READ COMMITTED"),
        Some(Isolation::RepeatableRead) => start!("REPEATABLE READ"),
        Some(Isolation::Serializable) => start!("SERIALIZABLE"),
    }
}

impl Driver for MySql {
    fn default_dialect() -> Arc<dyn Dialect<MySql>> {
        Arc::new(MySqlDialect)
    }

    fn execute<'c>(
        conn: &'c mut MySqlConnection,
        sql: Cow<'static, str>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c {
        execute_raw::<MySql>(conn, sql)
    }

    async fn probe(
        conn: &mut MySqlConnection,
        sql: &'static str,
    ) -> Result<Vec<bool>, sqlx::Error> {
        let row = sqlx::query(sql).fetch_one(conn).await?;
        (0..row.len()).map(|column| row.try_get(column)).collect()
    }

    // The restore joins the end in one request. MySQL stops a
    // multi-statement request at its first error, so an error in the first
    // result is the end's own; one after it, the restore's.
    async fn end(
        conn: &mut MySqlConnection,
        _commit: bool,
        statement: &'static str,
        restore: Restore,
    ) -> Result<bool, sqlx::Error> {
        let Some(restore) = restore else {
            return execute_raw::<MySql>(conn, Cow::Borrowed(statement))
                .await
                .map(|()| true);
        };
        let both = format!("{statement}; {restore}");
        let mut results = sqlx::raw_sql(sqlx::AssertSqlSafe(both)).execute_many(conn);
        results.try_next().await?;
        let rest = async {
            while results.try_next().await?.is_some() {}
            Ok::<(), sqlx::Error>(())
        };
        Ok(rest.await.is_ok())
    }

    async fn fetch_text(
        conn: &mut MySqlConnection,
        sql: &'static str,
        parameter: Option<String>,
    ) -> Result<Option<String>, sqlx::Error> {
        let mut query = sqlx::query_scalar(sql);
        if let Some(parameter) = parameter {
            query = query.bind(parameter);
        }
        query.fetch_one(conn).await
    }

    async fn recover(
        conn: &mut MySqlConnection,
        dialect: &dyn Dialect<MySql>,
        restore: Restore,
        commit: Option<InFlightCommit>,
    ) -> Result<Option<CommitOutcome>, sqlx::Error> {
        // The answer to what was in flight is read first. Any error while
        // reading it may leave MySQL's reply stream out of step, so it
        // closes the connection; a tagged query at the end proves that each
        // answer was matched to its own request.
        sqlx::Connection::ping(&mut *conn).await?;
        roll_back_cleanly(conn, dialect, restore).await?;
        let tag = fastrand::u64(..).to_string();
        let echoed = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SELECT '{tag}'")))
            .fetch_one(&mut *conn)
            .await?;
        if echoed.try_get::<String, _>(0)? != tag {
            return Err(sqlx::Error::Protocol(
                "a recovered connection answered out of step".to_owned(),
            ));
        }
        Ok(commit.map(|_| CommitOutcome::Committed))
    }

    fn text_rows<'c>(
        conn: &'c mut MySqlConnection,
        sql: String,
        parameters: Vec<String>,
    ) -> impl Future<Output = Result<TextRows, sqlx::Error>> + Send + 'c {
        text_rows::<MySql>(conn, sql, parameters)
    }

    // XA RECOVER answers `gtrid` and `bqual` joined in one binary column,
    // with the length of `gtrid`; it runs over the text protocol.
    async fn list_branches(
        conn: &mut MySqlConnection,
        sql: &'static str,
    ) -> Result<Vec<BranchId>, sqlx::Error> {
        let rows = sqlx::raw_sql(sql).fetch_all(conn).await?;
        let mut branches = Vec::with_capacity(rows.len());
        for row in rows {
            let global_length: i64 = row.try_get_unchecked(1)?;
            let data: Vec<u8> = row.try_get_unchecked(3)?;
            let split = usize::try_from(global_length).unwrap_or(usize::MAX);
            if let (Some(global), Some(participant)) = (data.get(..split), data.get(split..))
                && let (Ok(global), Ok(participant)) = (
                    std::str::from_utf8(global),
                    std::str::from_utf8(participant),
                )
            {
                branches.push(BranchId::new(global.to_owned(), participant.to_owned()));
            }
        }
        Ok(branches)
    }

    fn as_database_error<'a>(
        error: &'a (dyn StdError + 'static),
    ) -> Option<&'a (dyn DatabaseError + 'static)> {
        error
            .downcast_ref::<MySqlDatabaseError>()
            .map(|database| database as &(dyn DatabaseError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_isolation_level_rides_in_the_start_request() {
        assert_eq!(start_statement(None, None), "START TRANSACTION");
        assert_eq!(
            start_statement(None, Some(true)),
            "START TRANSACTION READ ONLY"
        );
        assert_eq!(
            start_statement(Some(Isolation::Serializable), None),
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; START TRANSACTION"
        );
    }
}
