//! Tests that never leave data behind: `#[covet_txn::test]` and
//! `TxManager::test_transaction` run a test in a transaction that always
//! rolls back, every `#[transactional]` call inside nests in it, tests
//! running at the same time never see each other's rows, a call asking for
//! any isolation level nests, and a call that would write outside it is an
//! error.

use std::time::Duration;

use covet_txn::{Error, Propagation, TxManager, transactional};
use covet_txn_tests::{AppError, each_backend};

const TABLE: &str = "test_tx_rows";

each_backend! {
    /// The manager of this file's tests, on a table they share; fails the
    /// test when the server is unreachable, since a skipped test would
    /// pass.
    async fn test_db() -> TxManager<Db> {
        let pool = shared_pool("test_transactions", 4)
            .await
            .unwrap_or_else(|| panic!("{BACKEND} is unreachable"));
        let create = format!("CREATE TABLE IF NOT EXISTS {TABLE} (id BIGINT PRIMARY KEY, test VARCHAR(40) NOT NULL)");
        // Tests that start together race to create it; one wins.
        if let Err(error) = sqlx::raw_sql(sqlx::AssertSqlSafe(create)).execute(&pool).await {
            let exists = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SELECT 1 FROM {TABLE} WHERE 1 = 0")))
                .execute(&pool)
                .await;
            assert!(exists.is_ok(), "cannot create {TABLE}: {error}");
        }
        TxManager::new(pool)
    }

    #[transactional]
    async fn place(id: i64, test: &str) -> Result<u32, AppError> {
        exec(format!("INSERT INTO {TABLE} (id, test) VALUES ({id}, '{test}')")).await?;
        Ok(covet_txn::current().map_or(0, |info| info.depth))
    }

    async fn rows(test: &str) -> Result<(i64, i64), AppError> {
        let own = scalar(format!("SELECT COUNT(*) FROM {TABLE} WHERE test = '{test}'")).await?;
        let all = scalar(format!("SELECT COUNT(*) FROM {TABLE}")).await?;
        Ok((own, all))
    }

    /// Writes three rows, waits so that the other test writes too, and
    /// sees only its own.
    async fn write_and_look(test: &'static str, first_id: i64) -> Result<(), AppError> {
        for id in first_id..first_id + 3 {
            let depth = place(id, test).await?;
            assert_eq!(depth, 2, "a #[transactional] call nests as a savepoint in the test's");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(rows(test).await?, (3, 3), "{test} sees its own rows and no others");
        Ok(())
    }

    #[covet_txn::test(manager = test_db())]
    async fn a_first_test_sees_only_its_own_rows() -> Result<(), AppError> {
        write_and_look("first", 1).await
    }

    #[covet_txn::test(manager = test_db())]
    async fn a_second_test_sees_only_its_own_rows() -> Result<(), AppError> {
        write_and_look("second", 11).await
    }

    #[transactional(propagation = "requires_new")]
    async fn audit() -> Result<(), AppError> {
        Ok(())
    }

    #[transactional(propagation = "not_supported")]
    async fn report() -> Result<(), AppError> {
        Ok(())
    }

    #[transactional(durable)]
    async fn settle(id: i64) -> Result<u32, AppError> {
        place(id, "durable").await
    }

    #[transactional(isolation = "serializable")]
    async fn strict(id: i64) -> Result<u32, AppError> {
        place(id, "strict").await
    }

    #[covet_txn::test(manager = test_db())]
    async fn a_call_asking_for_any_isolation_level_nests_in_the_test() -> Result<(), AppError> {
        assert_eq!(strict(31).await?, 3, "serializable nests in the test's transaction");
        assert_eq!(rows("strict").await?, (1, 1));
        Ok(())
    }

    #[covet_txn::test(manager = test_db())]
    async fn calls_that_would_write_outside_the_test_are_errors() {
        for (propagation, result) in [(Propagation::RequiresNew, audit().await), (Propagation::NotSupported, report().await)] {
            assert!(
                matches!(result, Err(AppError::Tx(Error::EscapesTestTransaction(found))) if found == propagation),
                "{propagation:?}: {result:?}"
            );
        }
        let depth = settle(21).await.expect("a durable call nests in a test transaction");
        assert_eq!(depth, 3, "durable nests as a savepoint, and its call inside it as another");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_test_transactions_leave_nothing_behind() {
        let manager = test_db().await;
        let tasks: Vec<_> = (0..4)
            .map(|task| {
                let manager = manager.clone();
                tokio::spawn(async move {
                    manager
                        .test_transaction(async move {
                            let test = format!("task{task}");
                            for id in 0..5 {
                                place(1000 + task * 10 + id, &test).await?;
                            }
                            rows(&test).await
                        })
                        .await
                })
            })
            .collect();
        for task in tasks {
            let (own, all) = task
                .await
                .expect("the task ends")
                .expect("the test transaction runs")
                .expect("the body succeeds");
            assert_eq!((own, all), (5, 5), "each sees exactly its own rows");
        }
        let left = pool_scalar(manager.pool(), format!("SELECT COUNT(*) FROM {TABLE} WHERE id >= 1000")).await;
        assert_eq!(left, 0, "every test transaction rolled back");
    }

    #[tokio::test]
    async fn a_panicking_test_body_rolls_back_and_the_panic_goes_on() {
        let manager = test_db().await;
        let in_task = manager.clone();
        let panicked = tokio::spawn(async move {
            in_task
                .test_transaction(async {
                    place(2000, "panics").await.expect("inserts");
                    panic!("the test failed");
                })
                .await
        })
        .await;
        assert!(panicked.is_err_and(|error| error.is_panic()));
        assert_eq!(pool_scalar(manager.pool(), format!("SELECT COUNT(*) FROM {TABLE} WHERE id = 2000")).await, 0);
        assert_eq!(manager.metrics().active.len(), 0, "nothing is left open");
    }
}
