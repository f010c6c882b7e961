//! Nesting: the outermost call begins a transaction, nested calls run in
//! savepoints, and an error, a panic or a borrowed connection is handled at
//! the right level.

use covet_txn::{Error, RollbackOnlyCause, TxState, transactional};
use covet_txn_tests::{AppError, each_backend};

each_backend! {
    const COLUMNS: &str = "id BIGINT PRIMARY KEY, v BIGINT NOT NULL";

    async fn ids(pool: &sqlx::Pool<Db>, table: &str) -> Vec<i64> {
        let sql = format!("SELECT id FROM {table} ORDER BY id");
        match sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await {
            Ok(ids) => ids,
            Err(error) => panic!("cannot read {table}: {error}"),
        }
    }

    #[transactional]
    async fn insert(table: &str, id: i64) -> Result<(), AppError> {
        exec(format!("INSERT INTO {table} (id, v) VALUES ({id}, 0)")).await?;
        Ok(())
    }

    #[transactional]
    async fn insert_then_fail(table: &str, id: i64) -> Result<(), AppError> {
        insert(table, id).await?;
        Err(AppError::Refused("insert_then_fail"))
    }

    #[tokio::test]
    async fn ok_commits_and_err_rolls_back() {
        let Some(manager) = manager("nest_basic", 2).await else { return };
        reset_table(manager.pool(), "nest_basic", COLUMNS).await;
        manager.scope(insert("nest_basic", 1)).await.expect("insert commits");
        let failed = manager.scope(insert_then_fail("nest_basic", 2)).await;
        assert!(matches!(failed, Err(AppError::Refused(_))), "{failed:?}");
        assert_eq!(ids(manager.pool(), "nest_basic").await, [1]);
    }

    #[transactional]
    async fn outer_recovers_from_nested_failure(table: &str) -> Result<(), AppError> {
        insert(table, 1).await?;
        let nested = insert_then_fail(table, 2).await;
        assert!(matches!(nested, Err(AppError::Refused(_))), "{nested:?}");
        insert(table, 3).await
    }

    #[tokio::test]
    async fn nested_error_rolls_back_its_savepoint_only_and_the_outer_commits() {
        let Some(manager) = manager("nest_recover", 2).await else { return };
        reset_table(manager.pool(), "nest_recover", COLUMNS).await;
        manager.scope(outer_recovers_from_nested_failure("nest_recover")).await.expect("outer commits");
        assert_eq!(ids(manager.pool(), "nest_recover").await, [1, 3]);
    }

    #[transactional]
    async fn level_1(table: &str) -> Result<(), AppError> {
        insert(table, 1).await?;
        level_2(table).await?;
        insert(table, 10).await
    }

    #[transactional]
    async fn level_2(table: &str) -> Result<(), AppError> {
        insert(table, 2).await?;
        let middle = level_3(table).await;
        assert!(matches!(middle, Err(AppError::Refused("level 3"))), "{middle:?}");
        assert_eq!(covet_txn::current().map(|info| info.depth), Some(2));
        insert(table, 20).await
    }

    #[transactional]
    async fn level_3(table: &str) -> Result<(), AppError> {
        insert(table, 3).await?;
        level_4(table).await?;
        Err(AppError::Refused("level 3"))
    }

    #[transactional]
    async fn level_4(table: &str) -> Result<(), AppError> {
        insert(table, 4).await?;
        level_5(table).await
    }

    #[transactional]
    async fn level_5(table: &str) -> Result<(), AppError> {
        assert_eq!(covet_txn::current().map(|info| info.depth), Some(5));
        insert(table, 5).await
    }

    #[tokio::test]
    async fn five_levels_deep_a_rollback_in_the_middle_undoes_only_the_levels_below_it() {
        let Some(manager) = manager("nest_five", 2).await else { return };
        reset_table(manager.pool(), "nest_five", COLUMNS).await;
        manager.scope(level_1("nest_five")).await.expect("level 1 commits");
        assert_eq!(ids(manager.pool(), "nest_five").await, [1, 2, 10, 20]);
    }

    #[transactional]
    async fn insert_then_panic(table: &str, id: i64) -> Result<(), AppError> {
        insert(table, id).await?;
        panic!("boom inside the transaction");
    }

    #[tokio::test]
    async fn a_panic_rolls_back_and_resumes_unwinding() {
        let Some(manager) = manager("nest_panic", 1).await else { return };
        reset_table(manager.pool(), "nest_panic", COLUMNS).await;
        let task = tokio::spawn(manager.scope(insert_then_panic("nest_panic", 1)));
        let joined = task.await;
        assert!(joined.as_ref().is_err_and(|error| error.is_panic()), "the panic reaches the caller");
        // A pool of one: the next transaction gets the same connection, clean.
        manager.scope(insert("nest_panic", 2)).await.expect("the pool's connection is usable");
        assert_eq!(ids(manager.pool(), "nest_panic").await, [2]);
    }

    #[transactional]
    async fn nested_panic_is_caught_by_outer(table: &str) -> Result<(), AppError> {
        insert(table, 1).await?;
        let inner = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(insert_then_panic(table, 100))).await;
        assert!(inner.is_err(), "the nested panic propagates");
        insert(table, 2).await
    }

    #[tokio::test]
    async fn a_panic_in_a_nested_scope_rolls_back_its_savepoint() {
        let Some(manager) = manager("nest_inner_panic", 1).await else { return };
        reset_table(manager.pool(), "nest_inner_panic", COLUMNS).await;
        manager.scope(nested_panic_is_caught_by_outer("nest_inner_panic")).await.expect("outer commits");
        assert_eq!(ids(manager.pool(), "nest_inner_panic").await, [1, 2]);
    }

    #[transactional]
    async fn nest_while_holding_the_connection(table: &str) -> Result<(), AppError> {
        let mut held = conn()?;
        sqlx::raw_sql("SELECT 1").execute(&mut *held).await?;
        let nested = insert(table, 1).await;
        assert!(matches!(nested, Err(AppError::Tx(Error::ConnectionBorrowed))), "{nested:?}");
        let second = conn();
        assert!(matches!(second, Err(Error::ConnectionBorrowed)), "{second:?}");
        drop(held);
        insert(table, 2).await
    }

    #[tokio::test]
    async fn a_nested_call_while_the_connection_is_borrowed_is_a_clear_error() {
        let Some(manager) = manager("nest_borrowed", 1).await else { return };
        reset_table(manager.pool(), "nest_borrowed", COLUMNS).await;
        manager.scope(nest_while_holding_the_connection("nest_borrowed")).await.expect("commits");
        assert_eq!(ids(manager.pool(), "nest_borrowed").await, [2]);
        let message = Error::ConnectionBorrowed.to_string();
        assert!(message.contains("drop the `TxConn` guard"), "{message}");
    }

    #[transactional]
    async fn insert_then_wait(
        table: &str,
        id: i64,
        until: tokio::sync::oneshot::Receiver<()>,
    ) -> Result<(), AppError> {
        insert(table, id).await?;
        let _ = until.await;
        Ok(())
    }

    #[transactional]
    async fn nested_calls_joined_concurrently(table: &str) -> Result<(), AppError> {
        // The first branch holds its nested scope open until the second has
        // tried to start one of its own.
        let (tried, until) = tokio::sync::oneshot::channel();
        let (first, second) = tokio::join!(insert_then_wait(table, 1, until), async {
            let second = insert(table, 2).await;
            let _ = tried.send(());
            second
        });
        assert!(first.is_ok(), "{first:?}");
        assert!(matches!(second, Err(AppError::Tx(Error::ConcurrentScope))), "{second:?}");

        // A statement of the outer scope, next to a running nested scope,
        // would land inside the nested scope's savepoint: refused too.
        let (tried, until) = tokio::sync::oneshot::channel();
        let (nested, outer_statement) = tokio::join!(insert_then_wait(table, 3, until), async {
            let outer = exec("SELECT 1").await;
            let _ = tried.send(());
            outer
        });
        assert!(nested.is_ok(), "{nested:?}");
        assert!(matches!(outer_statement, Err(Error::ConcurrentScope)), "{outer_statement:?}");
        Ok(())
    }

    #[tokio::test]
    async fn nested_scopes_polled_together_cannot_interleave_on_one_connection() {
        let Some(manager) = manager("nest_join", 1).await else { return };
        reset_table(manager.pool(), "nest_join", COLUMNS).await;
        manager.scope(nested_calls_joined_concurrently("nest_join")).await.expect("commits");
        assert_eq!(ids(manager.pool(), "nest_join").await, [1, 3]);
    }

    #[tokio::test]
    async fn conn_outside_any_transaction_is_a_clear_error() {
        let outside = conn();
        assert!(matches!(outside, Err(Error::NoTransaction)), "{outside:?}");
    }

    #[transactional(name = "describe")]
    async fn describe() -> Result<covet_txn::TxInfo, AppError> {
        covet_txn::current().ok_or(AppError::Refused("no transaction"))
    }

    #[transactional]
    async fn describe_nested() -> Result<(covet_txn::TxInfo, covet_txn::TxInfo), AppError> {
        let outer = covet_txn::current().ok_or(AppError::Refused("no transaction"))?;
        Ok((outer, describe().await?))
    }

    #[tokio::test]
    async fn the_running_scope_is_observable_from_inside() {
        let Some(manager) = manager("nest_info", 1).await else { return };
        let (outer, inner) = manager.scope(describe_nested()).await.expect("commits");
        assert!(outer.name.ends_with("::describe_nested"), "{}", outer.name);
        assert_eq!(inner.name, "describe");
        assert_eq!(inner.transaction_name, outer.name);
        assert_eq!((outer.depth, inner.depth), (1, 2));
        assert_eq!(outer.id, inner.id);
        assert_eq!(outer.state, TxState::Active);
        assert_eq!(outer.backend, BACKEND);
        assert!(outer.transactional && !outer.read_only);
        assert!(covet_txn::current().is_none());
    }

    #[transactional(propagation = "required")]
    async fn joined_then_nested(table: &str, id: i64) -> Result<(), AppError> {
        insert(table, id).await
    }

    #[transactional]
    async fn nested_next_to_a_joined_scope(table: &str) -> Result<(), AppError> {
        // A `required` scope joins the running transaction at its depth: a
        // savepoint it opens while a sibling's savepoint is open would
        // interleave the two on one connection.
        let (tried, until) = tokio::sync::oneshot::channel();
        let (first, second) = tokio::join!(insert_then_wait(table, 1, until), async {
            let second = joined_then_nested(table, 2).await;
            let _ = tried.send(());
            second
        });
        assert!(first.is_ok(), "{first:?}");
        assert!(matches!(second, Err(AppError::Tx(Error::ConcurrentScope))), "{second:?}");
        Ok(())
    }

    #[tokio::test]
    async fn a_joined_scope_cannot_open_a_savepoint_next_to_a_running_one() {
        let Some(manager) = manager("nest_join_required", 1).await else { return };
        reset_table(manager.pool(), "nest_join_required", COLUMNS).await;
        let result = manager.scope(nested_next_to_a_joined_scope("nest_join_required")).await;
        assert!(
            matches!(result, Err(AppError::Tx(Error::RollbackOnly(RollbackOnlyCause::JoinedScopeFailed { .. })))),
            "the joined scope's failure marks the transaction rollback-only: {result:?}"
        );
        assert_eq!(ids(manager.pool(), "nest_join_required").await, Vec::<i64>::new());
    }

    #[transactional]
    async fn swallows_a_statement_error(table: &str) -> Result<(), AppError> {
        exec(format!("INSERT INTO {table} (id, v) VALUES (2, 0)")).await?;
        let failed = exec("SELECT * FROM covet_no_such_table").await;
        assert!(failed.is_err());
        Ok(())
    }

    #[transactional]
    async fn outer_carries_on_after_a_swallowed_error(table: &str) -> Result<(), AppError> {
        insert(table, 1).await?;
        let nested = swallows_a_statement_error(table).await;
        if BACKEND == "postgresql" {
            // The error aborted PostgreSQL's transaction: the savepoint
            // cannot be released, so the scope is rolled back instead.
            assert!(matches!(nested, Err(AppError::Tx(Error::Database { .. }))), "{nested:?}");
        } else {
            assert!(nested.is_ok(), "{nested:?}");
        }
        insert(table, 3).await
    }

    #[tokio::test]
    async fn a_savepoint_that_cannot_be_released_is_rolled_back_and_the_outer_carries_on() {
        let Some(manager) = manager("nest_release", 1).await else { return };
        reset_table(manager.pool(), "nest_release", COLUMNS).await;
        manager
            .scope(outer_carries_on_after_a_swallowed_error("nest_release"))
            .await
            .expect("the outer scope commits");
        let expected: &[i64] = if BACKEND == "postgresql" { &[1, 3] } else { &[1, 2, 3] };
        assert_eq!(ids(manager.pool(), "nest_release").await, expected);
    }
}

mod sqlite_busy {
    use std::time::Duration;

    use covet_txn::{Error, FailureKind, TxManager, transactional};
    use covet_txn_tests::AppError;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
    use sqlx::{Connection, Sqlite, SqliteConnection};

    #[transactional]
    async fn insert_nested(id: i64) -> Result<(), AppError> {
        sqlx::query("INSERT INTO busy (id) VALUES (?)")
            .bind(id)
            .execute(&mut *covet_txn::conn::<Sqlite>()?)
            .await?;
        Ok(())
    }

    #[transactional]
    async fn read_then_write_nested() -> Result<(), AppError> {
        let _: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM busy")
            .fetch_one(&mut *covet_txn::conn::<Sqlite>()?)
            .await?;
        let nested = insert_nested(2).await;
        assert!(
            nested.is_err(),
            "another connection holds the write lock: {nested:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_nested_scope_doomed_by_a_busy_database_leaves_no_transaction_open() {
        let path = covet_txn_tests::sqlite_path("nest_busy");
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.clone().into_os_string();
            file.push(suffix);
            let _ = std::fs::remove_file(file);
        }
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::ZERO);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .expect("opens");
        sqlx::query("CREATE TABLE busy (id INTEGER PRIMARY KEY)")
            .execute(&pool)
            .await
            .expect("setup");
        let mut blocker = SqliteConnection::connect_with(&options)
            .await
            .expect("opens");
        sqlx::raw_sql("BEGIN IMMEDIATE; INSERT INTO busy (id) VALUES (1)")
            .execute(&mut blocker)
            .await
            .expect("takes the write lock");

        let manager = TxManager::new(pool);
        let result = manager.scope(read_then_write_nested()).await;
        assert!(
            matches!(result, Err(AppError::Tx(Error::Doomed(FailureKind::Busy)))),
            "{result:?}"
        );
        sqlx::raw_sql("COMMIT")
            .execute(&mut blocker)
            .await
            .expect("commits");

        // The pool's only connection came back outside any transaction: a
        // new one begins, and what it commits is visible elsewhere.
        manager
            .scope(insert_nested(3))
            .await
            .expect("a new transaction commits");
        let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM busy ORDER BY id")
            .fetch_all(&mut blocker)
            .await
            .expect("reads");
        assert_eq!(ids, [1, 3]);
    }
}
