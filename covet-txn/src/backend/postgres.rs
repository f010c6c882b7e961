//! PostgreSQL: the isolation level and access mode go into the BEGIN itself,
//! so every transaction begins in one statement.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::future::Future;
use std::time::Duration;

use sqlx::error::DatabaseError;
use sqlx::postgres::PgDatabaseError;
use sqlx::{PgConnection, Postgres};

use super::sealed::BackendOps;
use super::{InFlightCommit, Restore, access_clause, execute_raw, isolation_sql};
use crate::error::CommitOutcome;
use crate::options::Access;
use crate::retry::FailureKind;

impl BackendOps for Postgres {
    const SYSTEM: &'static str = "postgresql";

    // PostgreSQL ends the transaction whatever COMMIT answers.
    const FAILED_COMMIT_ENDS_TRANSACTION: bool = true;

    fn begin_sql(options: &Access, server_timeout: Option<Duration>) -> Cow<'static, str> {
        let access = access_clause(options);
        let begin = match isolation_sql(options) {
            None if access.is_empty() => Cow::Borrowed("BEGIN"),
            None => Cow::Owned(format!("BEGIN{access}")),
            Some(level) => Cow::Owned(format!("BEGIN ISOLATION LEVEL {level}{access}")),
        };
        match server_timeout {
            // `SET LOCAL` ends with the transaction: nothing to restore.
            Some(timeout) => {
                let millis = timeout.as_millis().max(1);
                Cow::Owned(format!(
                    "{begin}; SET LOCAL statement_timeout = {millis}; SET LOCAL lock_timeout = {millis}"
                ))
            }
            None => begin,
        }
    }

    fn classify(error: &(dyn DatabaseError + 'static)) -> Option<FailureKind> {
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

    async fn commit_token(conn: &mut PgConnection) -> Result<Option<String>, sqlx::Error> {
        let id: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
            .fetch_one(conn)
            .await?;
        Ok(Some(id))
    }

    async fn resolve_commit(pool: &sqlx::Pool<Postgres>, token: &str) -> CommitOutcome {
        // The killed backend may still be finishing: ask for a while.
        for _ in 0..20 {
            let status = xact_status(pool, token).await;
            match status.as_ref().map(Option::as_deref) {
                Ok(Some("committed")) => return CommitOutcome::Committed,
                Ok(Some("aborted")) => return CommitOutcome::Aborted,
                Ok(Some(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
                Ok(None) | Err(_) => return CommitOutcome::Unknown,
            }
        }
        CommitOutcome::Unknown
    }

    fn as_database_error<'a>(
        error: &'a (dyn StdError + 'static),
    ) -> Option<&'a (dyn DatabaseError + 'static)> {
        error
            .downcast_ref::<PgDatabaseError>()
            .map(|database| database as &(dyn DatabaseError + 'static))
    }

    fn execute<'c>(
        conn: &'c mut PgConnection,
        sql: Cow<'static, str>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c {
        execute_raw::<Postgres>(conn, sql)
    }

    async fn recover(
        conn: &mut PgConnection,
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
        let outcome = match commit.as_ref().and_then(|commit| commit.token.as_deref()) {
            Some(token) => match xact_status(&mut *conn, token).await?.as_deref() {
                Some("committed") => CommitOutcome::Committed,
                Some("aborted") => CommitOutcome::Aborted,
                _ => CommitOutcome::Unknown,
            },
            None => answered,
        };
        Self::roll_back_cleanly(conn, restore).await?;
        Ok(commit.map(|_| outcome))
    }
}

async fn xact_status(
    executor: impl sqlx::PgExecutor<'_>,
    token: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_xact_status($1::xid8)")
        .bind(token)
        .fetch_one(executor)
        .await
}
