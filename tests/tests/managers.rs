//! Managers: several databases in one process, explicit managers in the
//! attribute, the task-scoped default, and the error when there is none.

use std::sync::{Arc, LazyLock};

use covet_txn::{Error, TxManager, transactional};
use covet_txn_tests::AppError;
use sqlx::{Postgres, Sqlite};

#[transactional]
async fn needs_a_default() -> Result<(), AppError> {
    Ok(())
}

#[tokio::test]
async fn without_any_manager_a_call_is_a_clear_error() {
    let result = needs_a_default().await;
    assert!(
        matches!(result, Err(AppError::Tx(Error::NoDefaultManager))),
        "{result:?}"
    );
    let message = Error::NoDefaultManager.to_string();
    assert!(message.contains("install_default"), "{message}");
}

struct Repository {
    orders: TxManager<Sqlite>,
}

impl Repository {
    #[transactional(manager = self.orders)]
    async fn count_orders(&self) -> Result<i64, AppError> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders")
            .fetch_one(&mut *covet_txn::conn::<Sqlite>()?)
            .await?;
        Ok(count)
    }

    #[transactional(manager = &self.orders, name = "repository.add_order")]
    async fn add_order(&mut self, id: i64) -> Result<&'static str, AppError> {
        sqlx::query("INSERT INTO orders (id) VALUES (?)")
            .bind(id)
            .execute(&mut *covet_txn::conn::<Sqlite>()?)
            .await?;
        Ok(covet_txn::current().map_or("", |info| info.name))
    }
}

#[tokio::test]
async fn a_method_names_its_manager_through_self() {
    let Some(pool) = covet_txn_tests::sqlite("managers_self", 2).await else {
        return;
    };
    sqlx::raw_sql("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        .execute(&pool)
        .await
        .expect("setup");
    let mut repository = Repository {
        orders: TxManager::new(pool),
    };
    assert_eq!(
        repository.add_order(1).await.expect("commits"),
        "repository.add_order"
    );
    assert_eq!(repository.count_orders().await.expect("reads"), 1);
}

#[transactional(manager = LEDGER)]
async fn ledger_entries() -> Result<i64, AppError> {
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ledger")
        .fetch_one(&mut *covet_txn::conn::<Sqlite>()?)
        .await?;
    Ok(count)
}

static LEDGER: LazyLock<TxManager<Sqlite>> = LazyLock::new(|| {
    let path = covet_txn_tests::sqlite_path("managers_static");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true);
    TxManager::builder(sqlx::SqlitePool::connect_lazy_with(options))
        .name("ledger")
        .build()
});

#[tokio::test]
async fn a_static_manager_is_named_by_path() {
    let _ = std::fs::remove_file(covet_txn_tests::sqlite_path("managers_static"));
    sqlx::raw_sql("CREATE TABLE ledger (id INTEGER PRIMARY KEY); INSERT INTO ledger VALUES (1)")
        .execute(LEDGER.pool())
        .await
        .expect("setup");
    assert_eq!(ledger_entries().await.expect("reads"), 1);
    assert_eq!(LEDGER.name(), "ledger");
}

#[transactional(manager = archive)]
async fn archive_insert(archive: Arc<TxManager<Sqlite>>, id: i64) -> Result<(), AppError> {
    let visible_in_postgres = covet_txn::conn::<Postgres>().is_ok();
    assert!(
        visible_in_postgres,
        "the outer PostgreSQL transaction is still reachable"
    );
    sqlx::query("INSERT INTO archive (id) VALUES (?)")
        .bind(id)
        .execute(&mut *covet_txn::conn::<Sqlite>()?)
        .await?;
    Ok(())
}

#[transactional]
async fn move_to_archive(archive: Arc<TxManager<Sqlite>>, id: i64) -> Result<(), AppError> {
    sqlx::query("DELETE FROM managers_live WHERE id = $1")
        .bind(id)
        .execute(&mut *covet_txn::conn::<Postgres>()?)
        .await?;
    archive_insert(archive, id).await?;
    let wrong = covet_txn::conn::<sqlx::MySql>();
    assert!(
        matches!(
            wrong,
            Err(Error::WrongBackend {
                requested: "mysql",
                running: "postgresql"
            })
        ),
        "{wrong:?}"
    );
    Err(AppError::Refused("roll back the PostgreSQL side"))
}

#[tokio::test]
async fn two_databases_in_one_process_each_get_their_own_transaction() {
    let Some(pg) = covet_txn_tests::postgres(2).await else {
        return;
    };
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS managers_live; CREATE TABLE managers_live (id BIGINT PRIMARY KEY); \
         INSERT INTO managers_live VALUES (7)",
    )
    .execute(&pg)
    .await
    .expect("setup");
    let Some(lite) = covet_txn_tests::sqlite("managers_two", 1).await else {
        return;
    };
    sqlx::raw_sql("CREATE TABLE archive (id INTEGER PRIMARY KEY)")
        .execute(&lite)
        .await
        .expect("setup");
    let archive = Arc::new(TxManager::new(lite));
    let pg_manager = TxManager::new(pg);

    let result = pg_manager
        .scope(move_to_archive(Arc::clone(&archive), 7))
        .await;
    assert!(matches!(result, Err(AppError::Refused(_))), "{result:?}");

    let live: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM managers_live")
        .fetch_one(pg_manager.pool())
        .await
        .expect("reads");
    let archived: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM archive")
        .fetch_one(archive.pool())
        .await
        .expect("reads");
    assert_eq!(
        (live, archived),
        (1, 1),
        "PostgreSQL rolled back; SQLite committed on its own"
    );
}

#[transactional]
async fn depth_here() -> Result<u32, AppError> {
    Ok(covet_txn::current().map_or(0, |info| info.depth))
}

#[transactional(manager = other)]
async fn depth_on(other: &TxManager<Sqlite>) -> Result<u32, AppError> {
    depth_here().await
}

#[tokio::test]
async fn a_call_without_manager_joins_the_manager_of_the_running_transaction() {
    let Some(pool) = covet_txn_tests::sqlite("managers_inherit", 1).await else {
        return;
    };
    let manager = TxManager::new(pool);
    assert_eq!(
        depth_on(&manager).await.expect("runs"),
        2,
        "nested in a savepoint"
    );
}

#[tokio::test]
async fn a_scoped_default_wins_over_the_running_transactions_manager() {
    let Some(first) = covet_txn_tests::sqlite("managers_scoped_a", 1).await else {
        return;
    };
    let Some(second) = covet_txn_tests::sqlite("managers_scoped_b", 1).await else {
        return;
    };
    let first = TxManager::new(first);
    let second = TxManager::new(second);
    let depth = second.scope(depth_on(&first)).await.expect("runs");
    assert_eq!(depth, 1, "the scoped default begins its own transaction");
}

#[transactional(manager = archive)]
async fn where_sqlite_runs(
    archive: &TxManager<Sqlite>,
) -> Result<(covet_txn::TxId, u32), AppError> {
    let info = covet_txn::current().ok_or(AppError::Refused("no transaction"))?;
    Ok((info.id, info.depth))
}

#[transactional(manager = pg)]
async fn nested_on_postgres(
    pg: &TxManager<Postgres>,
    archive: &TxManager<Sqlite>,
) -> Result<(covet_txn::TxId, u32), AppError> {
    where_sqlite_runs(archive).await
}

#[transactional(manager = archive)]
async fn sqlite_inside_postgres(
    archive: &TxManager<Sqlite>,
    pg: &TxManager<Postgres>,
) -> Result<(covet_txn::TxId, (covet_txn::TxId, u32)), AppError> {
    let own = covet_txn::current().ok_or(AppError::Refused("no transaction"))?;
    Ok((own.id, nested_on_postgres(pg, archive).await?))
}

#[transactional(manager = pg)]
async fn interleaved_managers(
    pg: &TxManager<Postgres>,
    archive: &TxManager<Sqlite>,
) -> Result<(covet_txn::TxId, (covet_txn::TxId, u32)), AppError> {
    sqlite_inside_postgres(archive, pg).await
}

#[tokio::test]
async fn a_scope_nested_across_managers_still_sees_every_managers_transaction() {
    let Some(pg) = covet_txn_tests::postgres(1).await else {
        return;
    };
    let Some(lite) = covet_txn_tests::sqlite("managers_interleaved", 1).await else {
        return;
    };
    let (pg, archive) = (TxManager::new(pg), TxManager::new(lite));
    // PostgreSQL, then SQLite, then a PostgreSQL savepoint, then SQLite
    // again: the last call must nest in the SQLite transaction already open
    // (on a pool of one, opening another would wait for ever).
    let run = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        interleaved_managers(&pg, &archive),
    )
    .await
    .expect("no wait for a second SQLite connection");
    let (sqlite_root, (innermost, depth)) = run.expect("commits");
    assert_eq!(innermost, sqlite_root, "the same SQLite transaction");
    assert_eq!(depth, 2, "in a savepoint of it");
}
