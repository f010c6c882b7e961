//! Retry: only the outermost transaction runs again, with a fresh body and
//! backoff, when the failure is one a new attempt can fix.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use covet_txn::{Error, Failure, FailureKind, TxManager, TxOptions, transactional};
use covet_txn_tests::{AppError, each_backend};
use tokio::sync::Barrier;

fn retry_refusals(failure: &Failure<'_>) -> bool {
    failure.retryable_by_default() || failure.error().to_string().contains("refused")
}

fn never(_: &Failure<'_>) -> bool {
    false
}

fn retry_unique_violations(failure: &Failure<'_>) -> bool {
    failure.retryable_by_default() || failure.is_unique_violation()
}

each_backend! {
    #[transactional(retry = 4, backoff = "1ms", retry_if = retry_refusals)]
    async fn always_refused(attempts: &AtomicU32) -> Result<(), AppError> {
        attempts.fetch_add(1, Ordering::SeqCst);
        Err(AppError::Refused("refused every time"))
    }

    #[tokio::test]
    async fn when_retries_run_out_the_error_says_how_many_attempts_were_made() {
        let Some(manager) = manager("retry_exhausted", 1).await else { return };
        let attempts = AtomicU32::new(0);
        let result = manager.scope(always_refused(&attempts)).await;
        assert_eq!(attempts.load(Ordering::SeqCst), 5, "1 attempt + 4 retries");
        let Err(AppError::Tx(Error::RetriesExhausted { attempts: 5, last })) = &result else {
            panic!("{result:?}")
        };
        assert!(last.message().contains("refused every time"), "{last}");
        let message = result.err().map(|error| error.to_string()).unwrap_or_default();
        assert!(message.contains("gave up after 5 attempts"), "{message}");
    }

    #[transactional(retry = 3, backoff = "1ms", retry_if = retry_unique_violations)]
    async fn insert_next_free(table: &str, attempts: &AtomicU32) -> Result<i64, AppError> {
        let attempt = i64::from(attempts.fetch_add(1, Ordering::SeqCst) + 1);
        exec(format!("INSERT INTO {table} (id, v) VALUES ({attempt}, 0)")).await?;
        Ok(attempt)
    }

    #[tokio::test]
    async fn a_predicate_can_widen_the_retry_to_unique_violations() {
        let Some(manager) = manager("retry_unique", 1).await else { return };
        reset_table(manager.pool(), "retry_unique", "id BIGINT PRIMARY KEY, v BIGINT NOT NULL").await;
        sqlx::raw_sql("INSERT INTO retry_unique VALUES (1, 0)").execute(manager.pool()).await.expect("setup");
        let attempts = AtomicU32::new(0);
        let id = manager.scope(insert_next_free("retry_unique", &attempts)).await.expect("second attempt");
        assert_eq!(id, 2);
    }

    #[transactional(retry = 5, backoff = "1ms", retry_if = never)]
    async fn refused_once(attempts: &AtomicU32) -> Result<(), AppError> {
        attempts.fetch_add(1, Ordering::SeqCst);
        Err(AppError::Refused("refused"))
    }

    #[tokio::test]
    async fn a_predicate_can_narrow_the_retry_to_nothing() {
        let Some(manager) = manager("retry_never", 1).await else { return };
        let attempts = AtomicU32::new(0);
        let result = manager.scope(refused_once(&attempts)).await;
        assert!(matches!(result, Err(AppError::Refused(_))), "{result:?}");
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
    }

    #[transactional(retry = 2, backoff = "1ms", retry_if = retry_refusals)]
    async fn boxed_refused_once(attempts: &AtomicU32) -> Result<u32, Box<dyn std::error::Error>> {
        if attempts.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(Box::new(AppError::Refused("refused once")));
        }
        Ok(attempts.load(Ordering::SeqCst))
    }

    #[transactional(retry = 2, backoff = "1ms", retry_if = retry_refusals)]
    async fn thread_safe_boxed_refused_once(
        attempts: &AtomicU32,
    ) -> Result<u32, Box<dyn std::error::Error + Send + Sync>> {
        if attempts.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(Box::new(AppError::Refused("refused once")));
        }
        Ok(attempts.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn boxed_error_types_are_seen_through_for_the_retry() {
        let Some(manager) = manager("retry_boxed", 1).await else { return };
        let attempts = AtomicU32::new(0);
        let plain = manager.scope(boxed_refused_once(&attempts)).await;
        assert_eq!(plain.map_err(|error| error.to_string()), Ok(2));
        let attempts = AtomicU32::new(0);
        let thread_safe = manager.scope(thread_safe_boxed_refused_once(&attempts)).await;
        assert_eq!(thread_safe.map_err(|error| error.to_string()), Ok(2));
    }

    #[transactional(retry = 2, backoff = "1ms", retry_if = retry_refusals)]
    async fn consumes_its_arguments(name: String, tags: Vec<String>, counter: &mut u32) -> Result<usize, AppError> {
        *counter += 1;
        let owned: Vec<String> = tags.into_iter().chain(std::iter::once(name)).collect();
        if *counter < 3 {
            return Err(AppError::Refused("once more"));
        }
        Ok(owned.len())
    }

    #[tokio::test]
    async fn each_attempt_gets_fresh_copies_of_by_value_arguments() {
        let Some(manager) = manager("retry_args", 1).await else { return };
        let mut counter = 0;
        let tags = vec!["a".to_owned(), "b".to_owned()];
        let length = manager
            .scope(consumes_its_arguments("n".to_owned(), tags, &mut counter))
            .await
            .expect("third attempt");
        assert_eq!((length, counter), (3, 3));
    }
}

/// A retryable failure forced by the server, the same way a real one reaches
/// the client.
mod forced {
    use super::*;

    const PG_SERIALIZATION_FAILURE: &str =
        "DO $$ BEGIN RAISE EXCEPTION 'forced' USING ERRCODE = '40001'; END $$";

    #[transactional]
    async fn nested_failing_once(attempts: &AtomicU32) -> Result<(), AppError> {
        if attempts.load(Ordering::SeqCst) == 1 {
            sqlx::raw_sql(PG_SERIALIZATION_FAILURE)
                .execute(&mut *covet_txn::conn::<sqlx::Postgres>()?)
                .await?;
        }
        Ok(())
    }

    #[transactional(retry = 3, backoff = "1ms")]
    async fn outer_swallowing_nested_failure(attempts: &AtomicU32) -> Result<u32, AppError> {
        let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
        let nested = nested_failing_once(attempts).await;
        if attempt == 1 {
            assert!(
                nested.is_err(),
                "the nested scope fails on the first attempt"
            );
        }
        // The outer swallows the error: the transaction is doomed anyway, and
        // its commit reports it, which makes the outermost call retry.
        Ok(attempt)
    }

    #[tokio::test]
    async fn a_retryable_error_in_a_nested_scope_makes_the_outermost_call_retry() {
        let Some(pool) = covet_txn_tests::postgres(1).await else {
            return;
        };
        let manager = TxManager::new(pool);
        let attempts = AtomicU32::new(0);
        let attempt = manager
            .scope(outer_swallowing_nested_failure(&attempts))
            .await
            .expect("retried");
        assert_eq!(attempt, 2);
    }

    #[transactional(retry = 3)]
    async fn nested_with_own_retry(attempts: &AtomicU32) -> Result<(), AppError> {
        attempts.fetch_add(1, Ordering::SeqCst);
        sqlx::raw_sql(PG_SERIALIZATION_FAILURE)
            .execute(&mut *covet_txn::conn::<sqlx::Postgres>()?)
            .await?;
        Ok(())
    }

    #[transactional]
    async fn outer_without_retry(attempts: &AtomicU32) -> Result<(), AppError> {
        nested_with_own_retry(attempts).await
    }

    #[tokio::test]
    async fn retry_on_a_nested_function_does_not_retry_inside_a_running_transaction() {
        let Some(pool) = covet_txn_tests::postgres(1).await else {
            return;
        };
        let manager = TxManager::new(pool);
        let attempts = AtomicU32::new(0);
        let result = manager.scope(outer_without_retry(&attempts)).await;
        assert!(matches!(result, Err(AppError::Db(_))), "{result:?}");
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            1,
            "the nested scope ran once"
        );
    }
}

/// Two transactions that lock two rows in opposite order, behind a barrier
/// on their first attempt: one is the deadlock victim and is retried.
async fn deadlock_both_succeed<DB>(
    manager: TxManager<DB>,
    table: &'static str,
    placeholder: &'static str,
) where
    DB: covet_txn::Backend,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let barrier = Arc::new(Barrier::new(2));
    let attempts = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for (first, second) in [(1, 2), (2, 1)] {
        let manager = manager.clone();
        let barrier = Arc::clone(&barrier);
        let attempts = Arc::clone(&attempts);
        tasks.push(tokio::spawn(async move {
            let options = TxOptions::new().retries(5);
            manager
                .transaction_with_retry(options, || {
                    let barrier = Arc::clone(&barrier);
                    let attempts = Arc::clone(&attempts);
                    let manager = manager.clone();
                    async move {
                        let attempt = covet_txn::current().map_or(0, |info| info.attempt);
                        attempts.fetch_add(1, Ordering::SeqCst);
                        let update = |id: i64| {
                            format!("UPDATE {table} SET v = v + 1 WHERE id = {id}{placeholder}")
                        };
                        sqlx::raw_sql(sqlx::AssertSqlSafe(update(first)))
                            .execute(&mut *manager.conn()?)
                            .await?;
                        if attempt == 1 {
                            barrier.wait().await;
                        }
                        sqlx::raw_sql(sqlx::AssertSqlSafe(update(second)))
                            .execute(&mut *manager.conn()?)
                            .await?;
                        Ok::<_, Error>(())
                    }
                })
                .await
        }));
    }
    for task in tasks {
        task.await
            .expect("no panic")
            .expect("both transfers succeed");
    }
    assert!(attempts.load(Ordering::SeqCst) >= 3, "the victim ran again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_deadlock_victim_is_retried_and_both_succeed() {
    // Deadlocks detected in 50 ms, not 1 s, on this pool's sessions only:
    // a database-wide setting would change what every later test and the
    // benchmark measure.
    let options = covet_txn_tests::postgres_options().options([("deadlock_timeout", "50ms")]);
    let Some(pool) = covet_txn_tests::postgres_with(options, 2).await else {
        return;
    };
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS retry_pg_deadlock; CREATE TABLE retry_pg_deadlock (id BIGINT PRIMARY KEY, v BIGINT NOT NULL); \
         INSERT INTO retry_pg_deadlock VALUES (1, 0), (2, 0)",
    )
    .execute(&pool)
    .await
    .expect("setup");
    deadlock_both_succeed(TxManager::new(pool.clone()), "retry_pg_deadlock", "").await;
    let total: i64 = sqlx::query_scalar("SELECT SUM(v)::int8 FROM retry_pg_deadlock")
        .fetch_one(&pool)
        .await
        .expect("reads");
    assert_eq!(total, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_deadlock_victim_is_retried_and_both_succeed() {
    let Some(pool) = covet_txn_tests::mysql(2).await else {
        return;
    };
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS retry_my_deadlock; CREATE TABLE retry_my_deadlock (id BIGINT PRIMARY KEY, v BIGINT NOT NULL); \
         INSERT INTO retry_my_deadlock VALUES (1, 0), (2, 0)",
    )
    .execute(&pool)
    .await
    .expect("setup");
    deadlock_both_succeed(TxManager::new(pool.clone()), "retry_my_deadlock", "").await;
    let total: i64 = sqlx::query_scalar("SELECT CAST(SUM(v) AS SIGNED) FROM retry_my_deadlock")
        .fetch_one(&pool)
        .await
        .expect("reads");
    assert_eq!(total, 4);
}

mod write_skew {
    use super::*;

    /// Two doctors on call; each goes off call if the other is still on.
    /// Both check, then both write: only serializability stops the second.
    async fn both_go_off_call(manager: &TxManager<sqlx::Postgres>, options: TxOptions) -> i64 {
        sqlx::raw_sql(
            "DROP TABLE IF EXISTS retry_on_call; CREATE TABLE retry_on_call (doctor BIGINT PRIMARY KEY, on_call BOOLEAN NOT NULL); \
             INSERT INTO retry_on_call VALUES (1, true), (2, true)",
        )
        .execute(manager.pool())
        .await
        .expect("setup");
        let barrier = Arc::new(Barrier::new(2));
        let mut tasks = Vec::new();
        for doctor in [1_i64, 2] {
            let manager = manager.clone();
            let barrier = Arc::clone(&barrier);
            tasks.push(tokio::spawn(async move {
                manager
                    .transaction_with_retry(options, || {
                        let barrier = Arc::clone(&barrier);
                        let manager = manager.clone();
                        async move {
                            let on_call: i64 = sqlx::query_scalar(
                                "SELECT COUNT(*) FROM retry_on_call WHERE on_call",
                            )
                            .fetch_one(&mut *manager.conn()?)
                            .await?;
                            if covet_txn::current().is_some_and(|info| info.attempt == 1) {
                                barrier.wait().await;
                            }
                            if on_call >= 2 {
                                sqlx::query(
                                    "UPDATE retry_on_call SET on_call = false WHERE doctor = $1",
                                )
                                .bind(doctor)
                                .execute(&mut *manager.conn()?)
                                .await?;
                            }
                            Ok::<_, Error>(())
                        }
                    })
                    .await
            }));
        }
        for task in tasks {
            task.await.expect("no panic").expect("commits");
        }
        sqlx::query_scalar("SELECT COUNT(*) FROM retry_on_call WHERE on_call")
            .fetch_one(manager.pool())
            .await
            .expect("reads")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn write_skew_happens_at_repeatable_read_and_never_at_serializable_with_retry() {
        let Some(pool) = covet_txn_tests::postgres(2).await else {
            return;
        };
        let manager = TxManager::new(pool);
        let repeatable = TxOptions::new()
            .isolation(covet_txn::Isolation::RepeatableRead)
            .retries(3);
        assert_eq!(
            both_go_off_call(&manager, repeatable).await,
            0,
            "negative control: the anomaly happens"
        );
        let serializable = TxOptions::new()
            .isolation(covet_txn::Isolation::Serializable)
            .retries(3);
        for _ in 0..5 {
            assert_eq!(
                both_go_off_call(&manager, serializable).await,
                1,
                "one doctor stays on call"
            );
        }
    }
}

#[transactional(
    isolation = "serializable",
    retry = 20,
    backoff = "1ms",
    max_backoff = "20ms"
)]
async fn increment(manager: &TxManager<sqlx::Sqlite>) -> Result<(), AppError> {
    let value: i64 = sqlx::query_scalar("SELECT v FROM counter WHERE id = 1")
        .fetch_one(&mut *manager.conn()?)
        .await?;
    sqlx::query("UPDATE counter SET v = ? WHERE id = 1")
        .bind(value + 1)
        .execute(&mut *manager.conn()?)
        .await?;
    Ok(())
}

#[transactional(retry = 200, backoff = "1ms", max_backoff = "20ms", manager = manager)]
async fn increment_deferred(manager: &TxManager<sqlx::Sqlite>) -> Result<(), AppError> {
    let value: i64 = sqlx::query_scalar("SELECT v FROM counter WHERE id = 2")
        .fetch_one(&mut *manager.conn()?)
        .await?;
    sqlx::query("UPDATE counter SET v = ? WHERE id = 2")
        .bind(value + 1)
        .execute(&mut *manager.conn()?)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_read_then_write_increments_lose_nothing() {
    let Some(pool) = covet_txn_tests::sqlite("retry_increments", 16).await else {
        return;
    };
    sqlx::raw_sql("CREATE TABLE counter (id INTEGER PRIMARY KEY, v INTEGER NOT NULL); INSERT INTO counter VALUES (1, 0), (2, 0)")
        .execute(&pool)
        .await
        .expect("setup");
    let manager = TxManager::new(pool);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let manager = manager.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                manager.scope(increment(&manager)).await?;
                increment_deferred(&manager).await?;
            }
            Ok::<_, AppError>(())
        }));
    }
    for task in tasks {
        task.await
            .expect("no panic")
            .expect("every increment commits");
    }
    let values: Vec<i64> = sqlx::query_scalar("SELECT v FROM counter ORDER BY id")
        .fetch_all(manager.pool())
        .await
        .expect("reads");
    assert_eq!(
        values,
        [1600, 1600],
        "BEGIN IMMEDIATE and deferred-with-retry both lose nothing"
    );
}

#[test]
fn failure_kinds_have_stable_names() {
    assert_eq!(FailureKind::Deadlock.to_string(), "deadlock");
    assert_eq!(
        FailureKind::SerializationFailure.name(),
        "serialization_failure"
    );
}
