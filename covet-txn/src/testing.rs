//! Tests that never leave data behind: a test body runs in a transaction
//! that always rolls back, with every `#[transactional]` call inside it
//! nesting in it as a savepoint (Spring's test transactions, Django's
//! `TestCase`, Diesel's `begin_test_transaction`).
//!
//! Inside a test transaction `requires_new` and `not_supported` calls are
//! errors ([`Error::EscapesTestTransaction`]): they would write outside it,
//! and their work would outlive the test. `durable` calls nest, as Django's
//! do in a `TestCase`.

use std::future::Future;

use crate::call::attempts::run_once;
use crate::defaults;
use crate::engine::{Backend, EngineHandle};
use crate::error::Error;
use crate::manager::TxManager;
use crate::request::TxOptions;

const TEST_TRANSACTION: TxOptions = TxOptions {
    test: true,
    ..TxOptions::new().name("test transaction")
};

impl<DB: Backend> TxManager<DB> {
    /// Runs `body` in a transaction that always rolls back, with this
    /// manager as the task's default, and returns what `body` returned.
    /// Every `#[transactional]` call inside nests in the transaction. Fails
    /// only if the transaction could not begin (or roll back); a panic in
    /// `body` rolls back and resumes.
    ///
    /// ```
    /// # async fn demo() -> Result<(), covet_txn::Error> {
    /// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
    /// sqlx::raw_sql("CREATE TABLE orders (id INTEGER PRIMARY KEY)").execute(&pool).await?;
    /// let manager = covet_txn::TxManager::new(pool);
    /// let seen = manager
    ///     .test_transaction(async {
    ///         sqlx::raw_sql("INSERT INTO orders VALUES (1)")
    ///             .execute(&mut *covet_txn::sqlite::conn()?)
    ///             .await?;
    ///         let count: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
    ///             .fetch_one(&mut *covet_txn::sqlite::conn()?)
    ///             .await?;
    ///         Ok::<_, covet_txn::Error>(count)
    ///     })
    ///     .await?;
    /// assert_eq!(seen?, 1);
    /// let left: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
    ///     .fetch_one(manager.pool())
    ///     .await?;
    /// assert_eq!(left, 0, "the test left nothing behind");
    /// # Ok(()) }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn test_transaction<T, Fut>(&self, body: Fut) -> Result<T, Error>
    where
        Fut: Future<Output = T>,
    {
        in_test_transaction(self.handle(), body).await
    }
}

/// Runs `body` in a test transaction of `engine`, as its task's default.
pub(crate) async fn in_test_transaction<T, Fut>(engine: EngineHandle, body: Fut) -> Result<T, Error>
where
    Fut: Future<Output = T>,
{
    let run = run_once(
        Some(engine.clone()),
        TEST_TRANSACTION.into(),
        |error: &Error| Some(error),
        async move { Ok(body.await) },
    );
    defaults::scope(engine, run).await
}

/// Runs `body` in a test transaction of the default manager.
pub(crate) async fn in_default_test_transaction<T, Fut>(body: Fut) -> Result<T, Error>
where
    Fut: Future<Output = T>,
{
    in_test_transaction(defaults::resolve(None)?, body).await
}
