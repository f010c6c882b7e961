//! Propagation: how a call relates to the transaction already running, with
//! Spring's names and stricter failure reporting.

use covet_txn::{Error, Propagation, RollbackOnlyCause, transactional};
use covet_txn_tests::{AppError, each_backend};

each_backend! {
    const COLUMNS: &str = "id BIGINT PRIMARY KEY, v BIGINT NOT NULL";

    async fn count(pool: &sqlx::Pool<Db>, table: &str) -> i64 {
        pool_scalar(pool, format!("SELECT COUNT(*) FROM {table}")).await
    }

    async fn insert_row(table: &str, id: i64) -> Result<(), AppError> {
        exec(format!("INSERT INTO {table} (id, v) VALUES ({id}, 0)")).await?;
        Ok(())
    }

    #[transactional]
    async fn outer(table: &str) -> Result<(), AppError> {
        insert_row(table, 1).await
    }

    #[transactional(propagation = "required")]
    async fn required_then_fail(table: &str) -> Result<(), AppError> {
        insert_row(table, 2).await?;
        Err(AppError::Refused("required"))
    }

    #[transactional]
    async fn outer_swallowing_required_failure(table: &str) -> Result<(), AppError> {
        insert_row(table, 1).await?;
        let joined = required_then_fail(table).await;
        assert!(matches!(joined, Err(AppError::Refused(_))), "{joined:?}");
        assert!(covet_txn::current().is_some_and(|info| info.rollback_only));
        Ok(())
    }

    #[tokio::test]
    async fn a_failed_required_scope_makes_the_outer_commit_fail_loudly() {
        let Some(manager) = manager("prop_required", 1).await else { return };
        reset_table(manager.pool(), "prop_required", COLUMNS).await;
        let result = manager.scope(outer_swallowing_required_failure("prop_required")).await;
        let Err(AppError::Tx(Error::RollbackOnly(RollbackOnlyCause::JoinedScopeFailed { scope }))) = &result else {
            panic!("{result:?}")
        };
        assert!(scope.ends_with("::required_then_fail"), "the cause names the scope that failed: {scope}");
        let message = result.err().map(|error| error.to_string()).unwrap_or_default();
        assert!(message.contains("required_then_fail") && message.contains("nested"), "{message}");
        assert_eq!(count(manager.pool(), "prop_required").await, 0, "nothing was committed");
    }

    #[transactional(propagation = "required")]
    async fn required_insert(table: &str, id: i64) -> Result<i64, AppError> {
        insert_row(table, id).await?;
        Ok(covet_txn::current().map_or(0, |info| i64::from(info.depth)))
    }

    #[transactional]
    async fn outer_joined_by_required(table: &str) -> Result<i64, AppError> {
        insert_row(table, 1).await?;
        required_insert(table, 2).await
    }

    #[tokio::test]
    async fn required_joins_the_running_transaction_at_its_depth() {
        let Some(manager) = manager("prop_join", 1).await else { return };
        reset_table(manager.pool(), "prop_join", COLUMNS).await;
        let depth = manager.scope(outer_joined_by_required("prop_join")).await.expect("commits");
        assert_eq!(depth, 1, "no savepoint");
        assert_eq!(count(manager.pool(), "prop_join").await, 2);
        let alone = manager.scope(required_insert("prop_join", 3)).await.expect("begins its own");
        assert_eq!(alone, 1);
        assert_eq!(count(manager.pool(), "prop_join").await, 3);
    }

    #[transactional(propagation = "requires_new")]
    async fn independent_insert(table: &str, id: i64) -> Result<(), AppError> {
        insert_row(table, id).await
    }

    // The outer touches the database only after the independent transaction:
    // SQLite has one writer, so an independent write after the outer's own
    // would wait for the outer's lock until the busy timeout, and an outer
    // read before it would leave the outer a stale snapshot to write from.
    #[transactional]
    async fn outer_fails_after_requires_new(table: &str) -> Result<(), AppError> {
        independent_insert(table, 2).await?;
        insert_row(table, 1).await?;
        Err(AppError::Refused("outer"))
    }

    #[tokio::test]
    async fn requires_new_commits_on_its_own_connection_whatever_the_outer_does() {
        let Some(manager) = manager("prop_new", 2).await else { return };
        reset_table(manager.pool(), "prop_new", COLUMNS).await;
        let result = manager.scope(outer_fails_after_requires_new("prop_new")).await;
        assert!(matches!(result, Err(AppError::Refused("outer"))), "{result:?}");
        let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM prop_new")
            .fetch_all(manager.pool())
            .await
            .expect("reads");
        assert_eq!(ids, [2]);
    }

    #[tokio::test]
    async fn requires_new_on_a_pool_of_one_is_an_error_not_a_hang() {
        let Some(manager) = manager("prop_new_one", 1).await else { return };
        reset_table(manager.pool(), "prop_new_one", COLUMNS).await;
        let started = std::time::Instant::now();
        let result = manager.scope(outer_fails_after_requires_new("prop_new_one")).await;
        assert!(
            matches!(result, Err(AppError::Tx(Error::PoolExhaustedByNesting { held: 1, max: 1 }))),
            "{result:?}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(count(manager.pool(), "prop_new_one").await, 0);
    }

    /// A request that reads in its transaction, then waits at `gate` until
    /// `gate`'s other requests hold their connections too, then records an
    /// audit row in a transaction of its own.
    #[transactional(timeout = "20s")]
    async fn request_with_independent_audit(
        table: &str,
        id: i64,
        gate: &tokio::sync::Barrier,
    ) -> Result<(), AppError> {
        scalar(format!("SELECT COUNT(*) FROM {table}")).await?;
        gate.wait().await;
        independent_insert(table, id).await
    }

    /// `requests` requests at once, at most `at_most` of them running at a
    /// time, each waiting for `together` of them to hold a connection before
    /// its audit.
    async fn concurrent_requests(
        manager: &covet_txn::TxManager<Db>,
        table: &str,
        requests: i64,
        at_most: usize,
        together: usize,
    ) -> Vec<Result<(), AppError>> {
        let gate = tokio::sync::Barrier::new(together);
        let running = tokio::sync::Semaphore::new(at_most);
        let (gate, running) = (&gate, &running);
        let calls = (0..requests).map(|id| async move {
            let _turn = running.acquire().await.expect("the semaphore stays open");
            manager.scope(request_with_independent_audit(table, id, gate)).await
        });
        futures_util::future::join_all(calls).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requires_new_in_transactions_that_hold_the_whole_pool_fails_at_once_instead_of_deadlocking() {
        let table = format!("prop_new_full_{BACKEND}");
        let Some(manager) = manager(&table, 4).await else { return };
        reset_table(manager.pool(), &table, COLUMNS).await;
        let started = std::time::Instant::now();
        // Three rounds of four requests, each round holding all four of the
        // pool's connections while it asks for a fifth.
        let results = concurrent_requests(&manager, &table, 12, 12, 4).await;
        // None waits for its deadline: each commits (a connection freed by a
        // failed one reached it) or fails at once.
        let exhausted = results
            .iter()
            .filter(|result| matches!(result, Err(AppError::Tx(Error::PoolExhaustedByNesting { max: 4, .. }))))
            .count();
        let committed = results.iter().filter(|result| result.is_ok()).count();
        assert_eq!(exhausted + committed, 12, "{results:?}");
        assert!(exhausted >= 4, "{results:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
        assert_eq!(count(manager.pool(), &table).await, committed as i64);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requires_new_waits_its_turn_while_the_pool_has_room() {
        let table = format!("prop_new_room_{BACKEND}");
        let Some(manager) = manager(&table, 4).await else { return };
        reset_table(manager.pool(), &table, COLUMNS).await;
        // At most two at a time: each holds one connection and waits for a
        // second, four in all.
        let results = concurrent_requests(&manager, &table, 12, 2, 2).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(count(manager.pool(), &table).await, 12);
    }

    #[transactional(timeout = "300ms")]
    async fn outer_waiting_for_a_second_connection(table: &str) -> Result<(), AppError> {
        scalar(format!("SELECT COUNT(*) FROM {table}")).await?;
        independent_insert(table, 1).await
    }

    #[tokio::test]
    async fn requires_new_under_an_inherited_deadline_reports_the_time_it_had() {
        let table = format!("prop_new_deadline_{BACKEND}");
        let Some(manager) = manager(&table, 2).await else { return };
        reset_table(manager.pool(), &table, COLUMNS).await;
        // Someone else holds the pool's other connection.
        let blocker = manager.pool().acquire().await.expect("a connection");
        let result = manager.scope(outer_waiting_for_a_second_connection(&table)).await;
        drop(blocker);
        let Err(AppError::Tx(error @ Error::Timeout { timeout, .. })) = &result else { panic!("{result:?}") };
        assert!(
            *timeout > std::time::Duration::from_millis(100) && *timeout <= std::time::Duration::from_millis(300),
            "{timeout:?}"
        );
        assert!(!error.to_string().contains("0ns"), "{error}");
    }

    #[transactional(propagation = "mandatory")]
    async fn mandatory_insert(table: &str, id: i64) -> Result<(), AppError> {
        insert_row(table, id).await
    }

    #[transactional]
    async fn outer_with_mandatory(table: &str) -> Result<(), AppError> {
        insert_row(table, 1).await?;
        mandatory_insert(table, 2).await
    }

    #[tokio::test]
    async fn mandatory_needs_a_running_transaction_and_joins_it() {
        let Some(manager) = manager("prop_mandatory", 1).await else { return };
        reset_table(manager.pool(), "prop_mandatory", COLUMNS).await;
        let alone = manager.scope(mandatory_insert("prop_mandatory", 9)).await;
        assert!(matches!(alone, Err(AppError::Tx(Error::NoTransaction))), "{alone:?}");
        manager.scope(outer_with_mandatory("prop_mandatory")).await.expect("commits");
        assert_eq!(count(manager.pool(), "prop_mandatory").await, 2);
    }

    #[transactional(propagation = "never")]
    async fn never_insert_then_fail(table: &str, id: i64) -> Result<(), AppError> {
        assert!(covet_txn::current().is_some_and(|info| !info.transactional));
        insert_row(table, id).await?;
        Err(AppError::Refused("never"))
    }

    #[transactional]
    async fn outer_calling_never(table: &str) -> Result<(), AppError> {
        never_insert_then_fail(table, 2).await
    }

    #[tokio::test]
    async fn never_refuses_a_running_transaction_and_otherwise_autocommits() {
        let Some(manager) = manager("prop_never", 1).await else { return };
        reset_table(manager.pool(), "prop_never", COLUMNS).await;
        let inside = manager.scope(outer_calling_never("prop_never")).await;
        assert!(
            matches!(inside, Err(AppError::Tx(Error::TransactionActive(Propagation::Never)))),
            "{inside:?}"
        );
        let alone = manager.scope(never_insert_then_fail("prop_never", 1)).await;
        assert!(matches!(alone, Err(AppError::Refused(_))), "{alone:?}");
        assert_eq!(count(manager.pool(), "prop_never").await, 1, "autocommit keeps the row");
    }

    #[transactional(propagation = "supports")]
    async fn supports_count(table: &str) -> Result<i64, AppError> {
        Ok(scalar(format!("SELECT COUNT(*) FROM {table}")).await?)
    }

    #[transactional]
    async fn outer_then_supports(table: &str) -> Result<i64, AppError> {
        insert_row(table, 1).await?;
        supports_count(table).await
    }

    #[transactional(propagation = "supports")]
    async fn supports_then_nested(table: &str) -> Result<i64, AppError> {
        let failed = outer_then_fail(table, 5).await;
        assert!(failed.is_err());
        outer(table).await?;
        supports_count(table).await
    }

    #[transactional]
    async fn outer_then_fail(table: &str, id: i64) -> Result<(), AppError> {
        insert_row(table, id).await?;
        Err(AppError::Refused("outer_then_fail"))
    }

    #[tokio::test]
    async fn supports_joins_a_running_transaction_and_sees_its_work() {
        let Some(manager) = manager("prop_supports", 1).await else { return };
        reset_table(manager.pool(), "prop_supports", COLUMNS).await;
        let seen = manager.scope(outer_then_supports("prop_supports")).await.expect("commits");
        assert_eq!(seen, 1);
        let alone = manager.scope(supports_count("prop_supports")).await.expect("autocommit");
        assert_eq!(alone, 1);
    }

    #[tokio::test]
    async fn a_transaction_inside_a_supports_session_begins_on_its_connection() {
        // A pool of one: the nested transactions must reuse the session's
        // connection, or they would wait for ever.
        let Some(manager) = manager("prop_supports_nested", 1).await else { return };
        reset_table(manager.pool(), "prop_supports_nested", COLUMNS).await;
        let seen = manager.scope(supports_then_nested("prop_supports_nested")).await.expect("runs");
        assert_eq!(seen, 1, "the failed transaction rolled back, the other committed");
    }

    #[transactional(propagation = "not_supported")]
    async fn suspended_count_then_insert(table: &str, id: Option<i64>) -> Result<i64, AppError> {
        assert!(covet_txn::current().is_some_and(|info| !info.transactional), "no transaction");
        let seen = scalar(format!("SELECT COUNT(*) FROM {table}")).await?;
        if let Some(id) = id {
            insert_row(table, id).await?;
        }
        Ok(seen)
    }

    #[transactional]
    async fn outer_around_not_supported(table: &str) -> Result<(), AppError> {
        assert_eq!(suspended_count_then_insert(table, Some(2)).await?, 0);
        insert_row(table, 1).await?;
        let seen = suspended_count_then_insert(table, None).await?;
        assert_eq!(seen, 1, "it sees the committed autocommit row, not the suspended transaction's");
        assert!(covet_txn::current().is_some_and(|info| info.transactional), "the transaction resumes");
        Err(AppError::Refused("outer_around_not_supported"))
    }

    #[tokio::test]
    async fn not_supported_suspends_the_running_transaction_and_autocommits_beside_it() {
        let Some(pair) = manager("prop_not_supported", 2).await else { return };
        reset_table(pair.pool(), "prop_not_supported", COLUMNS).await;
        let failed = pair.scope(outer_around_not_supported("prop_not_supported")).await;
        assert!(matches!(failed, Err(AppError::Refused(_))), "{failed:?}");
        assert_eq!(count(pair.pool(), "prop_not_supported").await, 1, "only the autocommit row stays");
        assert_eq!(pool_scalar(pair.pool(), "SELECT COUNT(*) FROM prop_not_supported WHERE id = 2").await, 1);

        let alone = pair.scope(suspended_count_then_insert("prop_not_supported", Some(3))).await;
        assert_eq!(alone.ok(), Some(1), "with nothing running it autocommits");

        let Some(single) = manager("prop_not_supported_single", 1).await else { return };
        let exhausted = single.scope(outer_around_not_supported("prop_not_supported")).await;
        assert!(
            matches!(exhausted, Err(AppError::Tx(Error::PoolExhaustedByNesting { held: 1, max: 1 }))),
            "a pool of one has no second connection: {exhausted:?}"
        );
    }

    #[transactional(durable)]
    async fn settle_payment(table: &str, id: i64) -> Result<(), AppError> {
        insert_row(table, id).await
    }

    #[transactional]
    async fn outer_calling_durable(table: &str) -> Result<(), AppError> {
        insert_row(table, 1).await?;
        let refused = settle_payment(table, 2).await;
        assert!(
            matches!(
                &refused,
                Err(AppError::Tx(Error::NotOutermost { scope, running }))
                    if scope.ends_with("::settle_payment") && running.ends_with("::outer_calling_durable")
            ),
            "{refused:?}"
        );
        assert!(!covet_txn::is_rollback_only(), "the refusal came before the call joined anything");
        Ok(())
    }

    #[tokio::test]
    async fn durable_commits_as_the_outermost_transaction_and_is_refused_inside_one() {
        let Some(manager) = manager("prop_durable", 1).await else { return };
        reset_table(manager.pool(), "prop_durable", COLUMNS).await;
        manager.scope(settle_payment("prop_durable", 3)).await.expect("outermost: commits");
        manager.scope(outer_calling_durable("prop_durable")).await.expect("the outer commits");
        assert_eq!(count(manager.pool(), "prop_durable").await, 2, "rows 1 and 3; the refused call wrote nothing");
        assert_eq!(pool_scalar(manager.pool(), "SELECT COUNT(*) FROM prop_durable WHERE id = 2").await, 0);
    }
}
