//! MySQL and MariaDB: `START TRANSACTION` has no isolation clause, so the
//! level is set by `SET TRANSACTION` in the same request; a deadline sets
//! session timeouts in that request too, after keeping the session's own
//! values, which the COMMIT or ROLLBACK request puts back.
//!
//! Replicas and failover follow MariaDB's GTIDs (one replication domain);
//! MySQL's GTID sets are refused with an error that says so.

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
    Begin, BeginRequest, BranchId, Dialect, PreparedTransactions, Replication, SavepointAction,
    SavepointName,
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

    // At SERIALIZABLE InnoDB takes every plain SELECT of a transaction as a
    // locking read (`FOR SHARE`), which waits for the row locks a committing
    // transaction holds until its commit is done; at REPEATABLE READ and
    // below a plain SELECT reads a snapshot without waiting.
    fn reads_wait_for_commit(&self, isolation: Isolation) -> bool {
        isolation == Isolation::Serializable
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

    fn replication(&self) -> Option<&dyn Replication> {
        Some(self)
    }
}

/// What the position queries answer on MySQL, which skips the `/*M!`
/// comments that only MariaDB reads: MySQL's GTID sets (`uuid:1-5,...`)
/// have no one number that grows, so its positions are refused.
const MYSQL: &str = "mysql";

// Positions are MariaDB GTID lists (`domain-server-sequence`, one per
// domain), reduced in `parse_position` to the one domain's sequence number,
// which grows across a failover too (the new primary continues it).
impl Replication for MySqlDialect {
    // The binary log's last GTIDs: a COMMIT is in it before it returns.
    fn write_position(&self) -> &'static str {
        "SELECT /*M! @@gtid_binlog_pos, */ 'mysql'"
    }

    // What the SQL thread has applied; NULL while no SQL thread runs (on a
    // server that is not a replica, or one whose replication was stopped),
    // since its position would not move while the primary's does.
    fn replay_position(&self) -> &'static str {
        "SELECT /*M! IF((SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS \
         WHERE VARIABLE_NAME = 'SLAVES_RUNNING') > 0, @@gtid_slave_pos, NULL), */ 'mysql'"
    }

    // A replica must run with read_only = ON; users with READ_ONLY ADMIN
    // (SUPER before MariaDB 10.11) write through it regardless.
    fn writable(&self) -> &'static str {
        "SELECT IF(@@read_only = 0 AND @@innodb_read_only = 0, 'true', 'false')"
    }

    fn parse_position(&self, text: &str) -> Result<u64, String> {
        gtid_sequence(text)
    }

    // 1290 ER_OPTION_PREVENTS_STATEMENT names the option: only read_only's
    // counts (secure_file_priv's does not). 1792
    // ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION: transactions made read-only
    // by the server's default (transaction_read_only).
    fn refuses_writes(&self, error: &(dyn DatabaseError + 'static)) -> bool {
        error
            .try_downcast_ref::<MySqlDatabaseError>()
            .is_some_and(|database| match database.number() {
                1290 => database.message().contains("read-only"),
                1792 => true,
                _ => false,
            })
    }
}

/// The sequence number of the one replication domain in a MariaDB GTID
/// list; 0 for an empty one (nothing written or replayed yet). Several
/// domains are refused: their sequences grow independently, and no one
/// number says whether a replica has replayed past a write in each.
fn gtid_sequence(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if text == MYSQL {
        return Err(
            "MySQL's GTID sets cannot be followed: replicas and failover support \
                    MariaDB's GTIDs only"
                .to_owned(),
        );
    }
    let mut gtids = text
        .split(',')
        .map(str::trim)
        .filter(|gtid| !gtid.is_empty());
    let Some(gtid) = gtids.next() else {
        return Ok(0);
    };
    if gtids.next().is_some() {
        return Err(format!(
            "the GTID position `{text}` has several replication domains; covet-txn follows \
             one: give every server the same gtid_domain_id, and drop old domains with \
             FLUSH BINARY LOGS DELETE_DOMAIN_ID"
        ));
    }
    let mut parts = gtid.splitn(3, '-');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(domain), Some(server), Some(sequence))
            if domain.parse::<u32>().is_ok() && server.parse::<u32>().is_ok() =>
        {
            sequence
                .parse()
                .map_err(|_| format!("`{text}` is not a MariaDB GTID position"))
        }
        _ => Err(format!("`{text}` is not a MariaDB GTID position")),
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

    #[test]
    fn a_gtid_position_is_its_one_domains_sequence_number() {
        assert_eq!(gtid_sequence(""), Ok(0));
        assert_eq!(gtid_sequence("0-1-5"), Ok(5));
        assert_eq!(gtid_sequence(" 3-17-18446744073709551615 "), Ok(u64::MAX));
        let several = gtid_sequence("0-1-5,1-2-9").expect_err("two domains");
        assert!(several.contains("several replication domains"), "{several}");
        let mysql = gtid_sequence("mysql").expect_err("MySQL");
        assert!(mysql.contains("MySQL's GTID sets"), "{mysql}");
        assert!(gtid_sequence("0-1").is_err());
        assert!(gtid_sequence("3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5").is_err());
    }
}
