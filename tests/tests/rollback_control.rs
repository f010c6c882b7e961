//! Rollback rules and control, on the real servers: `commit_on` keeps the
//! work of an expected refusal (attribute and closure API, at the root, in a
//! savepoint, joined, with retry), and `set_rollback_only` rolls back the
//! scope that asked, silently where it began the transaction or savepoint
//! and loudly where it only joined one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use covet_txn::{Error, RollbackOnlyCause, TxOptions, transactional};
use covet_txn_tests::{AppError, each_backend};

const COLUMNS: &str = "id BIGINT PRIMARY KEY, note VARCHAR(40) NOT NULL";

fn is_refusal(error: &AppError) -> bool {
    matches!(error, AppError::Refused(_))
}

/// Counts the hooks a transaction ran.
#[derive(Default)]
struct Hooks {
    committed: AtomicU32,
    rolled_back: AtomicU32,
}

impl Hooks {
    async fn register(self: &Arc<Self>) {
        let on_commit = Arc::clone(self);
        let on_rollback = Arc::clone(self);
        covet_txn::on_commit(move || async move {
            on_commit.committed.fetch_add(1, Ordering::SeqCst);
        })
        .await;
        covet_txn::on_rollback(move || async move {
            on_rollback.rolled_back.fetch_add(1, Ordering::SeqCst);
        })
        .await;
    }

    fn counts(&self) -> (u32, u32) {
        (
            self.committed.load(Ordering::SeqCst),
            self.rolled_back.load(Ordering::SeqCst),
        )
    }
}

each_backend! {
    async fn insert(table: &str, id: i64, note: &str) -> Result<(), AppError> {
        exec(format!("INSERT INTO {table} (id, note) VALUES ({id}, '{note}')")).await?;
        Ok(())
    }

    /// Writes an audit row, then refuses or fails as asked.
    #[transactional(commit_on = is_refusal, retry = 3)]
    async fn audited(hooks: Arc<Hooks>, attempts: &AtomicU32, outcome: &'static str) -> Result<(), AppError> {
        attempts.fetch_add(1, Ordering::SeqCst);
        hooks.register().await;
        insert("commit_on", 1, outcome).await?;
        match outcome {
            "refused" => Err(AppError::Refused("over the limit")),
            "failed" => Err(AppError::Db(sqlx::Error::RowNotFound)),
            _ => Ok(()),
        }
    }

    #[tokio::test]
    async fn commit_on_keeps_the_work_of_a_refusal_and_returns_the_refusal() {
        let Some(manager) = manager("commit_on", 2).await else { return };
        for (outcome, kept) in [("refused", 1), ("failed", 0), ("ok", 1)] {
            reset_table(manager.pool(), "commit_on", COLUMNS).await;
            let hooks = Arc::new(Hooks::default());
            let attempts = AtomicU32::new(0);
            let result = manager.scope(audited(Arc::clone(&hooks), &attempts, outcome)).await;
            match outcome {
                "refused" => assert!(matches!(result, Err(AppError::Refused(_))), "{result:?}"),
                "failed" => assert!(matches!(result, Err(AppError::Db(_))), "{result:?}"),
                _ => assert!(result.is_ok(), "{result:?}"),
            }
            assert_eq!(attempts.load(Ordering::SeqCst), 1, "{outcome}: a kept refusal is not retried");
            assert_eq!(pool_scalar(manager.pool(), "SELECT COUNT(*) FROM commit_on").await, kept, "{outcome}");
            let expected_hooks = if kept == 1 { (1, 0) } else { (0, 1) };
            assert_eq!(hooks.counts(), expected_hooks, "{outcome}: hooks follow the outcome");
        }
    }

    #[tokio::test]
    async fn commit_on_in_the_closure_api_in_a_savepoint_and_joined() {
        let Some(manager) = manager("commit_on_nested", 2).await else { return };
        reset_table(manager.pool(), "commit_on_nested", COLUMNS).await;
        let keep_refusals = TxOptions::new().commit_on(is_refusal);
        let outer = manager
            .transaction(TxOptions::new(), || async {
                insert("commit_on_nested", 1, "outer").await?;
                for (id, propagation) in [(2, covet_txn::Propagation::Nested), (3, covet_txn::Propagation::Required)] {
                    let refused = manager
                        .transaction(TxOptions::new().propagation(propagation).commit_on(is_refusal), || async {
                            insert("commit_on_nested", id, "kept").await?;
                            Err::<(), _>(AppError::Refused("no"))
                        })
                        .await;
                    assert!(matches!(refused, Err(AppError::Refused(_))), "{propagation:?}: {refused:?}");
                    assert!(!covet_txn::is_rollback_only(), "{propagation:?}: a kept refusal does not doom the transaction");
                }
                // Without the predicate, the same refusal in a savepoint
                // rolls the savepoint back.
                let dropped = manager
                    .transaction(TxOptions::new().propagation(covet_txn::Propagation::Nested), || async {
                        insert("commit_on_nested", 4, "dropped").await?;
                        Err::<(), _>(AppError::Refused("no"))
                    })
                    .await;
                assert!(dropped.is_err());
                Ok::<_, AppError>(())
            })
            .await;
        outer.expect("the outer transaction commits");
        assert_eq!(pool_scalar(manager.pool(), "SELECT COUNT(*) FROM commit_on_nested").await, 3);
        assert_eq!(pool_scalar(manager.pool(), "SELECT COUNT(*) FROM commit_on_nested WHERE id = 4").await, 0);

        reset_table(manager.pool(), "commit_on_nested", COLUMNS).await;
        let root = manager
            .transaction(keep_refusals, || async {
                insert("commit_on_nested", 1, "root").await?;
                Err::<(), _>(AppError::Refused("no"))
            })
            .await;
        assert!(matches!(root, Err(AppError::Refused(_))), "{root:?}");
        assert_eq!(pool_scalar(manager.pool(), "SELECT COUNT(*) FROM commit_on_nested").await, 1);
    }

    #[transactional]
    async fn dry_run(hooks: Arc<Hooks>) -> Result<i64, AppError> {
        hooks.register().await;
        insert("rollback_only", 1, "dry run").await?;
        assert!(!covet_txn::is_rollback_only());
        covet_txn::set_rollback_only()?;
        assert!(covet_txn::is_rollback_only());
        assert!(covet_txn::current().is_some_and(|info| info.scope_rollback_only));
        Ok(42)
    }

    #[transactional(propagation = "nested")]
    async fn discarded_step() -> Result<(), AppError> {
        insert("rollback_only", 2, "discarded").await?;
        covet_txn::set_rollback_only()?;
        Ok(())
    }

    #[transactional(propagation = "required")]
    async fn joined_veto() -> Result<(), AppError> {
        covet_txn::set_rollback_only()?;
        Ok(())
    }

    #[transactional]
    async fn outer_with_savepoint() -> Result<(), AppError> {
        insert("rollback_only", 1, "kept").await?;
        discarded_step().await?;
        assert!(!covet_txn::is_rollback_only(), "the savepoint's request ends with it");
        insert("rollback_only", 3, "kept").await?;
        Ok(())
    }

    #[transactional]
    async fn outer_with_joined_veto() -> Result<(), AppError> {
        insert("rollback_only", 1, "vetoed").await?;
        joined_veto().await?;
        assert!(covet_txn::is_rollback_only(), "a joined scope's request marks the transaction");
        Ok(())
    }

    #[tokio::test]
    async fn set_rollback_only_rolls_back_the_scope_that_asked() {
        let Some(manager) = manager("rollback_only", 2).await else { return };
        let count = "SELECT COUNT(*) FROM rollback_only";

        reset_table(manager.pool(), "rollback_only", COLUMNS).await;
        let hooks = Arc::new(Hooks::default());
        let value = manager.scope(dry_run(Arc::clone(&hooks))).await;
        assert_eq!(value.ok(), Some(42), "the scope that began the transaction returns its value");
        assert_eq!(pool_scalar(manager.pool(), count).await, 0, "and its work is gone");
        assert_eq!(hooks.counts(), (0, 1), "on_rollback ran, on_commit did not");

        reset_table(manager.pool(), "rollback_only", COLUMNS).await;
        manager.scope(outer_with_savepoint()).await.expect("the outer commits");
        assert_eq!(pool_scalar(manager.pool(), count).await, 2);
        assert_eq!(pool_scalar(manager.pool(), "SELECT COUNT(*) FROM rollback_only WHERE id = 2").await, 0);

        reset_table(manager.pool(), "rollback_only", COLUMNS).await;
        let vetoed = manager.scope(outer_with_joined_veto()).await;
        assert!(
            matches!(
                vetoed,
                Err(AppError::Tx(Error::RollbackOnly(RollbackOnlyCause::Requested { scope })))
                    if scope.ends_with("joined_veto")
            ),
            "the outermost call says who vetoed: {vetoed:?}"
        );
        assert_eq!(pool_scalar(manager.pool(), count).await, 0);

        assert!(matches!(covet_txn::set_rollback_only(), Err(Error::NoTransaction)));
        assert!(!covet_txn::is_rollback_only());
    }
}
