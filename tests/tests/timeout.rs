//! Timeouts: a deadline for the whole call, retries and waits included. On
//! expiry the body is dropped, the transaction rolled back, the connection
//! left clean, and the server stops too, freeing the transaction's locks.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use covet_txn::{Error, Failure, TxManager, transactional};
use covet_txn_tests::{AppError, each_backend};

fn retry_refusals(failure: &Failure<'_>) -> bool {
    failure.error().to_string().contains("refused")
}

each_backend! {
    const COLUMNS: &str = "id BIGINT PRIMARY KEY, v BIGINT NOT NULL";

    #[transactional(timeout = "300ms")]
    async fn write_then_stall(table: &str) -> Result<(), AppError> {
        exec(format!("UPDATE {table} SET v = v + 1 WHERE id = 1")).await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok(())
    }

    #[tokio::test]
    async fn a_timed_out_transaction_rolls_back_and_leaves_a_clean_connection() {
        let Some(manager) = manager("timeout_clean", 1).await else { return };
        reset_table(manager.pool(), "timeout_clean", COLUMNS).await;
        sqlx::raw_sql("INSERT INTO timeout_clean VALUES (1, 0)").execute(manager.pool()).await.expect("setup");
        let started = Instant::now();
        let result = manager.scope(write_then_stall("timeout_clean")).await;
        let took = started.elapsed();
        assert!(matches!(result, Err(AppError::Tx(Error::Timeout { attempts: 1, .. }))), "{result:?}");
        assert!(took >= Duration::from_millis(300) && took < Duration::from_millis(1500), "{took:?}");
        assert_eq!(pool_scalar(manager.pool(), "SELECT v FROM timeout_clean WHERE id = 1").await, 0);
    }

    #[transactional(timeout = "400ms", retry = 1000, backoff = "20ms", max_backoff = "20ms", retry_if = retry_refusals)]
    async fn refused_until_the_deadline(attempts: &AtomicU32) -> Result<(), AppError> {
        attempts.fetch_add(1, Ordering::SeqCst);
        Err(AppError::Refused("refused"))
    }

    #[tokio::test]
    async fn the_deadline_covers_every_retry_and_wait() {
        let Some(manager) = manager("timeout_retries", 1).await else { return };
        let attempts = AtomicU32::new(0);
        let started = Instant::now();
        let result = manager.scope(refused_until_the_deadline(&attempts)).await;
        let took = started.elapsed();
        assert!(matches!(result, Err(AppError::Tx(Error::Timeout { .. }))), "{result:?}");
        assert!(took < Duration::from_millis(900), "{took:?}");
        assert!(attempts.load(Ordering::SeqCst) > 2, "several attempts fit in the deadline");
    }

    #[tokio::test]
    async fn a_timeout_too_long_to_matter_is_no_limit_rather_than_a_failure() {
        let Some(manager) = manager("timeout_huge", 1).await else { return };
        // Past PostgreSQL's 32-bit statement_timeout, and past any instant.
        for timeout in [Duration::from_secs(30 * 86_400), Duration::MAX] {
            let options = covet_txn::TxOptions::new().timeout(timeout);
            let one: i64 = manager
                .transaction(options, || async { scalar("SELECT COUNT(*) FROM (SELECT 1 AS x) AS one").await })
                .await
                .unwrap_or_else(|error| panic!("a {timeout:?} timeout: {error}"));
            assert_eq!(one, 1);
        }
    }

    #[transactional(timeout = "150ms")]
    async fn short_nested_stall() -> Result<(), AppError> {
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(())
    }

    #[transactional(timeout = "10s")]
    async fn outer_with_long_deadline() -> Result<Duration, AppError> {
        let started = Instant::now();
        let nested = short_nested_stall().await;
        assert!(matches!(nested, Err(AppError::Tx(Error::Timeout { .. }))), "{nested:?}");
        Ok(started.elapsed())
    }

    #[tokio::test]
    async fn a_nested_timeout_shortens_the_deadline_and_aborts_the_transaction() {
        let Some(manager) = manager("timeout_nested", 1).await else { return };
        let started = Instant::now();
        let result = manager.scope(outer_with_long_deadline()).await;
        assert!(
            matches!(result, Err(AppError::Tx(Error::TransactionAborted(_)))),
            "a body cut off mid-way leaves the transaction unusable: {result:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    }

    #[transactional(timeout = "10s")]
    async fn long_nested_stall() -> Result<(), AppError> {
        tokio::time::sleep(Duration::from_secs(3)).await;
        Ok(())
    }

    #[transactional(timeout = "200ms")]
    async fn outer_with_short_deadline() -> Result<(), AppError> {
        long_nested_stall().await
    }

    #[tokio::test]
    async fn a_nested_timeout_cannot_extend_the_deadline() {
        let Some(manager) = manager("timeout_extend", 1).await else { return };
        let started = Instant::now();
        let result = manager.scope(outer_with_short_deadline()).await;
        assert!(matches!(result, Err(AppError::Tx(Error::Timeout { .. }))), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    }
}

/// Holds a row lock and then runs a long statement on the server; returns
/// the time from the call's deadline until a second transaction got the lock.
async fn lock_freed_after<DB>(
    manager: TxManager<DB>,
    lock: &'static str,
    stall: &'static str,
) -> Duration
where
    DB: covet_txn::Backend,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
{
    let timeout = Duration::from_millis(500);
    let holder = {
        let manager = manager.clone();
        tokio::spawn(async move {
            manager
                .transaction(covet_txn::TxOptions::new().timeout(timeout), || async {
                    sqlx::raw_sql(lock).execute(&mut *manager.conn()?).await?;
                    sqlx::raw_sql(stall).execute(&mut *manager.conn()?).await?;
                    Ok::<_, Error>(())
                })
                .await
        })
    };
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let deadline = started + timeout;
    let mut waiter = manager.pool().begin().await.expect("second connection");
    sqlx::raw_sql(lock)
        .execute(&mut *waiter)
        .await
        .expect("the lock is freed");
    let freed = Instant::now();
    waiter.rollback().await.expect("rolls back");
    let held = holder.await.expect("no panic");
    assert!(matches!(held, Err(Error::Timeout { .. })), "{held:?}");
    freed.saturating_duration_since(deadline)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stops_a_timed_out_statement_and_frees_its_locks_within_a_second() {
    let Some(pool) = covet_txn_tests::postgres(2).await else {
        return;
    };
    sqlx::raw_sql("DROP TABLE IF EXISTS timeout_pg_lock; CREATE TABLE timeout_pg_lock (id BIGINT PRIMARY KEY, v BIGINT); INSERT INTO timeout_pg_lock VALUES (1, 0)")
        .execute(&pool)
        .await
        .expect("setup");
    let late = lock_freed_after(
        TxManager::new(pool),
        "UPDATE timeout_pg_lock SET v = v + 1 WHERE id = 1",
        "SELECT pg_sleep(30)",
    )
    .await;
    assert!(
        late < Duration::from_secs(1),
        "the lock was held {late:?} past the deadline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_stops_a_timed_out_statement_and_frees_its_locks_within_a_second() {
    let Some(pool) = covet_txn_tests::mysql(2).await else {
        return;
    };
    sqlx::raw_sql("DROP TABLE IF EXISTS timeout_my_lock; CREATE TABLE timeout_my_lock (id BIGINT PRIMARY KEY, v BIGINT); INSERT INTO timeout_my_lock VALUES (1, 0)")
        .execute(&pool)
        .await
        .expect("setup");
    let late = lock_freed_after(
        TxManager::new(pool.clone()),
        "UPDATE timeout_my_lock SET v = v + 1 WHERE id = 1",
        "SELECT SLEEP(30)",
    )
    .await;
    assert!(
        late < Duration::from_secs(1),
        "the lock was held {late:?} past the deadline"
    );
}

#[tokio::test]
async fn mariadb_session_bounds_are_restored_after_a_transaction_with_a_timeout() {
    let Some(pool) = covet_txn_tests::mysql(1).await else {
        return;
    };
    let manager = TxManager::new(pool);
    let read = "SELECT CAST(@@innodb_lock_wait_timeout AS SIGNED), CAST(@@max_statement_time * 1000 AS SIGNED)";
    let defaults: (i64, i64) = sqlx::query_as(read)
        .fetch_one(manager.pool())
        .await
        .expect("reads");
    let inside: (i64, i64) = manager
        .transaction(
            covet_txn::TxOptions::new().timeout(Duration::from_millis(2500)),
            || async {
                let inside: (i64, i64) = sqlx::query_as(read)
                    .fetch_one(&mut *manager.conn()?)
                    .await?;
                Ok::<_, Error>(inside)
            },
        )
        .await
        .expect("commits");
    assert_eq!(
        inside.0, 3,
        "lock waits bounded by the deadline, in whole seconds"
    );
    assert!(
        (2400..=2600).contains(&inside.1),
        "statements bounded by the deadline: {inside:?}"
    );
    let after: (i64, i64) = sqlx::query_as(read)
        .fetch_one(manager.pool())
        .await
        .expect("reads");
    assert_eq!(
        after, defaults,
        "the pool's one connection is back to the server's defaults"
    );
}
