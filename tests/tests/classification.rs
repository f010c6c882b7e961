//! Classification: a retryable database failure is found, retried and
//! counted whatever error type carries it — `#[error(transparent)]`
//! variants, `anyhow` with context, boxed errors, a database error two
//! wrappers down, and a bare `DatabaseError` without sqlx's wrapper.
//!
//! Each failure is a real one: PostgreSQL raises 40001 or 40P01, MariaDB
//! signals 1213, and SQLite reports `SQLITE_BUSY` because another
//! connection holds the write lock.

use std::error::Error as StdError;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use covet_txn::{FailureKind, FunctionMetrics, transactional};
use covet_txn_tests::each_backend;
use sqlx::error::DatabaseError;

/// The shape most services use: every variant transparent.
#[derive(Debug, thiserror::Error)]
enum Transparent {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Txn(#[from] covet_txn::Error),
}

/// A service error whose database error sits two wrappers down.
#[derive(Debug, thiserror::Error)]
enum ServiceError {
    #[error("the repository failed")]
    Repository(#[source] RepositoryError),
    #[error(transparent)]
    Txn(#[from] covet_txn::Error),
}

#[derive(Debug, thiserror::Error)]
#[error("a query failed")]
struct RepositoryError(#[source] sqlx::Error);

/// An error that keeps the driver's `DatabaseError` without sqlx's wrapper.
#[derive(Debug)]
enum BareDatabase {
    Database(Box<dyn DatabaseError>),
    Txn(covet_txn::Error),
}

impl std::fmt::Display for BareDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the database refused")
    }
}

impl StdError for BareDatabase {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            BareDatabase::Database(database) => Some(database.as_error()),
            BareDatabase::Txn(error) => Some(error),
        }
    }
}

impl From<covet_txn::Error> for BareDatabase {
    fn from(error: covet_txn::Error) -> Self {
        BareDatabase::Txn(error)
    }
}

fn bare(error: sqlx::Error) -> BareDatabase {
    match error.into_database_error() {
        Some(database) => BareDatabase::Database(database),
        None => panic!("the forced failure is a database error"),
    }
}

fn counted(metrics: &FunctionMetrics, kind: FailureKind) -> u64 {
    match kind {
        FailureKind::SerializationFailure => metrics.serialization_failures,
        FailureKind::Deadlock => metrics.deadlocks,
        FailureKind::Busy => metrics.busy,
        other => panic!("no forced failure of kind {other}"),
    }
}

each_backend! {
    #[transactional(retry = 2, backoff = "1ms")]
    async fn transparent(fault: &FailOnce) -> Result<(), Transparent> {
        fault.step().await?;
        Ok(())
    }

    #[transactional(retry = 2, backoff = "1ms")]
    async fn anyhow_with_context(fault: &FailOnce) -> anyhow::Result<()> {
        fault.step().await.context("charging the card")?;
        Ok(())
    }

    #[transactional(retry = 2, backoff = "1ms")]
    async fn boxed(fault: &FailOnce) -> Result<(), Box<dyn StdError + Send + Sync>> {
        fault.step().await?;
        Ok(())
    }

    #[transactional(retry = 2, backoff = "1ms")]
    async fn two_levels_down(fault: &FailOnce) -> Result<(), ServiceError> {
        fault.step().await.map_err(|error| ServiceError::Repository(RepositoryError(error)))?;
        Ok(())
    }

    #[transactional(retry = 2, backoff = "1ms")]
    async fn bare_database_error(fault: &FailOnce) -> Result<(), BareDatabase> {
        fault.step().await.map_err(bare)?;
        Ok(())
    }

    /// A call of one error shape, with its error as text.
    type Shape = fn(&FailOnce) -> futures_util::future::BoxFuture<'_, Result<(), String>>;

    /// Runs each error shape once against a fresh failure, and checks that
    /// the call was retried once, committed, and counted its failure kind.
    async fn every_shape_is_retried_and_counted(test: &str, code: &'static str) {
        let Some(manager) = manager(test, 2).await else { return };
        let shapes: [(&str, Shape); 5] = [
            ("transparent", |fault| Box::pin(async move { transparent(fault).await.map_err(|e| e.to_string()) })),
            ("anyhow_with_context", |fault| Box::pin(async move { anyhow_with_context(fault).await.map_err(|e| format!("{e:#}")) })),
            ("boxed", |fault| Box::pin(async move { boxed(fault).await.map_err(|e| e.to_string()) })),
            ("two_levels_down", |fault| Box::pin(async move { two_levels_down(fault).await.map_err(|e| e.to_string()) })),
            ("bare_database_error", |fault| Box::pin(async move { bare_database_error(fault).await.map_err(|e| e.to_string()) })),
        ];
        for (shape, call) in shapes {
            let fault = FailOnce::arm(&manager, test, code).await;
            let result = manager.scope(call(&fault)).await;
            assert_eq!(result, Ok(()), "{BACKEND} {code} {shape}: the failure was not retried");
            assert_eq!(fault.attempts.load(Ordering::SeqCst), 2, "{BACKEND} {shape}: one retry");
            let snapshot = manager.metrics();
            let Some(metrics) = snapshot.functions.iter().find(|f| f.function.ends_with(&format!("::{shape}"))) else {
                panic!("{BACKEND} {shape}: no metrics in {:?}", snapshot.functions);
            };
            assert_eq!(metrics.retries, 1, "{BACKEND} {code} {shape}: retries counted");
            assert_eq!(counted(metrics, fault.kind()), 1, "{BACKEND} {code} {shape}: {} counted", fault.kind());
            assert_eq!(metrics.committed, 1, "{BACKEND} {shape}: committed once");
            let value = pool_scalar(manager.pool(), format!("SELECT v FROM {test} WHERE id = 1")).await;
            assert_eq!(value, 1, "{BACKEND} {shape}: the second attempt's work, once");
        }
    }

    #[tokio::test]
    async fn a_retryable_failure_is_retried_and_counted_whatever_wraps_it() {
        // PostgreSQL: a serialization failure and a deadlock; the other
        // servers have one forced failure each.
        let codes: &[&'static str] = if BACKEND == "postgresql" { &["40001", "40P01"] } else { &["-"] };
        for code in codes {
            let test = format!("classify_{BACKEND}_{}", code.replace('-', "x"));
            every_shape_is_retried_and_counted(&test, code).await;
        }
    }
}
