//! Isolation levels and access modes take effect on the server: read back
//! inside the transaction, and shown by an anomaly that the weaker level
//! allows and the stronger one prevents.

use covet_txn::{Error, Isolation, TxManager, TxOptions, transactional};
use covet_txn_tests::{AppError, each_backend};

each_backend! {
    const COLUMNS: &str = "id BIGINT PRIMARY KEY, v BIGINT NOT NULL";

    #[transactional(read_only = true)]
    async fn write_in_read_only(table: &str) -> Result<(), AppError> {
        exec(format!("INSERT INTO {table} (id, v) VALUES (1, 1)")).await?;
        Ok(())
    }

    #[transactional]
    async fn write(table: &str, id: i64) -> Result<(), AppError> {
        exec(format!("INSERT INTO {table} (id, v) VALUES ({id}, 1)")).await?;
        Ok(())
    }

    #[tokio::test]
    async fn a_read_only_transaction_refuses_writes_and_leaves_the_connection_read_write() {
        let Some(manager) = manager("iso_read_only", 1).await else { return };
        reset_table(manager.pool(), "iso_read_only", COLUMNS).await;
        let refused = manager.scope(write_in_read_only("iso_read_only")).await;
        assert!(
            matches!(refused, Err(AppError::Tx(Error::Query(sqlx::Error::Database(_))))),
            "{refused:?}"
        );
        manager.scope(write("iso_read_only", 2)).await.expect("the same connection writes again");
        assert_eq!(pool_scalar(manager.pool(), "SELECT COUNT(*) FROM iso_read_only").await, 1);
    }

    #[transactional(isolation = "read_committed")]
    async fn nested_read_committed() -> Result<covet_txn::TxId, AppError> {
        covet_txn::current().map(|info| info.id).ok_or(AppError::Refused("no transaction"))
    }

    #[transactional(read_only = true)]
    async fn nested_read_only() -> Result<covet_txn::TxId, AppError> {
        covet_txn::current().map(|info| info.id).ok_or(AppError::Refused("no transaction"))
    }

    #[transactional(isolation = "serializable")]
    async fn nested_serializable() -> Result<(), AppError> {
        Ok(())
    }

    #[transactional(read_only = false)]
    async fn nested_read_write() -> Result<(), AppError> {
        Ok(())
    }

    #[transactional(isolation = "SERIALIZABLE")]
    async fn outer_serializable() -> Result<(), AppError> {
        let outer = covet_txn::current().map(|info| info.id);
        // What the running transaction already gives joins it.
        assert_eq!(nested_read_committed().await.ok(), outer, "a weaker level nests in it");
        assert_eq!(nested_read_only().await.ok(), outer, "a read-only request nests in it");
        nested_serializable().await?;
        Ok(())
    }

    #[transactional(isolation = "read_committed", read_only = true)]
    async fn outer_read_committed_read_only() -> Result<(), AppError> {
        let stronger = nested_serializable().await;
        assert!(
            matches!(
                stronger,
                Err(AppError::Tx(Error::IsolationMismatch {
                    running: Some(Isolation::ReadCommitted),
                    requested: Isolation::Serializable,
                    ..
                }))
            ),
            "{stronger:?}"
        );
        let writer = nested_read_write().await;
        assert!(matches!(writer, Err(AppError::Tx(Error::AccessModeMismatch { .. }))), "{writer:?}");
        Ok(())
    }

    #[tokio::test]
    async fn a_nested_call_joins_what_satisfies_it_and_is_refused_what_does_not() {
        let Some(manager) = manager("iso_nested", 1).await else { return };
        manager.scope(outer_serializable()).await.expect("the outer commits");
        if BACKEND != "sqlite" {
            // SQLite is always serializable: every level is satisfied there.
            manager.scope(outer_read_committed_read_only()).await.expect("the outer commits");
        }
    }
}

/// Reads row 1 twice, with another connection changing it (and committing)
/// in between. Returns both reads.
async fn read_twice<DB>(
    manager: &TxManager<DB>,
    level: Isolation,
    read: &'static str,
    change: &'static str,
) -> (i64, i64)
where
    DB: covet_txn::Backend,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    (i64,): for<'r> sqlx::FromRow<'r, DB::Row>,
    usize: sqlx::ColumnIndex<DB::Row>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
{
    let pool = manager.pool().clone();
    let options = TxOptions::new().isolation(level);
    let result = manager
        .transaction(options, || async move {
            let first: i64 = sqlx::query_scalar(read)
                .fetch_one(&mut *manager.conn()?)
                .await?;
            sqlx::raw_sql(change).execute(&pool).await?;
            let second: i64 = sqlx::query_scalar(read)
                .fetch_one(&mut *manager.conn()?)
                .await?;
            Ok::<_, Error>((first, second))
        })
        .await;
    match result {
        Ok(reads) => reads,
        Err(error) => panic!("read twice at {level}: {error}"),
    }
}

mod postgres_levels {
    use super::*;

    async fn show(setting: &'static str) -> Result<String, Error> {
        let value: String = sqlx::query_scalar(setting)
            .fetch_one(&mut *covet_txn::conn::<sqlx::Postgres>()?)
            .await?;
        Ok(value)
    }

    #[tokio::test]
    async fn the_server_reports_the_level_and_access_mode_asked_for() {
        let Some(pool) = covet_txn_tests::postgres(1).await else {
            return;
        };
        let manager = TxManager::new(pool);
        for (level, reported) in [
            (Isolation::ReadUncommitted, "read uncommitted"),
            (Isolation::ReadCommitted, "read committed"),
            (Isolation::RepeatableRead, "repeatable read"),
            (Isolation::Serializable, "serializable"),
        ] {
            for read_only in [false, true] {
                let options = TxOptions::new().isolation(level).read_only(read_only);
                let (isolation, access) = manager
                    .transaction(options, || async {
                        Ok::<_, Error>((
                            show("SHOW transaction_isolation").await?,
                            show("SHOW transaction_read_only").await?,
                        ))
                    })
                    .await
                    .expect("runs");
                assert_eq!(isolation, reported);
                assert_eq!(access, if read_only { "on" } else { "off" });
            }
        }
    }

    #[tokio::test]
    async fn read_committed_sees_a_concurrent_commit_and_repeatable_read_does_not() {
        let Some(pool) = covet_txn_tests::postgres(2).await else {
            return;
        };
        let manager = TxManager::new(pool);
        let setup = "DROP TABLE IF EXISTS iso_pg_nrr; CREATE TABLE iso_pg_nrr (id BIGINT PRIMARY KEY, v BIGINT NOT NULL); INSERT INTO iso_pg_nrr VALUES (1, 0)";
        sqlx::raw_sql(setup)
            .execute(manager.pool())
            .await
            .expect("setup");
        let read = "SELECT v FROM iso_pg_nrr WHERE id = 1";
        let change = "UPDATE iso_pg_nrr SET v = v + 1 WHERE id = 1";
        let (first, second) = read_twice(&manager, Isolation::ReadCommitted, read, change).await;
        assert_eq!(second, first + 1, "read committed: the anomaly happens");
        let (first, second) = read_twice(&manager, Isolation::RepeatableRead, read, change).await;
        assert_eq!(second, first, "repeatable read: it does not");
    }
}

mod mariadb_levels {
    use super::*;
    use std::time::Duration;

    /// What InnoDB says of the current transaction: its level and whether it
    /// is read-only. `information_schema.innodb_trx` is served from a cache
    /// refreshed at most every 100 ms, which may still show the previous
    /// transaction of this connection: wait it out first.
    async fn innodb_view() -> Result<(String, i64), Error> {
        sqlx::query("SELECT COUNT(*) FROM iso_my_view")
            .execute(&mut *covet_txn::conn::<sqlx::MySql>()?)
            .await?;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(120)).await;
            let row: Option<(String, i64)> = sqlx::query_as(
                "SELECT trx_isolation_level, CAST(trx_is_read_only AS SIGNED) \
                 FROM information_schema.innodb_trx WHERE trx_mysql_thread_id = CONNECTION_ID()",
            )
            .fetch_optional(&mut *covet_txn::conn::<sqlx::MySql>()?)
            .await?;
            if let Some(row) = row {
                return Ok(row);
            }
        }
        Err(Error::InvalidOption(
            "the transaction never showed in innodb_trx".into(),
        ))
    }

    #[tokio::test]
    async fn innodb_reports_the_level_and_access_mode_asked_for() {
        let Some(pool) = covet_txn_tests::mysql(1).await else {
            return;
        };
        let manager = TxManager::new(pool);
        sqlx::raw_sql("CREATE TABLE IF NOT EXISTS iso_my_view (id BIGINT PRIMARY KEY)")
            .execute(manager.pool())
            .await
            .expect("setup");
        for (level, reported) in [
            (Isolation::ReadUncommitted, "READ UNCOMMITTED"),
            (Isolation::ReadCommitted, "READ COMMITTED"),
            (Isolation::RepeatableRead, "REPEATABLE READ"),
            (Isolation::Serializable, "SERIALIZABLE"),
        ] {
            for read_only in [false, true] {
                let options = TxOptions::new().isolation(level).read_only(read_only);
                let (isolation, access) = manager
                    .transaction(options, innodb_view)
                    .await
                    .expect("runs");
                assert_eq!(isolation, reported);
                assert_eq!(
                    access,
                    i64::from(read_only),
                    "{level} read_only={read_only}"
                );
            }
        }
    }

    #[tokio::test]
    async fn read_uncommitted_sees_an_uncommitted_change_and_read_committed_does_not() {
        let Some(pool) = covet_txn_tests::mysql(2).await else {
            return;
        };
        let manager = TxManager::new(pool);
        let setup = "DROP TABLE IF EXISTS iso_my_dirty; CREATE TABLE iso_my_dirty (id BIGINT PRIMARY KEY, v BIGINT NOT NULL); INSERT INTO iso_my_dirty VALUES (1, 0)";
        sqlx::raw_sql(setup)
            .execute(manager.pool())
            .await
            .expect("setup");
        for (level, dirty) in [
            (Isolation::ReadUncommitted, true),
            (Isolation::ReadCommitted, false),
        ] {
            let pool = manager.pool().clone();
            let seen = manager
                .transaction(TxOptions::new().isolation(level), || async move {
                    let mut other = pool.begin().await?;
                    sqlx::query("UPDATE iso_my_dirty SET v = 42 WHERE id = 1")
                        .execute(&mut *other)
                        .await?;
                    let seen: i64 = sqlx::query_scalar("SELECT v FROM iso_my_dirty WHERE id = 1")
                        .fetch_one(&mut *covet_txn::conn::<sqlx::MySql>()?)
                        .await?;
                    other.rollback().await?;
                    Ok::<_, Error>(seen)
                })
                .await
                .expect("runs");
            assert_eq!(seen == 42, dirty, "{level}");
        }
    }

    #[tokio::test]
    async fn read_committed_sees_a_concurrent_commit_and_repeatable_read_does_not() {
        let Some(pool) = covet_txn_tests::mysql(2).await else {
            return;
        };
        let manager = TxManager::new(pool);
        let setup = "DROP TABLE IF EXISTS iso_my_nrr; CREATE TABLE iso_my_nrr (id BIGINT PRIMARY KEY, v BIGINT NOT NULL); INSERT INTO iso_my_nrr VALUES (1, 0)";
        sqlx::raw_sql(setup)
            .execute(manager.pool())
            .await
            .expect("setup");
        let read = "SELECT v FROM iso_my_nrr WHERE id = 1";
        let change = "UPDATE iso_my_nrr SET v = v + 1 WHERE id = 1";
        let (first, second) = read_twice(&manager, Isolation::ReadCommitted, read, change).await;
        assert_eq!(second, first + 1, "read committed: the anomaly happens");
        let (first, second) = read_twice(&manager, Isolation::RepeatableRead, read, change).await;
        assert_eq!(second, first, "repeatable read: it does not");
    }
}

mod sqlite_levels {
    use super::*;
    use sqlx::Connection;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
    use std::time::Duration;

    async fn pragma(name: &'static str) -> Result<i64, Error> {
        let value: i64 = sqlx::query_scalar(name)
            .fetch_one(&mut *covet_txn::conn::<sqlx::Sqlite>()?)
            .await?;
        Ok(value)
    }

    #[tokio::test]
    async fn read_only_and_read_uncommitted_are_pragmas_set_inside_and_restored_after() {
        let Some(pool) = covet_txn_tests::sqlite("iso_sqlite_pragmas", 1).await else {
            return;
        };
        let manager = TxManager::new(pool);
        let options = TxOptions::new()
            .isolation(Isolation::ReadUncommitted)
            .read_only(true);
        let inside = manager
            .transaction(options, || async {
                Ok::<_, Error>((
                    pragma("PRAGMA query_only").await?,
                    pragma("PRAGMA read_uncommitted").await?,
                ))
            })
            .await
            .expect("runs");
        assert_eq!(inside, (1, 1));
        let after = manager
            .transaction(TxOptions::new(), || async {
                Ok::<_, Error>((
                    pragma("PRAGMA query_only").await?,
                    pragma("PRAGMA read_uncommitted").await?,
                ))
            })
            .await
            .expect("runs");
        assert_eq!(after, (0, 0), "the pool's one connection is back to normal");
    }

    /// Whether another connection can take the write lock right now.
    async fn write_lock_free(other: &mut SqliteConnection) -> Result<bool, Error> {
        match sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *other).await {
            Ok(_) => {
                sqlx::raw_sql("ROLLBACK").execute(&mut *other).await?;
                Ok(true)
            }
            Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("5") => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    #[tokio::test]
    async fn a_serializable_writer_takes_the_write_lock_at_begin() {
        let Some(pool) = covet_txn_tests::sqlite("iso_sqlite_immediate", 1).await else {
            return;
        };
        let manager = TxManager::new(pool);
        let path = covet_txn_tests::sqlite_path("iso_sqlite_immediate");
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .busy_timeout(Duration::ZERO);
        let mut other = SqliteConnection::connect_with(&options)
            .await
            .expect("connects");
        let serializable = manager
            .transaction(TxOptions::new().isolation(Isolation::Serializable), || {
                write_lock_free(&mut other)
            })
            .await
            .expect("runs");
        assert!(!serializable, "BEGIN IMMEDIATE holds the write lock");
        let deferred = manager
            .transaction(TxOptions::new(), || write_lock_free(&mut other))
            .await
            .expect("runs");
        assert!(
            deferred,
            "a deferred transaction takes no lock until it writes"
        );
    }
}
