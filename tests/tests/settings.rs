//! Session settings: what a transaction changes on its connection for its
//! own sake (MariaDB's lock-wait and statement timeouts for a `timeout`,
//! SQLite's `query_only` and `read_uncommitted` pragmas) is put back to the
//! value the connection had before, not to the server's default, after a
//! commit, an error, a timeout and a cancellation.

use std::time::Duration;

use covet_txn::{Error, TxManager, transactional};
use covet_txn_tests::AppError;
use sqlx::pool::PoolOptions;
use sqlx::{Executor, MySql, Sqlite};

/// How each call ends.
#[derive(Debug, Clone, Copy)]
enum Ending {
    Commit,
    Error,
    Timeout,
    Cancel,
}

const ENDINGS: [Ending; 4] = [
    Ending::Commit,
    Ending::Error,
    Ending::Timeout,
    Ending::Cancel,
];

/// Runs `call` to its end as `ending` says: a cancelled call is dropped while
/// its body waits.
async fn end_as<F: std::future::Future<Output = Result<(), AppError>>>(ending: Ending, call: F) {
    match ending {
        Ending::Cancel => {
            let cut = tokio::time::timeout(Duration::from_millis(100), call).await;
            assert!(cut.is_err(), "the call was cancelled mid-body: {cut:?}");
        }
        Ending::Commit => call.await.expect("commits"),
        Ending::Error => {
            let result = call.await;
            assert!(matches!(result, Err(AppError::Refused(_))), "{result:?}");
        }
        Ending::Timeout => {
            let result = call.await;
            assert!(
                matches!(result, Err(AppError::Tx(Error::Timeout { .. }))),
                "{result:?}"
            );
        }
    }
}

/// What the body does after checking the settings it runs with.
async fn body_for(ending: Ending) -> Result<(), AppError> {
    match ending {
        Ending::Commit => Ok(()),
        Ending::Error => Err(AppError::Refused("the body failed")),
        Ending::Timeout | Ending::Cancel => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok(())
        }
    }
}

mod mariadb {
    use super::*;

    /// The pool's own timeouts, unlike the server's defaults (50 s, none).
    async fn manager() -> Option<TxManager<MySql>> {
        let pool = PoolOptions::<MySql>::new()
            .max_connections(1)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("SET SESSION innodb_lock_wait_timeout = 5, max_statement_time = 2")
                        .await
                        .map(drop)
                })
            })
            .connect_with(covet_txn_tests::mysql_options())
            .await;
        match pool {
            Ok(pool) => Some(TxManager::new(pool)),
            Err(error) => {
                assert!(
                    !covet_txn_tests::backends_required(),
                    "MariaDB is unreachable: {error}"
                );
                None
            }
        }
    }

    async fn timeouts(conn: &mut sqlx::MySqlConnection) -> (i64, f64) {
        sqlx::query_as("SELECT CAST(@@SESSION.innodb_lock_wait_timeout AS SIGNED), CAST(@@SESSION.max_statement_time AS DOUBLE)")
            .fetch_one(conn)
            .await
            .expect("reads the session's timeouts")
    }

    #[transactional(manager = manager, timeout = "1s")]
    async fn bounded(manager: &TxManager<MySql>, ending: Ending) -> Result<(), AppError> {
        let (lock_wait, statement) = timeouts(&mut *manager.conn()?).await;
        assert_eq!(
            lock_wait, 2,
            "the deadline bounds lock waits (whole seconds, plus the grace)"
        );
        assert!(
            statement > 0.9 && statement <= 1.2,
            "the deadline bounds statements: {statement}"
        );
        body_for(ending).await
    }

    #[tokio::test]
    async fn the_pool_s_own_timeouts_come_back_after_every_ending() {
        let Some(manager) = manager().await else {
            return;
        };
        for ending in ENDINGS {
            end_as(ending, bounded(&manager, ending)).await;
            let mut conn = manager
                .pool()
                .acquire()
                .await
                .expect("the connection comes back");
            assert_eq!(timeouts(&mut conn).await, (5, 2.0), "after {ending:?}");
        }
    }
}

mod sqlite {
    use super::*;

    /// A pool whose connections run `pragma` = ON from the start.
    async fn manager(test: &str, pragma: &'static str) -> TxManager<Sqlite> {
        let Some(seed) = covet_txn_tests::sqlite(test, 1).await else {
            panic!("SQLite is embedded");
        };
        sqlx::raw_sql("CREATE TABLE t (id INTEGER PRIMARY KEY)")
            .execute(&seed)
            .await
            .expect("creates");
        seed.close().await;
        let pool = PoolOptions::<Sqlite>::new()
            .max_connections(1)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    conn.execute(sqlx::AssertSqlSafe(format!("PRAGMA {pragma} = ON")))
                        .await
                        .map(drop)
                })
            })
            .connect_with(
                sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(covet_txn_tests::sqlite_path(test)),
            )
            .await
            .expect("opens");
        TxManager::new(pool)
    }

    async fn pragma(conn: &mut sqlx::SqliteConnection, name: &str) -> bool {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT {name} FROM pragma_{name}()"
        )))
        .fetch_one(conn)
        .await
        .expect("reads the pragma")
    }

    #[transactional(manager = manager, read_only, timeout = "1s")]
    async fn read_only(manager: &TxManager<Sqlite>, ending: Ending) -> Result<(), AppError> {
        assert!(pragma(&mut *manager.conn()?, "query_only").await);
        body_for(ending).await
    }

    #[tokio::test]
    async fn a_read_only_pool_stays_read_only_after_every_ending() {
        let manager = manager("settings_query_only", "query_only").await;
        for ending in ENDINGS {
            end_as(ending, read_only(&manager, ending)).await;
            let mut conn = manager
                .pool()
                .acquire()
                .await
                .expect("the connection comes back");
            assert!(
                pragma(&mut conn, "query_only").await,
                "query_only is still ON after {ending:?}"
            );
            let write = sqlx::raw_sql("INSERT INTO t (id) VALUES (1)")
                .execute(&mut *conn)
                .await;
            assert!(
                write.is_err(),
                "the pool still refuses writes after {ending:?}"
            );
        }
    }

    #[transactional(manager = manager, isolation = "read_uncommitted", timeout = "1s")]
    async fn dirty_reader(manager: &TxManager<Sqlite>, ending: Ending) -> Result<(), AppError> {
        assert!(pragma(&mut *manager.conn()?, "read_uncommitted").await);
        body_for(ending).await
    }

    #[tokio::test]
    async fn a_read_uncommitted_pool_keeps_its_setting_after_every_ending() {
        let manager = manager("settings_read_uncommitted", "read_uncommitted").await;
        for ending in ENDINGS {
            end_as(ending, dirty_reader(&manager, ending)).await;
            let mut conn = manager
                .pool()
                .acquire()
                .await
                .expect("the connection comes back");
            assert!(
                pragma(&mut conn, "read_uncommitted").await,
                "read_uncommitted is still ON after {ending:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_pool_without_the_pragmas_gets_them_switched_back_off() {
        let Some(pool) = covet_txn_tests::sqlite("settings_default", 1).await else {
            return;
        };
        let manager = TxManager::new(pool);
        for ending in ENDINGS {
            end_as(ending, read_only(&manager, ending)).await;
            end_as(ending, dirty_reader(&manager, ending)).await;
            let mut conn = manager
                .pool()
                .acquire()
                .await
                .expect("the connection comes back");
            assert!(
                !pragma(&mut conn, "query_only").await,
                "query_only is OFF again after {ending:?}"
            );
            assert!(
                !pragma(&mut conn, "read_uncommitted").await,
                "read_uncommitted is OFF again after {ending:?}"
            );
        }
    }
}
