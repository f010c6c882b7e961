//! The ROLLBACK after a failure that has already ended the transaction on
//! the server (a serialization failure, a deadlock) is not waited for: on
//! PostgreSQL it is queued for the pool's check, on MariaDB a background
//! task sends it before the connection goes back. Whatever the ROLLBACK
//! answers, the next borrower of the connection finds no transaction open,
//! and the on_rollback hooks run once.
//!
//! The failures are raised by the server itself (`RAISE` with SQLSTATE
//! 40001 on PostgreSQL, which aborts the transaction as a real one does;
//! `SIGNAL` of 1213 on MariaDB, which leaves the transaction open, so the
//! tests see that the ROLLBACK really runs before the connection is used
//! again). Pools of one connection make the retry and the next call
//! borrow the very connection the ROLLBACK was left on.

use std::sync::atomic::{AtomicU32, Ordering};

use covet_txn::{Backend, TxManager, transactional};
use covet_txn_tests::{
    AppError, RollbacksSeen, kill_mysql_session, kill_postgres_backend, rollback_watcher,
    rollbacks_seen,
};
use sqlx::{MySql, Postgres};

const PG_SERIALIZATION_FAILURE: &str = "DO $$ BEGIN RAISE EXCEPTION 'rollback_unawaited' USING ERRCODE = 'serialization_failure'; END $$";

const MARIADB_DEADLOCK: &str =
    "SIGNAL SQLSTATE '40001' SET MYSQL_ERRNO = 1213, MESSAGE_TEXT = 'rollback_unawaited'";

/// After a call that failed once and then committed: one rollback, whose
/// hooks saw no failure, one retry, no failed rollback.
fn one_clean_rollback<DB: Backend>(manager: &TxManager<DB>, seen: &RollbacksSeen) {
    assert_eq!(
        rollbacks_seen(seen),
        [None],
        "one rollback, which did not fail"
    );
    let total = manager.metrics().total;
    assert_eq!(
        (total.retries, total.rollback_failures),
        (1, 0),
        "{total:?}"
    );
}

/// The SQLSTATE of the database error a call returned.
fn sqlstate<T>(result: &Result<T, AppError>) -> Option<String> {
    match result {
        Err(AppError::Db(sqlx::Error::Database(database))) => {
            database.code().map(|code| code.into_owned())
        }
        _ => None,
    }
}

mod postgres {
    use super::*;

    /// Inserts `attempt`, and on the first attempt fails with a
    /// serialization failure; returns the attempt and its backend's pid.
    #[transactional(manager = manager, retry = 1, backoff = "1ms")]
    async fn insert_and_fail_once(
        manager: &TxManager<Postgres>,
        attempts: &AtomicU32,
    ) -> Result<(u32, i32), AppError> {
        let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
        sqlx::query("INSERT INTO pipeline_unawaited_pg (id) VALUES ($1)")
            .bind(i64::from(attempt))
            .execute(&mut *manager.conn()?)
            .await?;
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *manager.conn()?)
            .await?;
        if attempt == 1 {
            sqlx::raw_sql(PG_SERIALIZATION_FAILURE)
                .execute(&mut *manager.conn()?)
                .await?;
        }
        Ok((attempt, pid))
    }

    /// Fails with a serialization failure, and its connection dies before
    /// the queued ROLLBACK goes out.
    #[transactional(manager = manager)]
    async fn fail_and_lose_the_connection(
        manager: &TxManager<Postgres>,
        admin: &sqlx::PgPool,
    ) -> Result<(), AppError> {
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *manager.conn()?)
            .await?;
        let failed = sqlx::raw_sql(PG_SERIALIZATION_FAILURE)
            .execute(&mut *manager.conn()?)
            .await
            .expect_err("the server raises the failure");
        kill_postgres_backend(admin, pid).await?;
        Err(failed.into())
    }

    /// Whether the pool's connection is outside any transaction: the
    /// statement that reads it is the first of its transaction.
    async fn idle(pool: &sqlx::PgPool) -> bool {
        sqlx::raw_sql(
            "SELECT (xact_start = query_start)::text FROM pg_stat_activity \
             WHERE pid = pg_backend_pid()",
        )
        .fetch_one(pool)
        .await
        .map(|row| sqlx::Row::get::<String, _>(&row, 0) == "true")
        .expect("reads its own activity")
    }

    #[tokio::test]
    async fn the_retry_runs_on_the_connection_the_queued_rollback_cleaned() {
        let (Some(admin), Some(pool)) = (
            covet_txn_tests::postgres(1).await,
            covet_txn_tests::postgres(1).await,
        ) else {
            return;
        };
        sqlx::raw_sql(
            "DROP TABLE IF EXISTS pipeline_unawaited_pg; \
             CREATE TABLE pipeline_unawaited_pg (id BIGINT PRIMARY KEY)",
        )
        .execute(&admin)
        .await
        .expect("setup");
        let (manager, seen_by_hooks) = rollback_watcher(pool.clone());
        let attempts = AtomicU32::new(0);
        let first_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .expect("reads its pid");
        let (attempt, pid) = insert_and_fail_once(&manager, &attempts)
            .await
            .expect("the retry commits");
        assert_eq!((attempt, pid), (2, first_pid), "one connection throughout");
        let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM pipeline_unawaited_pg")
            .fetch_all(&admin)
            .await
            .expect("reads");
        assert_eq!(ids, [2], "the failed attempt's insert is gone");
        assert!(idle(&pool).await, "no transaction is left open");
        one_clean_rollback(&manager, &seen_by_hooks);
    }

    #[tokio::test]
    async fn a_queued_rollback_on_a_dead_connection_closes_it_and_the_pool_goes_on() {
        let (Some(admin), Some(pool)) = (
            covet_txn_tests::postgres(1).await,
            covet_txn_tests::postgres(1).await,
        ) else {
            return;
        };
        let (manager, seen_by_hooks) = rollback_watcher(pool.clone());
        let result = fail_and_lose_the_connection(&manager, &admin).await;
        assert_eq!(sqlstate(&result).as_deref(), Some("40001"), "{result:?}");
        // The hooks ran at once: the server had ended the transaction.
        assert_eq!(rollbacks_seen(&seen_by_hooks), [None]);
        // The pool's check read the ROLLBACK's failure and closed the
        // connection: the next borrower gets a fresh one, outside any
        // transaction.
        assert!(idle(&pool).await);
        assert_eq!(manager.metrics().total.rollback_failures, 0);
    }
}

mod mariadb {
    use super::*;

    /// Inserts `attempt`, and on the first attempt fails with a deadlock
    /// the server leaves the transaction open for; returns the attempt and
    /// its connection's id.
    #[transactional(manager = manager, retry = 1, backoff = "1ms")]
    async fn insert_and_fail_once(
        manager: &TxManager<MySql>,
        attempts: &AtomicU32,
    ) -> Result<(u32, u64), AppError> {
        let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
        sqlx::query("INSERT INTO pipeline_unawaited_my (id) VALUES (?)")
            .bind(i64::from(attempt))
            .execute(&mut *manager.conn()?)
            .await?;
        let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
            .fetch_one(&mut *manager.conn()?)
            .await?;
        if attempt == 1 {
            sqlx::raw_sql(MARIADB_DEADLOCK)
                .execute(&mut *manager.conn()?)
                .await?;
        }
        Ok((attempt, id))
    }

    /// Fails with a deadlock, and its connection is killed before the
    /// ROLLBACK goes out.
    #[transactional(manager = manager)]
    async fn fail_and_lose_the_connection(
        manager: &TxManager<MySql>,
        admin: &sqlx::MySqlPool,
    ) -> Result<(), AppError> {
        let failed = sqlx::raw_sql(MARIADB_DEADLOCK)
            .execute(&mut *manager.conn()?)
            .await
            .expect_err("the server raises the failure");
        // The signalled deadlock leaves the connection usable for this.
        kill_mysql_session(manager, admin).await?;
        Err(failed.into())
    }

    async fn in_transaction(pool: &sqlx::MySqlPool) -> u64 {
        sqlx::query_scalar("SELECT @@in_transaction")
            .fetch_one(pool)
            .await
            .expect("reads the session's state")
    }

    #[tokio::test]
    async fn the_retry_runs_on_the_connection_the_background_rollback_cleaned() {
        let (Some(admin), Some(pool)) = (
            covet_txn_tests::mysql(1).await,
            covet_txn_tests::mysql(1).await,
        ) else {
            return;
        };
        sqlx::raw_sql(
            "DROP TABLE IF EXISTS pipeline_unawaited_my; \
             CREATE TABLE pipeline_unawaited_my (id BIGINT PRIMARY KEY)",
        )
        .execute(&admin)
        .await
        .expect("setup");
        let (manager, seen_by_hooks) = rollback_watcher(pool.clone());
        let attempts = AtomicU32::new(0);
        let first_id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
            .fetch_one(&pool)
            .await
            .expect("reads its id");
        let (attempt, id) = insert_and_fail_once(&manager, &attempts)
            .await
            .expect("the retry commits");
        assert_eq!((attempt, id), (2, first_id), "one connection throughout");
        let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM pipeline_unawaited_my")
            .fetch_all(&admin)
            .await
            .expect("reads");
        assert_eq!(ids, [2], "the failed attempt's insert is gone");
        assert_eq!(
            in_transaction(&pool).await,
            0,
            "no transaction is left open"
        );
        one_clean_rollback(&manager, &seen_by_hooks);
    }

    #[tokio::test]
    async fn a_background_rollback_that_fails_is_counted_and_its_connection_closed() {
        let (Some(admin), Some(pool)) = (
            covet_txn_tests::mysql(1).await,
            covet_txn_tests::mysql(1).await,
        ) else {
            return;
        };
        let (manager, seen_by_hooks) = rollback_watcher(pool.clone());
        let result = fail_and_lose_the_connection(&manager, &admin).await;
        assert_eq!(sqlstate(&result).as_deref(), Some("40001"), "{result:?}");
        assert_eq!(rollbacks_seen(&seen_by_hooks), [None]);
        // The next borrower waits for the background task, which closed
        // the killed connection; it gets a fresh one.
        assert_eq!(in_transaction(&pool).await, 0);
        assert_eq!(manager.metrics().total.rollback_failures, 1);
    }
}
