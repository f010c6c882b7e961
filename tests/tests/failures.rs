//! The hard failure cases: a backend killed mid-transaction, and a
//! connection that fails while COMMIT is in flight.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use covet_txn::{CommitOutcome, Error, TxManager, transactional};
use covet_txn_tests::proxy::CommitCutter;
use covet_txn_tests::{AppError, kill_mysql_session, kill_postgres_session};
use sqlx::{MySql, Postgres};

fn upstream(host: &str, port: u16) -> SocketAddr {
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .expect("the server's address resolves")
}

mod killed_backend {
    use super::*;

    #[transactional(retry = 3, backoff = "1ms", manager = manager)]
    async fn postgres_write_killed_once(
        manager: &TxManager<Postgres>,
        admin: &sqlx::PgPool,
        attempts: &AtomicU32,
    ) -> Result<u32, AppError> {
        let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
        sqlx::query("INSERT INTO killed_pg (id) VALUES ($1)")
            .bind(i64::from(attempt))
            .execute(&mut *manager.conn()?)
            .await?;
        if attempt == 1 {
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&mut *manager.conn()?)
                .await?;
            sqlx::query("SELECT pg_terminate_backend($1)")
                .bind(pid)
                .execute(admin)
                .await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sqlx::query("INSERT INTO killed_pg (id) VALUES ($1)")
            .bind(100 + i64::from(attempt))
            .execute(&mut *manager.conn()?)
            .await?;
        Ok(attempt)
    }

    #[tokio::test]
    async fn postgres_a_killed_backend_is_retried_on_a_fresh_connection() {
        let Some(admin) = covet_txn_tests::postgres(1).await else {
            return;
        };
        let Some(pool) = covet_txn_tests::postgres(1).await else {
            return;
        };
        sqlx::raw_sql(
            "DROP TABLE IF EXISTS killed_pg; CREATE TABLE killed_pg (id BIGINT PRIMARY KEY)",
        )
        .execute(&admin)
        .await
        .expect("setup");
        let manager = TxManager::new(pool);
        let attempts = AtomicU32::new(0);
        let attempt = postgres_write_killed_once(&manager, &admin, &attempts)
            .await
            .expect("the retry succeeds");
        assert_eq!(attempt, 2);
        let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM killed_pg ORDER BY id")
            .fetch_all(&admin)
            .await
            .expect("reads");
        assert_eq!(
            ids,
            [2, 102],
            "nothing of the killed attempt committed, nothing was replayed"
        );
        for _ in 0..5 {
            sqlx::query("SELECT 1")
                .execute(manager.pool())
                .await
                .expect("only live connections are pooled");
        }
    }

    #[transactional(retry = 3, backoff = "1ms", manager = manager)]
    async fn mariadb_write_killed_once(
        manager: &TxManager<MySql>,
        admin: &sqlx::MySqlPool,
        attempts: &AtomicU32,
    ) -> Result<u32, AppError> {
        let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
        sqlx::query("INSERT INTO killed_my (id) VALUES (?)")
            .bind(i64::from(attempt))
            .execute(&mut *manager.conn()?)
            .await?;
        if attempt == 1 {
            kill_mysql_session(manager, admin).await?;
        }
        sqlx::query("INSERT INTO killed_my (id) VALUES (?)")
            .bind(100 + i64::from(attempt))
            .execute(&mut *manager.conn()?)
            .await?;
        Ok(attempt)
    }

    #[tokio::test]
    async fn mariadb_a_killed_connection_is_retried_on_a_fresh_connection() {
        let Some(admin) = covet_txn_tests::mysql(1).await else {
            return;
        };
        let Some(pool) = covet_txn_tests::mysql(1).await else {
            return;
        };
        sqlx::raw_sql(
            "DROP TABLE IF EXISTS killed_my; CREATE TABLE killed_my (id BIGINT PRIMARY KEY)",
        )
        .execute(&admin)
        .await
        .expect("setup");
        let manager = TxManager::new(pool);
        let attempts = AtomicU32::new(0);
        let attempt = mariadb_write_killed_once(&manager, &admin, &attempts)
            .await
            .expect("the retry succeeds");
        assert_eq!(attempt, 2);
        let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM killed_my ORDER BY id")
            .fetch_all(&admin)
            .await
            .expect("reads");
        assert_eq!(
            ids,
            [2, 102],
            "nothing of the killed attempt committed, nothing was replayed"
        );
        for _ in 0..5 {
            sqlx::query("SELECT 1")
                .execute(manager.pool())
                .await
                .expect("only live connections are pooled");
        }
    }
}

/// A nested scope fails, and its connection dies just before the runtime
/// rolls back to the scope's savepoint: the transaction cannot commit, and
/// the outermost call with `retry` runs it again on a fresh connection.
mod killed_during_savepoint_rollback {
    use super::*;

    #[transactional(manager = manager)]
    async fn postgres_nested_fails_and_dies(
        manager: &TxManager<Postgres>,
        admin: &sqlx::PgPool,
        kill: bool,
    ) -> Result<(), AppError> {
        if kill {
            kill_postgres_session(manager, admin).await?;
        }
        Err(AppError::Refused("the optional step failed"))
    }

    #[transactional(retry = 3, backoff = "1ms", manager = manager)]
    async fn postgres_outer_carries_on(
        manager: &TxManager<Postgres>,
        admin: &sqlx::PgPool,
        attempts: &AtomicU32,
    ) -> Result<u32, AppError> {
        let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
        sqlx::query("INSERT INTO sp_killed_pg (id) VALUES ($1)")
            .bind(i64::from(attempt))
            .execute(&mut *manager.conn()?)
            .await?;
        // The optional step's failure is swallowed, as a service does when
        // a nested scope is allowed to fail alone.
        let nested = postgres_nested_fails_and_dies(manager, admin, attempt == 1).await;
        assert!(matches!(nested, Err(AppError::Refused(_))), "{nested:?}");
        Ok(attempt)
    }

    #[tokio::test]
    async fn postgres_a_connection_lost_while_a_savepoint_rolls_back_retries_the_transaction() {
        let Some(admin) = covet_txn_tests::postgres(1).await else {
            return;
        };
        let Some(pool) = covet_txn_tests::postgres(1).await else {
            return;
        };
        sqlx::raw_sql(
            "DROP TABLE IF EXISTS sp_killed_pg; CREATE TABLE sp_killed_pg (id BIGINT PRIMARY KEY)",
        )
        .execute(&admin)
        .await
        .expect("setup");
        let manager = TxManager::new(pool);
        let attempts = AtomicU32::new(0);
        let attempt = postgres_outer_carries_on(&manager, &admin, &attempts)
            .await
            .expect("the lost connection dooms the transaction, and the retry commits");
        assert_eq!(attempt, 2);
        let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM sp_killed_pg ORDER BY id")
            .fetch_all(&admin)
            .await
            .expect("reads");
        assert_eq!(ids, [2], "only the second attempt committed");
        let metrics = manager.metrics();
        assert_eq!(
            (metrics.total.retries, metrics.total.connections_lost),
            (1, 1),
            "{:?}",
            metrics.total
        );
    }

    #[transactional(manager = manager)]
    async fn mariadb_nested_fails_and_dies(
        manager: &TxManager<MySql>,
        admin: &sqlx::MySqlPool,
        kill: bool,
    ) -> Result<(), AppError> {
        if kill {
            kill_mysql_session(manager, admin).await?;
        }
        Err(AppError::Refused("the optional step failed"))
    }

    #[transactional(retry = 3, backoff = "1ms", manager = manager)]
    async fn mariadb_outer_carries_on(
        manager: &TxManager<MySql>,
        admin: &sqlx::MySqlPool,
        attempts: &AtomicU32,
    ) -> Result<u32, AppError> {
        let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
        sqlx::query("INSERT INTO sp_killed_my (id) VALUES (?)")
            .bind(i64::from(attempt))
            .execute(&mut *manager.conn()?)
            .await?;
        let nested = mariadb_nested_fails_and_dies(manager, admin, attempt == 1).await;
        assert!(matches!(nested, Err(AppError::Refused(_))), "{nested:?}");
        Ok(attempt)
    }

    #[tokio::test]
    async fn mariadb_a_connection_lost_while_a_savepoint_rolls_back_retries_the_transaction() {
        let Some(admin) = covet_txn_tests::mysql(1).await else {
            return;
        };
        let Some(pool) = covet_txn_tests::mysql(1).await else {
            return;
        };
        sqlx::raw_sql(
            "DROP TABLE IF EXISTS sp_killed_my; CREATE TABLE sp_killed_my (id BIGINT PRIMARY KEY)",
        )
        .execute(&admin)
        .await
        .expect("setup");
        let manager = TxManager::new(pool);
        let attempts = AtomicU32::new(0);
        let attempt = mariadb_outer_carries_on(&manager, &admin, &attempts)
            .await
            .expect("the lost connection dooms the transaction, and the retry commits");
        assert_eq!(attempt, 2);
        let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM sp_killed_my ORDER BY id")
            .fetch_all(&admin)
            .await
            .expect("reads");
        assert_eq!(ids, [2], "only the second attempt committed");
        let metrics = manager.metrics();
        assert_eq!(
            (metrics.total.retries, metrics.total.connections_lost),
            (1, 1),
            "{:?}",
            metrics.total
        );
    }
}

/// A `before_commit` hook whose connection is killed under it: the
/// transaction rolls back and the outermost call retries it.
mod killed_in_before_commit_hook {
    use super::*;

    #[transactional(retry = 3, backoff = "1ms", manager = manager)]
    async fn postgres_audited(
        manager: &'static TxManager<Postgres>,
        admin: &'static sqlx::PgPool,
        attempts: &'static AtomicU32,
    ) -> Result<u32, AppError> {
        let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
        covet_txn::before_commit(move || async move {
            if attempt == 1 {
                kill_postgres_session(manager, admin).await?;
            }
            sqlx::query("INSERT INTO hook_killed_pg (id) VALUES ($1)")
                .bind(i64::from(attempt))
                .execute(&mut *manager.conn()?)
                .await?;
            Ok::<(), AppError>(())
        })
        .await;
        Ok(attempt)
    }

    #[tokio::test]
    async fn postgres_a_connection_lost_in_a_before_commit_hook_retries_the_transaction() {
        let (Some(admin), Some(pool)) = (
            covet_txn_tests::postgres(1).await,
            covet_txn_tests::postgres(1).await,
        ) else {
            return;
        };
        sqlx::raw_sql("DROP TABLE IF EXISTS hook_killed_pg; CREATE TABLE hook_killed_pg (id BIGINT PRIMARY KEY)")
            .execute(&admin)
            .await
            .expect("setup");
        let (manager, admin) = (
            Box::leak(Box::new(TxManager::new(pool))),
            Box::leak(Box::new(admin)),
        );
        let attempts = Box::leak(Box::new(AtomicU32::new(0)));
        let attempt = postgres_audited(manager, admin, attempts)
            .await
            .expect("the retry commits");
        assert_eq!(attempt, 2);
        let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM hook_killed_pg")
            .fetch_all(&*admin)
            .await
            .expect("reads");
        assert_eq!(ids, [2]);
        let total = manager.metrics().total;
        assert_eq!((total.retries, total.connections_lost), (1, 1), "{total:?}");
    }

    #[transactional(retry = 3, backoff = "1ms", manager = manager)]
    async fn mariadb_audited(
        manager: &'static TxManager<MySql>,
        admin: &'static sqlx::MySqlPool,
        attempts: &'static AtomicU32,
    ) -> Result<u32, AppError> {
        let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
        covet_txn::before_commit(move || async move {
            if attempt == 1 {
                kill_mysql_session(manager, admin).await?;
            }
            sqlx::query("INSERT INTO hook_killed_my (id) VALUES (?)")
                .bind(i64::from(attempt))
                .execute(&mut *manager.conn()?)
                .await?;
            Ok::<(), AppError>(())
        })
        .await;
        Ok(attempt)
    }

    #[tokio::test]
    async fn mariadb_a_connection_lost_in_a_before_commit_hook_retries_the_transaction() {
        let (Some(admin), Some(pool)) = (
            covet_txn_tests::mysql(1).await,
            covet_txn_tests::mysql(1).await,
        ) else {
            return;
        };
        sqlx::raw_sql("DROP TABLE IF EXISTS hook_killed_my; CREATE TABLE hook_killed_my (id BIGINT PRIMARY KEY)")
            .execute(&admin)
            .await
            .expect("setup");
        let (manager, admin) = (
            Box::leak(Box::new(TxManager::new(pool))),
            Box::leak(Box::new(admin)),
        );
        let attempts = Box::leak(Box::new(AtomicU32::new(0)));
        let attempt = mariadb_audited(manager, admin, attempts)
            .await
            .expect("the retry commits");
        assert_eq!(attempt, 2);
        let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM hook_killed_my")
            .fetch_all(&*admin)
            .await
            .expect("reads");
        assert_eq!(ids, [2]);
        let total = manager.metrics().total;
        assert_eq!((total.retries, total.connections_lost), (1, 1), "{total:?}");
    }
}

/// A ROLLBACK that fails (its connection was killed) is counted, and the
/// on_rollback hooks see its error.
mod failed_rollback {
    use covet_txn_tests::{RollbacksSeen, rollback_watcher, rollbacks_seen};

    use super::*;

    #[transactional(manager = manager)]
    async fn postgres_fails_after_losing_its_connection(
        manager: &TxManager<Postgres>,
        admin: &sqlx::PgPool,
    ) -> Result<(), AppError> {
        kill_postgres_session(manager, admin).await?;
        Err(AppError::Refused("the body failed"))
    }

    #[transactional(manager = manager)]
    async fn mariadb_fails_after_losing_its_connection(
        manager: &TxManager<MySql>,
        admin: &sqlx::MySqlPool,
    ) -> Result<(), AppError> {
        kill_mysql_session(manager, admin).await?;
        Err(AppError::Refused("the body failed"))
    }

    fn check<DB: covet_txn::Backend>(
        manager: &TxManager<DB>,
        seen: &RollbacksSeen,
        result: Result<(), AppError>,
    ) {
        assert!(
            matches!(result, Err(AppError::Refused(_))),
            "the body's own error comes back: {result:?}"
        );
        assert_eq!(manager.metrics().total.rollback_failures, 1);
        let seen = rollbacks_seen(seen);
        assert_eq!(seen.len(), 1, "{seen:?}");
        let failure = seen[0].clone().unwrap_or_default();
        assert!(failure.starts_with("ROLLBACK failed"), "{failure}");
    }

    #[tokio::test]
    async fn postgres_a_failed_rollback_is_counted_and_shown_to_on_rollback_hooks() {
        let (Some(admin), Some(pool)) = (
            covet_txn_tests::postgres(1).await,
            covet_txn_tests::postgres(1).await,
        ) else {
            return;
        };
        let (manager, seen) = rollback_watcher(pool);
        let result = postgres_fails_after_losing_its_connection(&manager, &admin).await;
        check(&manager, &seen, result);
    }

    #[tokio::test]
    async fn mariadb_a_failed_rollback_is_counted_and_shown_to_on_rollback_hooks() {
        let (Some(admin), Some(pool)) = (
            covet_txn_tests::mysql(1).await,
            covet_txn_tests::mysql(1).await,
        ) else {
            return;
        };
        let (manager, seen) = rollback_watcher(pool);
        let result = mariadb_fails_after_losing_its_connection(&manager, &admin).await;
        check(&manager, &seen, result);
    }
}

mod ambiguous_commit {
    use super::*;

    const SLOW_COMMIT: &str = "
        DROP TABLE IF EXISTS ambiguous_pg;
        CREATE TABLE ambiguous_pg (id BIGINT PRIMARY KEY);
        CREATE OR REPLACE FUNCTION covet_slow_commit() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN PERFORM pg_sleep(1.5); RETURN NULL; END $$;
        CREATE CONSTRAINT TRIGGER ambiguous_pg_slow AFTER INSERT ON ambiguous_pg
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION covet_slow_commit();";

    #[transactional(manager = manager, resolve_ambiguous_commit, retry = 1, backoff = "1ms")]
    async fn insert_and_report_pid(
        manager: &TxManager<Postgres>,
        pid: &tokio::sync::watch::Sender<i32>,
        attempts: &AtomicU32,
    ) -> Result<(), AppError> {
        attempts.fetch_add(1, Ordering::SeqCst);
        sqlx::query("INSERT INTO ambiguous_pg (id) VALUES (1)")
            .execute(&mut *manager.conn()?)
            .await?;
        let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *manager.conn()?)
            .await?;
        pid.send_replace(backend);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_a_commit_killed_in_flight_is_resolved_as_not_committed_and_retried() {
        let Some(admin) = covet_txn_tests::postgres(1).await else {
            return;
        };
        let Some(pool) = covet_txn_tests::postgres(2).await else {
            return;
        };
        sqlx::raw_sql(SLOW_COMMIT)
            .execute(&admin)
            .await
            .expect("setup");
        let manager = TxManager::new(pool);
        let (pid, mut reported) = tokio::sync::watch::channel(0);
        let killer = {
            let admin = admin.clone();
            tokio::spawn(async move {
                let _ = reported.changed().await;
                let backend = *reported.borrow();
                // COMMIT is now running the deferred trigger's sleep.
                tokio::time::sleep(Duration::from_millis(500)).await;
                sqlx::query("SELECT pg_terminate_backend($1)")
                    .bind(backend)
                    .execute(&admin)
                    .await
            })
        };
        let attempts = AtomicU32::new(0);
        let result = insert_and_report_pid(&manager, &pid, &attempts).await;
        killer
            .await
            .expect("no panic")
            .expect("terminates the backend");
        assert!(
            result.is_ok(),
            "resolved as not committed, then retried: {result:?}"
        );
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ambiguous_pg")
            .fetch_one(&admin)
            .await
            .expect("reads");
        assert_eq!(rows, 1);
    }

    #[transactional(manager = manager, resolve_ambiguous_commit)]
    async fn postgres_insert(manager: &TxManager<Postgres>) -> Result<&'static str, AppError> {
        sqlx::query("INSERT INTO cut_pg (id) VALUES (1)")
            .execute(&mut *manager.conn()?)
            .await?;
        Ok("committed")
    }

    #[tokio::test]
    async fn postgres_a_commit_cut_off_after_the_server_committed_is_resolved_as_committed() {
        let Some(admin) = covet_txn_tests::postgres(1).await else {
            return;
        };
        sqlx::raw_sql("DROP TABLE IF EXISTS cut_pg; CREATE TABLE cut_pg (id BIGINT PRIMARY KEY)")
            .execute(&admin)
            .await
            .expect("setup");
        let options = covet_txn_tests::postgres_options();
        let cutter = CommitCutter::start(upstream(options.get_host(), options.get_port()))
            .await
            .expect("proxy");
        let through_proxy = options.host("127.0.0.1").port(cutter.addr().port());
        let Some(pool) = covet_txn_tests::postgres_with(through_proxy, 1).await else {
            return;
        };
        let manager = TxManager::new(pool);
        cutter.arm();
        let result = postgres_insert(&manager).await;
        assert_eq!(result.expect("the server confirms the commit"), "committed");
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM cut_pg")
            .fetch_one(&admin)
            .await
            .expect("reads");
        assert_eq!(rows, 1);
    }

    /// Even a predicate that retries everything must not retry a COMMIT
    /// that may have gone through.
    fn retry_anything(_: &covet_txn::Failure<'_>) -> bool {
        true
    }

    #[transactional(manager = manager, retry = 3, backoff = "1ms", retry_if = retry_anything)]
    async fn mariadb_insert(
        manager: &TxManager<MySql>,
        attempts: &AtomicU32,
    ) -> Result<(), AppError> {
        attempts.fetch_add(1, Ordering::SeqCst);
        sqlx::query("INSERT INTO cut_my (id) VALUES (1)")
            .execute(&mut *manager.conn()?)
            .await?;
        Ok(())
    }

    #[tokio::test]
    async fn mariadb_a_commit_cut_off_is_reported_as_unknown_and_never_retried() {
        let Some(admin) = covet_txn_tests::mysql(1).await else {
            return;
        };
        sqlx::raw_sql("DROP TABLE IF EXISTS cut_my; CREATE TABLE cut_my (id BIGINT PRIMARY KEY)")
            .execute(&admin)
            .await
            .expect("setup");
        let options = covet_txn_tests::mysql_options();
        let cutter = CommitCutter::start(upstream(options.get_host(), options.get_port()))
            .await
            .expect("proxy");
        let through_proxy = options.host("127.0.0.1").port(cutter.addr().port());
        let Some(pool) = covet_txn_tests::mysql_with(through_proxy, 1).await else {
            return;
        };
        let manager = TxManager::new(pool);
        cutter.arm();
        let attempts = AtomicU32::new(0);
        let result = mariadb_insert(&manager, &attempts).await;
        assert!(
            matches!(
                result,
                Err(AppError::Tx(Error::AmbiguousCommit {
                    outcome: CommitOutcome::Unknown,
                    ..
                }))
            ),
            "{result:?}"
        );
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            1,
            "an unknown outcome is never retried"
        );
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM cut_my")
            .fetch_one(&admin)
            .await
            .expect("reads");
        assert_eq!(
            rows, 1,
            "the server did commit: reporting it as rolled back would have been wrong"
        );
        let counted = manager.metrics();
        assert_eq!(counted.total.ambiguous_commits, 1);
        assert_eq!(
            counted.total.committed + counted.total.rolled_back,
            0,
            "neither, as far as anyone knows"
        );
        sqlx::query("SELECT 1")
            .execute(manager.pool())
            .await
            .expect("the pool recovers");
    }
}

mod swallowed_error {
    use super::*;

    #[transactional(manager = manager, resolve_ambiguous_commit)]
    async fn swallows_an_error(manager: &TxManager<Postgres>) -> Result<(), AppError> {
        let failed = sqlx::query("SELECT * FROM covet_no_such_table")
            .execute(&mut *manager.conn()?)
            .await;
        assert!(failed.is_err());
        Ok(())
    }

    #[tokio::test]
    async fn postgres_an_aborted_transaction_is_refused_and_its_connection_comes_back_clean() {
        let Some(admin) = covet_txn_tests::postgres(1).await else {
            return;
        };
        let Some(pool) = covet_txn_tests::postgres(1).await else {
            return;
        };
        let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .expect("reads");
        let manager = TxManager::new(pool);
        let result = swallows_an_error(&manager).await;
        assert!(
            matches!(result, Err(AppError::Tx(Error::Database { .. }))),
            "COMMIT would have rolled back silently: {result:?}"
        );
        let state: String = sqlx::query_scalar(
            "SELECT COALESCE((SELECT state FROM pg_stat_activity WHERE pid = $1), 'closed')",
        )
        .bind(backend)
        .fetch_one(&admin)
        .await
        .expect("reads");
        assert!(
            state == "idle" || state == "closed",
            "the pooled connection is left `{state}`"
        );
        sqlx::query("SELECT 1")
            .execute(manager.pool())
            .await
            .expect("the pool's connection works");
    }
}
