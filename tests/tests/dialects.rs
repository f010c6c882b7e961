//! A dialect of its own for a database that speaks the PostgreSQL protocol
//! with rules of its own: this file and one builder call are all it takes.
//!
//! The dialect here stands for a distributed PostgreSQL-compatible database
//! (CockroachDB, YugabyteDB) that reports a transaction to restart with a
//! SQLSTATE of its own, `CR000`, runs every transaction at SERIALIZABLE, and
//! names itself in spans and metrics.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU32, Ordering};

use covet_txn::dialect::{Begin, BeginRequest, Dialect, SavepointAction, SavepointName};
use covet_txn::postgres::PostgresDialect;
use covet_txn::{Error, FailureKind, Isolation, TxManager, transactional};
use covet_txn_tests::AppError;
use sqlx::Postgres;
use sqlx::error::DatabaseError;

/// Restarts on `CR000`; otherwise PostgreSQL's rules.
struct RestartingPostgres;

impl Dialect<Postgres> for RestartingPostgres {
    fn system(&self) -> &'static str {
        "cockroachish"
    }

    fn default_isolation(&self) -> Isolation {
        Isolation::Serializable
    }

    fn begin(&self, request: &BeginRequest, probed: &[bool]) -> Begin {
        PostgresDialect.begin(request, probed)
    }

    fn savepoint(&self, action: SavepointAction, name: SavepointName<'_>) -> Cow<'static, str> {
        PostgresDialect.savepoint(action, name)
    }

    fn classify(&self, error: &(dyn DatabaseError + 'static)) -> Option<FailureKind> {
        match error.code().as_deref() {
            Some("CR000") => Some(FailureKind::SerializationFailure),
            _ => PostgresDialect.classify(error),
        }
    }
}

const RESTART: &str =
    "DO $$ BEGIN RAISE EXCEPTION 'restart transaction' USING ERRCODE = 'CR000'; END $$";

#[transactional(manager = manager, retry = 2, backoff = "1ms")]
async fn restarted_once(
    manager: &TxManager<Postgres>,
    attempts: &AtomicU32,
) -> Result<u32, AppError> {
    let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
    if attempt == 1 {
        sqlx::raw_sql(RESTART)
            .execute(&mut *manager.conn()?)
            .await?;
    }
    Ok(attempt)
}

#[transactional(manager = manager, isolation = "repeatable_read")]
async fn repeatable_read(manager: &TxManager<Postgres>) -> Result<(), AppError> {
    let _ = manager;
    Ok(())
}

#[transactional(manager = manager)]
async fn outer_at_the_default_level(manager: &TxManager<Postgres>) -> Result<(), AppError> {
    repeatable_read(manager).await
}

#[tokio::test]
async fn a_dialect_of_its_own_decides_what_is_retried_and_what_a_default_transaction_satisfies() {
    let (Some(default_pool), Some(dialect_pool)) = (
        covet_txn_tests::postgres(1).await,
        covet_txn_tests::postgres(1).await,
    ) else {
        return;
    };
    let plain = TxManager::new(default_pool);
    let attempts = AtomicU32::new(0);
    let refused = restarted_once(&plain, &attempts).await;
    assert!(
        matches!(refused, Err(AppError::Db(_))),
        "PostgreSQL does not know CR000: {refused:?}"
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 1);

    let manager = TxManager::builder(dialect_pool)
        .dialect(RestartingPostgres)
        .build();
    let attempts = AtomicU32::new(0);
    let attempt = restarted_once(&manager, &attempts)
        .await
        .expect("the dialect's code is retried");
    assert_eq!(attempt, 2);
    let metrics = manager.metrics();
    assert_eq!(metrics.backend, "cockroachish");
    assert_eq!(
        (metrics.total.retries, metrics.total.serialization_failures),
        (1, 1)
    );

    // Its default level is SERIALIZABLE, which a repeatable-read call joins;
    // PostgreSQL's (read committed) does not satisfy one.
    outer_at_the_default_level(&manager)
        .await
        .expect("nests in a serializable default");
    let refused = outer_at_the_default_level(&plain).await;
    assert!(
        matches!(
            refused,
            Err(AppError::Tx(Error::IsolationMismatch { running: None, .. }))
        ),
        "{refused:?}"
    );
}
