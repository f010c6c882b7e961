//! The closure API accepts what the attribute accepts: `anyhow::Error` and
//! `Box<dyn Error + Send + Sync>` as the body's error type, committing on
//! `Ok`, rolling back on `Err`, and retrying a retryable failure found
//! inside either. Each backend's typed `conn()` needs no annotation and
//! names the backend it found when it is the wrong one.

use std::sync::atomic::Ordering;

use covet_txn::{Error, TxOptions};
use covet_txn_tests::each_backend;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

each_backend! {
    const COLUMNS: &str = "id BIGINT PRIMARY KEY, v BIGINT NOT NULL";

    async fn insert(id: i64) -> Result<(), Error> {
        exec(format!("INSERT INTO closure_api (id, v) VALUES ({id}, 0)")).await
    }

    #[tokio::test]
    async fn anyhow_and_boxed_errors_commit_roll_back_and_retry() {
        let Some(manager) = manager("closure_api", 2).await else { return };
        reset_table(manager.pool(), "closure_api", COLUMNS).await;

        let kept: anyhow::Result<()> = manager
            .transaction(TxOptions::new(), || async {
                insert(1).await?;
                Ok(())
            })
            .await;
        kept.expect("anyhow: commits");
        let dropped: anyhow::Result<()> = manager
            .transaction(TxOptions::new(), || async {
                insert(2).await?;
                anyhow::bail!("refused")
            })
            .await;
        assert_eq!(dropped.map_err(|error| error.to_string()).err().as_deref(), Some("refused"));

        let kept: Result<(), BoxError> = manager
            .transaction(TxOptions::new(), || async {
                insert(3).await?;
                Ok(())
            })
            .await;
        kept.expect("boxed: commits");
        let dropped: Result<(), BoxError> = manager
            .transaction(TxOptions::new(), || async {
                insert(4).await?;
                Err("refused".into())
            })
            .await;
        assert!(dropped.is_err());
        assert_eq!(pool_scalar(manager.pool(), "SELECT COUNT(*) FROM closure_api").await, 2);
        assert_eq!(pool_scalar(manager.pool(), "SELECT COUNT(*) FROM closure_api WHERE id IN (2, 4)").await, 0);

        let fault = FailOnce::arm(&manager, "closure_api_anyhow", "40001").await;
        let retried: anyhow::Result<()> = manager
            .transaction_with_retry(TxOptions::new().retries(2), || async {
                fault.step().await.map_err(|error| anyhow::Error::new(error).context("moving stock"))
            })
            .await;
        retried.expect("anyhow: retried after the failure found under its context");
        assert_eq!(fault.attempts.load(Ordering::SeqCst), 2);

        let fault = FailOnce::arm(&manager, "closure_api_boxed", "40001").await;
        let retried: Result<(), BoxError> = manager
            .transaction_with_retry(TxOptions::new().retries(2), || async {
                fault.step().await.map_err(BoxError::from)
            })
            .await;
        retried.expect("boxed: retried");
        assert_eq!(fault.attempts.load(Ordering::SeqCst), 2);
    }
}

async fn sqlite_manager(test: &str) -> covet_txn::TxManager<sqlx::Sqlite> {
    let pool = covet_txn_tests::sqlite(test, 1)
        .await
        .expect("SQLite opens");
    covet_txn::TxManager::new(pool)
}

#[tokio::test]
async fn typed_conn_needs_no_annotation_and_names_the_backend_it_found() {
    let manager = sqlite_manager("typed_conn").await;
    let result = manager
        .transaction(TxOptions::new(), || async {
            let one: i64 = sqlx::query_scalar("SELECT 1")
                .fetch_one(&mut *covet_txn::sqlite::conn()?)
                .await?;
            assert_eq!(one, 1);
            let elsewhere = covet_txn::postgres::conn().map(drop);
            assert!(
                matches!(
                    elsewhere,
                    Err(Error::WrongBackend {
                        requested: "postgresql",
                        running: "sqlite"
                    })
                ),
                "{elsewhere:?}"
            );
            assert!(matches!(
                covet_txn::mysql::conn().map(drop),
                Err(Error::WrongBackend { .. })
            ));
            Ok::<_, Error>(())
        })
        .await;
    result.expect("runs");
    assert!(matches!(
        covet_txn::sqlite::conn().map(drop),
        Err(Error::NoTransaction)
    ));
}

#[tokio::test]
async fn typed_conn_on_the_servers() {
    if let Some(pool) = covet_txn_tests::postgres(1).await {
        let manager = covet_txn::TxManager::new(pool);
        let level: String = manager
            .transaction(
                TxOptions::new().isolation(covet_txn::Isolation::Serializable),
                || async {
                    let level = sqlx::query_scalar("SHOW transaction_isolation")
                        .fetch_one(&mut *covet_txn::postgres::conn()?)
                        .await?;
                    Ok::<_, Error>(level)
                },
            )
            .await
            .expect("runs");
        assert_eq!(level, "serializable");
    }
    if let Some(pool) = covet_txn_tests::mysql(1).await {
        let manager = covet_txn::TxManager::new(pool);
        // The session variable shows the next transaction's level, not
        // this one's (isolation.rs reads InnoDB's view): a plain query is
        // enough here.
        let one: i64 = manager
            .transaction(TxOptions::new(), || async {
                let one = sqlx::query_scalar("SELECT 1")
                    .fetch_one(&mut *covet_txn::mysql::conn()?)
                    .await?;
                Ok::<_, Error>(one)
            })
            .await
            .expect("runs");
        assert_eq!(one, 1);
    }
}
