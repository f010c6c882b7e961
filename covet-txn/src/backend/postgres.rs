//! PostgreSQL: the isolation level, the access mode and the server-side
//! timeouts all go into the BEGIN request itself (`SET LOCAL` ends with the
//! transaction, so nothing is left to restore), and a COMMIT that fails
//! always ends the transaction.
//!
//! BEGIN, COMMIT, ROLLBACK and nested scopes' savepoints go through sqlx's
//! own transaction manager, as hand-written sqlx does: its BEGIN is queued
//! without a result stream (several allocations and a few microseconds
//! less than a query), and sqlx's count of open levels stays right, so that
//! a user's own `conn.begin()` inside a transaction becomes a savepoint.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::sync::Arc;

use sqlx::error::DatabaseError;
use sqlx::postgres::{PgDatabaseError, PgTransactionManager};
use sqlx::{PgConnection, Postgres, Row, SqlSafeStr};
use sqlx_core::transaction::TransactionManager;

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

/// PostgreSQL's rules: SQLSTATE 40001 and 40P01 are retried, as are the
/// codes of a connection the server ended.
#[derive(Debug, Clone, Copy, Default)]
pub struct PostgresDialect;

impl Dialect<Postgres> for PostgresDialect {
    fn system(&self) -> &'static str {
        "postgresql"
    }

    fn default_isolation(&self) -> Isolation {
        Isolation::ReadCommitted
    }

    fn begin(&self, request: &BeginRequest, _probed: &[bool]) -> Begin {
        let begin = begin_statement(request.access.isolation, request.access.read_only);
        match request.server_timeout {
            Some(timeout) => {
                let millis = timeout.as_millis().max(1);
                Begin::plain(format!(
                    "{begin}; SET LOCAL statement_timeout = {millis}; SET LOCAL lock_timeout = {millis}"
                ))
            }
            None => Begin::plain(begin),
        }
    }

    fn savepoint(&self, action: SavepointAction, name: SavepointName<'_>) -> Cow<'static, str> {
        crate::dialect::standard_savepoint(action, name)
    }

    fn classify(&self, error: &(dyn DatabaseError + 'static)) -> Option<FailureKind> {
        let database = error.try_downcast_ref::<PgDatabaseError>()?;
        match database.code() {
            "40001" => Some(FailureKind::SerializationFailure),
            "40P01" => Some(FailureKind::Deadlock),
            // The server ended the connection (an administrator, a restart):
            // nothing of an unfinished transaction committed.
            "57P01" | "57P02" | "57P03" => Some(FailureKind::ConnectionLost),
            code if code.starts_with("08") => Some(FailureKind::ConnectionLost),
            _ => None,
        }
    }

    // PostgreSQL ends the transaction whatever COMMIT answers.
    fn failed_commit_ends_transaction(&self) -> bool {
        true
    }

    fn commit_token(&self) -> Option<&'static str> {
        Some("SELECT pg_current_xact_id()::text")
    }

    fn commit_status(&self) -> Option<&'static str> {
        Some("SELECT pg_xact_status($1::xid8)")
    }

    fn prepared_transactions(&self) -> Option<&dyn PreparedTransactions> {
        Some(self)
    }

    fn replication(&self) -> Option<&dyn Replication> {
        Some(self)
    }
}

// Positions are WAL positions in bytes (`lsn - '0/0'`). The insert position
// is at or past every commit record already written, including those of
// `synchronous_commit = off`, which the flushed position may not reach yet.
impl Replication for PostgresDialect {
    fn write_position(&self) -> &'static str {
        "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8::text"
    }

    fn replay_position(&self) -> &'static str {
        "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::int8::text"
    }

    // As libpq's target_session_attrs=read-write: neither a standby nor a
    // server whose transactions are read-only by default (a primary
    // demoted in place by default_transaction_read_only).
    fn writable(&self) -> &'static str {
        "SELECT (NOT pg_is_in_recovery() \
         AND current_setting('default_transaction_read_only') = 'off')::text"
    }

    // 25006 read_only_sql_transaction: a standby, or a server made
    // read-only by default_transaction_read_only.
    fn refuses_writes(&self, error: &(dyn DatabaseError + 'static)) -> bool {
        error
            .try_downcast_ref::<PgDatabaseError>()
            .is_some_and(|database| database.code() == "25006")
    }
}

/// A branch's PostgreSQL transaction id: `global/participant`, unique on the
/// server even when two databases of one server take part.
fn prepared_gid(branch: &BranchId) -> String {
    format!("{}/{}", branch.global(), branch.participant())
}

impl PreparedTransactions for PostgresDialect {
    fn begin(&self, request: &BeginRequest, probed: &[bool], _branch: &BranchId) -> Begin {
        Dialect::begin(self, request, probed)
    }

    fn prepare(&self, branch: &BranchId) -> String {
        format!("PREPARE TRANSACTION '{}'", prepared_gid(branch))
    }

    fn finish(&self, branch: &BranchId, commit: bool) -> String {
        let verb = if commit { "COMMIT" } else { "ROLLBACK" };
        format!("{verb} PREPARED '{}'", prepared_gid(branch))
    }

    // 42704: no such prepared transaction; 55000: another session is
    // finishing it right now.
    fn is_out_of_reach(&self, error: &(dyn DatabaseError + 'static)) -> bool {
        matches!(error.code().as_deref(), Some("42704" | "55000"))
    }

    fn list(&self) -> &'static str {
        "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"
    }

    fn readiness(&self) -> Option<&'static str> {
        Some(
            "SELECT CASE WHEN current_setting('max_prepared_transactions')::int > 0 THEN NULL \
             ELSE 'max_prepared_transactions is 0 on this PostgreSQL server, so it cannot hold \
             a prepared transaction: set it above the number of two-phase calls that run at \
             once (ALTER SYSTEM SET max_prepared_transactions = 64) and restart the server' END",
        )
    }

    fn create_log(&self, table: &str) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {table} (global_id VARCHAR(64) PRIMARY KEY, \
             coordinator VARCHAR(32) NOT NULL, decision VARCHAR(8) NOT NULL, \
             decided_at BIGINT NOT NULL)"
        )
    }

    fn record(&self, table: &str) -> String {
        format!(
            "INSERT INTO {table} (global_id, coordinator, decision, decided_at) \
             VALUES ($1, $2, $3, CAST($4 AS BIGINT))"
        )
    }

    fn read(&self, table: &str) -> String {
        format!("SELECT decision FROM {table} WHERE global_id = $1")
    }

    fn decisions(&self, table: &str) -> String {
        format!("SELECT global_id, decision FROM {table} WHERE coordinator = $1")
    }

    fn forget(&self, table: &str) -> String {
        format!("DELETE FROM {table} WHERE global_id = $1")
    }
}

/// `BEGIN` with the isolation level and access mode, without building a
/// string for any combination.
fn begin_statement(isolation: Option<Isolation>, read_only: Option<bool>) -> &'static str {
    macro_rules! begin {
        ($($level:literal)?) => {
            match access_clause(read_only) {
                " READ ONLY" => concat!("BEGIN", $(" ISOLATION LEVEL ", $level,)? " READ ONLY"),
                " READ WRITE" => concat!("BEGIN", $(" ISOLATION LEVEL ", $level,)? " READ WRITE"),
                _ => concat!("BEGIN", $(" ISOLATION LEVEL ", $level)?),
            }
        };
    }
    match isolation {
        None => begin!(),
        Some(Isolation::ReadUncommitted) => begin!("READ UNCOMMITTED"),
        Some(Isolation::ReadCommitted) => begin!("READ COMMITTED"),
        Some(Isolation::RepeatableRead) => begin!("REPEATABLE READ"),
        Some(Isolation::Serializable) => begin!("SERIALIZABLE"),
    }
}

impl Driver for Postgres {
    fn default_dialect() -> Arc<dyn Dialect<Postgres>> {
        Arc::new(PostgresDialect)
    }

    fn execute<'c>(
        conn: &'c mut PgConnection,
        sql: Cow<'static, str>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c {
        execute_raw::<Postgres>(conn, sql)
    }

    fn begin<'c>(
        conn: &'c mut PgConnection,
        statement: Cow<'static, str>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c {
        let statement = match statement {
            Cow::Borrowed(text) => text.into_sql_str(),
            Cow::Owned(text) => sqlx::AssertSqlSafe(text).into_sql_str(),
        };
        PgTransactionManager::begin(conn, Some(statement))
    }

    // A scope savepoint still open here (a nested scope cut off mid-way)
    // would turn sqlx's COMMIT into a RELEASE: refused, as on SQLite.
    async fn end(
        conn: &mut PgConnection,
        commit: bool,
        statement: &'static str,
        restore: Restore,
    ) -> Result<bool, sqlx::Error> {
        let depth = PgTransactionManager::get_transaction_depth(conn);
        if depth == 0 {
            // A transaction sqlx does not count: its BEGIN was cut off
            // before the answer came back.
            execute_raw::<Postgres>(conn, Cow::Borrowed(statement)).await?;
        } else if commit {
            if depth > 1 {
                return Err(sqlx::Error::InvalidArgument(
                    "a savepoint of this PostgreSQL transaction is still open, so COMMIT would \
                     only release it; the transaction was rolled back instead"
                        .to_owned(),
                ));
            }
            if let Err(error) = PgTransactionManager::commit(conn).await {
                // PostgreSQL ended the transaction whatever COMMIT answered;
                // sqlx still counts it open until told (a queued ROLLBACK,
                // which the server answers with a warning).
                PgTransactionManager::start_rollback(conn);
                return Err(error);
            }
        } else {
            for _ in 0..depth {
                PgTransactionManager::rollback(conn).await?;
            }
        }
        Ok(Self::restore(conn, restore).await)
    }

    // sqlx counts the transaction (BEGIN went through its manager), so its
    // own queued ROLLBACK ends it: the pool's check at release sends it
    // with its Sync in one write, reads both answers, and closes the
    // connection if either is an error. Not with a savepoint still open
    // (that ROLLBACK would only undo the savepoint) or a setting to put back.
    fn queue_rollback(conn: &mut PgConnection, restore: Restore) -> bool {
        let queued = restore.is_none() && PgTransactionManager::get_transaction_depth(conn) == 1;
        if queued {
            PgTransactionManager::start_rollback(conn);
        }
        queued
    }

    // Nested scopes use sqlx's numbered savepoints: SAVEPOINT is queued as
    // BEGIN is. A rolled-back savepoint stays until the transaction ends, as
    // with sqlx's own nested transactions.
    #[allow(clippy::manual_async_fn)]
    fn scope_savepoint<'c>(
        conn: &'c mut PgConnection,
        _dialect: &dyn Dialect<Postgres>,
        action: SavepointAction,
        _depth: u32,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c {
        async move {
            match action {
                SavepointAction::Create => PgTransactionManager::begin(conn, None).await,
                SavepointAction::Release => PgTransactionManager::commit(conn).await,
                SavepointAction::RollbackTo | SavepointAction::RollbackAndRelease => {
                    PgTransactionManager::rollback(conn).await
                }
            }
        }
    }

    async fn probe(conn: &mut PgConnection, sql: &'static str) -> Result<Vec<bool>, sqlx::Error> {
        let row = sqlx::query(sql).fetch_one(conn).await?;
        (0..row.len()).map(|column| row.try_get(column)).collect()
    }

    async fn fetch_text(
        conn: &mut PgConnection,
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
        conn: &mut PgConnection,
        dialect: &dyn Dialect<Postgres>,
        restore: Restore,
        commit: Option<InFlightCommit>,
    ) -> Result<Option<CommitOutcome>, sqlx::Error> {
        // The server applies a COMMIT it has received whether or not the
        // client is still listening: its answer is read here, before the
        // connection goes back to the pool, so that the next borrower sees
        // the committed rows.
        let answered = match sqlx::Connection::ping(&mut *conn).await {
            Ok(()) => CommitOutcome::Committed,
            Err(sqlx::Error::Database(_)) => {
                // The error's own ReadyForQuery is still to be read.
                sqlx::Connection::ping(&mut *conn).await?;
                CommitOutcome::Aborted
            }
            Err(other) => return Err(other),
        };
        // A COMMIT answered without an error may still have been a quiet
        // ROLLBACK of a transaction that an error had aborted; the id taken
        // before COMMIT tells.
        let token = commit.as_ref().and_then(|commit| commit.token.clone());
        let outcome = match (token, dialect.commit_status()) {
            (Some(token), Some(status)) => {
                match Self::fetch_text(conn, status, Some(token))
                    .await?
                    .as_deref()
                {
                    Some("committed") => CommitOutcome::Committed,
                    Some("aborted") => CommitOutcome::Aborted,
                    _ => CommitOutcome::Unknown,
                }
            }
            _ => answered,
        };
        roll_back_cleanly(conn, dialect, restore).await?;
        Ok(commit.map(|_| outcome))
    }

    // PREPARE TRANSACTION ends the transaction sqlx counts as open: a queued
    // ROLLBACK (answered with a warning) tells sqlx, without a round trip.
    async fn prepare_branch(conn: &mut PgConnection, sql: String) -> Result<(), sqlx::Error> {
        execute_raw::<Postgres>(conn, Cow::Owned(sql)).await?;
        PgTransactionManager::start_rollback(conn);
        Ok(())
    }

    fn text_rows<'c>(
        conn: &'c mut PgConnection,
        sql: String,
        parameters: Vec<String>,
    ) -> impl Future<Output = Result<TextRows, sqlx::Error>> + Send + 'c {
        text_rows::<Postgres>(conn, sql, parameters)
    }

    async fn list_branches(
        conn: &mut PgConnection,
        sql: &'static str,
    ) -> Result<Vec<BranchId>, sqlx::Error> {
        let gids: Vec<String> = sqlx::query_scalar(sql).fetch_all(conn).await?;
        Ok(gids
            .into_iter()
            .filter_map(|gid| {
                let (global, participant) = gid.split_once('/')?;
                Some(BranchId::new(global.to_owned(), participant.to_owned()))
            })
            .collect())
    }

    fn as_database_error<'a>(
        error: &'a (dyn StdError + 'static),
    ) -> Option<&'a (dyn DatabaseError + 'static)> {
        error
            .downcast_ref::<PgDatabaseError>()
            .map(|database| database as &(dyn DatabaseError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_carries_isolation_and_access_in_one_statement() {
        assert_eq!(begin_statement(None, None), "BEGIN");
        assert_eq!(begin_statement(None, Some(true)), "BEGIN READ ONLY");
        assert_eq!(
            begin_statement(Some(Isolation::Serializable), Some(false)),
            "BEGIN ISOLATION LEVEL SERIALIZABLE READ WRITE"
        );
        assert_eq!(
            begin_statement(Some(Isolation::RepeatableRead), None),
            "BEGIN ISOLATION LEVEL REPEATABLE READ"
        );
    }
}
