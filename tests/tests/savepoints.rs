//! Savepoints by hand: create, roll back to, release; names checked before
//! they reach SQL.

use covet_txn::{Error, transactional};
use covet_txn_tests::{AppError, each_backend};

each_backend! {
    const COLUMNS: &str = "id BIGINT PRIMARY KEY, v BIGINT NOT NULL";

    async fn insert(table: &str, id: i64) -> Result<(), AppError> {
        exec(format!("INSERT INTO {table} (id, v) VALUES ({id}, 0)")).await?;
        Ok(())
    }

    #[transactional]
    async fn import(table: &str) -> Result<(), AppError> {
        insert(table, 1).await?;
        let before_batch = covet_txn::named_savepoint("before_batch").await?;
        insert(table, 2).await?;
        before_batch.rollback_to().await?;
        insert(table, 3).await?;
        before_batch.rollback_to().await?;
        insert(table, 4).await?;
        before_batch.release().await?;

        let generated = covet_txn::savepoint().await?;
        assert!(generated.name().starts_with("covet_usp_"), "{}", generated.name());
        insert(table, 5).await?;
        generated.rollback().await?;

        let kept = covet_txn::savepoint().await?;
        insert(table, 6).await?;
        kept.release().await?;
        Ok(())
    }

    #[tokio::test]
    async fn rolling_back_to_a_savepoint_undoes_only_what_came_after_it() {
        let Some(manager) = manager("sp_manual", 1).await else { return };
        reset_table(manager.pool(), "sp_manual", COLUMNS).await;
        manager.scope(import("sp_manual")).await.expect("commits");
        let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM sp_manual ORDER BY id")
            .fetch_all(manager.pool())
            .await
            .expect("reads");
        assert_eq!(ids, [1, 4, 6]);
    }

    #[transactional]
    async fn bad_names() -> Result<(), AppError> {
        for name in ["x; DROP TABLE t", "1st", "covet_sp_1", "", "a b"] {
            let refused = covet_txn::named_savepoint(name).await;
            assert!(
                matches!(&refused, Err(Error::InvalidSavepointName(given)) if given == name),
                "{name}: {refused:?}"
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn savepoint_names_that_are_not_plain_identifiers_are_refused() {
        let Some(manager) = manager("sp_names", 1).await else { return };
        manager.scope(bad_names()).await.expect("commits");
    }

    #[transactional]
    async fn create_in_nested_scope() -> Result<covet_txn::Savepoint, AppError> {
        Ok(covet_txn::named_savepoint("inner_mark").await?)
    }

    #[transactional]
    async fn use_after_its_scope_ended() -> Result<(), AppError> {
        let stale = create_in_nested_scope().await?;
        let refused = stale.rollback_to().await;
        assert!(matches!(refused, Err(Error::ForeignSavepoint(ref name)) if name == "inner_mark"), "{refused:?}");
        Ok(())
    }

    #[tokio::test]
    async fn a_savepoint_cannot_be_used_after_its_scope_ended() {
        let Some(manager) = manager("sp_stale", 1).await else { return };
        manager.scope(use_after_its_scope_ended()).await.expect("commits");
        let outside = covet_txn::savepoint().await;
        assert!(matches!(outside, Err(Error::NoTransaction)), "{outside:?}");
    }
}
