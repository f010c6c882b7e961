//! Hooks: side effects tied to the fate of a transaction, exactly once or
//! not at all.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use covet_txn::{Error, Failure, RollbackCause, TxEvent, TxOutcome, transactional};
use covet_txn_tests::{AppError, each_backend};

/// What the hooks of one test did, in order.
#[derive(Clone, Default)]
struct Journal(Arc<Mutex<Vec<String>>>);

impl Journal {
    fn note(&self, entry: impl Into<String>) {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(entry.into());
    }

    fn entries(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// A hook that notes `entry`.
    fn hook(
        &self,
        entry: &'static str,
    ) -> impl FnOnce() -> std::future::Ready<()> + Send + 'static {
        let journal = self.clone();
        move || {
            journal.note(entry);
            std::future::ready(())
        }
    }
}

/// What the declared handlers saw, across tests: (backend, handler, the
/// event's scope name, outcome, cause, depth).
type Seen = (
    &'static str,
    &'static str,
    &'static str,
    TxOutcome,
    Option<RollbackCause>,
    u32,
);

static DECLARED: Mutex<Vec<Seen>> = Mutex::new(Vec::new());

fn declare(handler: &'static str, event: &TxEvent) {
    DECLARED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push((
            event.backend,
            handler,
            event.name,
            event.outcome,
            event.cause.clone(),
            event.depth,
        ));
}

/// What the declared handlers saw on `backend`, oldest first.
fn declared_on(backend: &str) -> Vec<Seen> {
    DECLARED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .iter()
        .filter(|seen| seen.0 == backend)
        .cloned()
        .collect()
}

#[covet_txn::on_commit]
async fn audit_commit(event: &TxEvent) {
    declare("audit_commit", event);
}

#[covet_txn::on_commit]
fn nested_commit(event: &TxEvent) {
    declare("nested_commit", event);
}

#[covet_txn::before_commit]
fn check_before_commit(event: &TxEvent) -> Result<(), String> {
    declare("check_before_commit", event);
    Ok(())
}

#[covet_txn::on_rollback]
async fn audit_rollback(event: &TxEvent) -> Result<(), std::fmt::Error> {
    declare("audit_rollback", event);
    Ok(())
}

#[covet_txn::on_rollback]
fn nested_rollback(event: &TxEvent) {
    declare("nested_rollback", event);
}

#[covet_txn::before_rollback]
fn audit_before_rollback(event: &TxEvent) {
    declare("audit_before_rollback", event);
}

fn retry_refusals(failure: &Failure<'_>) -> bool {
    failure.error().to_string().contains("refused")
}

each_backend! {
    const COLUMNS: &str = "id BIGINT PRIMARY KEY, v BIGINT NOT NULL";

    async fn insert(table: &str, id: i64) -> Result<(), Error> {
        exec(format!("INSERT INTO {table} (id, v) VALUES ({id}, 0)")).await
    }

    async fn count(pool: &sqlx::Pool<Db>, table: &str) -> i64 {
        pool_scalar(pool, format!("SELECT COUNT(*) FROM {table}")).await
    }

    #[transactional]
    async fn with_audit_row(table: &'static str) -> Result<(), AppError> {
        insert(table, 1).await?;
        covet_txn::before_commit(move || async move {
            let info = covet_txn::current().ok_or("no transaction")?;
            assert!(info.transactional && info.state == covet_txn::TxState::Active);
            insert(table, 2).await.map_err(|error| error.to_string())
        })
        .await;
        Ok(())
    }

    #[tokio::test]
    async fn before_commit_runs_inside_the_transaction_and_can_use_its_connection() {
        let Some(manager) = manager("hooks_before", 1).await else { return };
        reset_table(manager.pool(), "hooks_before", COLUMNS).await;
        manager.scope(with_audit_row("hooks_before")).await.expect("commits");
        assert_eq!(count(manager.pool(), "hooks_before").await, 2);
    }

    #[transactional]
    async fn refused_before_commit(table: &'static str, panics: bool) -> Result<(), AppError> {
        insert(table, 1).await?;
        covet_txn::before_commit(move || async move {
            if panics {
                panic!("the check exploded");
            }
            Err::<(), _>("the books do not balance")
        })
        .await;
        Ok(())
    }

    #[tokio::test]
    async fn a_failing_or_panicking_before_commit_hook_rolls_back_and_reaches_the_caller() {
        let Some(manager) = manager("hooks_refused", 1).await else { return };
        reset_table(manager.pool(), "hooks_refused", COLUMNS).await;
        let refused = manager.scope(refused_before_commit("hooks_refused", false)).await;
        let Err(AppError::Tx(error @ Error::HookFailed { source, .. })) = &refused else { panic!("{refused:?}") };
        assert_eq!(source.to_string(), "the books do not balance");
        let kept = std::error::Error::source(error).map(ToString::to_string);
        assert_eq!(kept.as_deref(), Some("the books do not balance"), "the hook's error is the source");
        let exploded = manager.scope(refused_before_commit("hooks_refused", true)).await;
        let Err(AppError::Tx(Error::HookFailed { source, .. })) = &exploded else { panic!("{exploded:?}") };
        assert!(source.to_string().contains("the check exploded"), "{source}");
        assert_eq!(count(manager.pool(), "hooks_refused").await, 0);
    }

    #[transactional(retry = 2, backoff = "1ms")]
    async fn hook_fails_once(fault: std::sync::Arc<FailOnce>) -> Result<(), AppError> {
        covet_txn::before_commit(move || async move { fault.step().await }).await;
        Ok(())
    }

    #[tokio::test]
    async fn a_retryable_failure_in_a_before_commit_hook_retries_the_transaction() {
        let table = format!("hooks_retry_{BACKEND}");
        let Some(manager) = manager(&table, 2).await else { return };
        let fault = std::sync::Arc::new(FailOnce::arm(&manager, &table, "40001").await);
        let kind = fault.kind();
        manager.scope(hook_fails_once(std::sync::Arc::clone(&fault))).await.expect("the second attempt commits");
        assert_eq!(fault.attempts.load(Ordering::SeqCst), 2, "the hook ran once per attempt");
        assert_eq!(pool_scalar(manager.pool(), format!("SELECT v FROM {table} WHERE id = 1")).await, 1);
        let total = manager.metrics().total;
        assert_eq!(total.retries, 1, "{total:?}");
        let counted = match kind {
            covet_txn::FailureKind::Deadlock => total.deadlocks,
            covet_txn::FailureKind::SerializationFailure => total.serialization_failures,
            _ => total.busy,
        };
        assert_eq!(counted, 1, "the hook's {kind} is counted: {total:?}");
        assert_eq!(total.hook_failures, 1, "{total:?}");
    }

    #[transactional]
    async fn read_in_a_new_transaction(table: &'static str) -> Result<(i64, covet_txn::TxId), AppError> {
        let rows = scalar(format!("SELECT COUNT(*) FROM {table}")).await?;
        let id = covet_txn::current().map(|info| info.id).ok_or(AppError::Refused("no transaction"))?;
        Ok((rows, id))
    }

    #[transactional]
    async fn commit_with_hooks(table: &'static str, journal: Journal) -> Result<covet_txn::TxId, AppError> {
        insert(table, 1).await?;
        covet_txn::on_commit(journal.hook("first")).await;
        let seen = journal.clone();
        covet_txn::on_commit(move || async move {
            // A pool of one: this only works once the committed
            // transaction's connection is back in the pool.
            match read_in_a_new_transaction(table).await {
                Ok((rows, id)) => seen.note(format!("second saw {rows} row(s) in {id}")),
                Err(error) => seen.note(format!("second failed: {error}")),
            }
        })
        .await;
        covet_txn::on_commit(journal.hook("third")).await;
        assert!(journal.entries().is_empty(), "nothing runs before the commit");
        covet_txn::current().map(|info| info.id).ok_or(AppError::Refused("no transaction"))
    }

    #[tokio::test]
    async fn on_commit_hooks_run_after_commit_in_order_and_get_a_transaction_of_their_own() {
        let Some(manager) = manager("hooks_after", 1).await else { return };
        reset_table(manager.pool(), "hooks_after", COLUMNS).await;
        let journal = Journal::default();
        let committed = manager.scope(commit_with_hooks("hooks_after", journal.clone())).await.expect("commits");
        let entries = journal.entries();
        assert_eq!(entries.len(), 3, "{entries:?}");
        assert_eq!(entries[0], "first");
        assert!(entries[1].starts_with("second saw 1 row(s) in tx-"), "{entries:?}");
        assert!(!entries[1].ends_with(&committed.to_string()), "a new transaction: {entries:?}");
        assert_eq!(entries[2], "third");
    }

    #[transactional]
    async fn nested_registering(journal: Journal, entry: &'static str, fails: bool) -> Result<(), AppError> {
        covet_txn::on_commit(journal.hook(entry)).await;
        let rollback_note = journal.clone();
        covet_txn::on_rollback(move || async move { rollback_note.note(format!("{entry} rolled back")) }).await;
        if fails { Err(AppError::Refused("nested")) } else { Ok(()) }
    }

    #[transactional]
    async fn outer_with_savepoints(journal: Journal) -> Result<(), AppError> {
        let outer_rollback = journal.clone();
        covet_txn::on_rollback(move || async move { outer_rollback.note("outer rolled back") }).await;
        assert!(nested_registering(journal.clone(), "discarded", true).await.is_err());
        assert_eq!(journal.entries(), ["discarded rolled back"], "the savepoint's rollback hook ran at once");
        nested_registering(journal.clone(), "kept", false).await?;
        assert_eq!(journal.entries().len(), 1, "the released savepoint's hook waits for the outermost commit");
        Ok(())
    }

    #[tokio::test]
    async fn a_rolled_back_savepoint_discards_its_commit_hooks_and_a_released_one_waits_for_the_commit() {
        let Some(manager) = manager("hooks_savepoints", 1).await else { return };
        let journal = Journal::default();
        manager.scope(outer_with_savepoints(journal.clone())).await.expect("commits");
        assert_eq!(journal.entries(), ["discarded rolled back", "kept"]);
    }

    #[transactional(retry = 3, backoff = "1ms", retry_if = retry_refusals)]
    async fn fails_on_first_attempt(journal: Journal, attempts: &AtomicU32) -> Result<(), AppError> {
        let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
        let committed = journal.clone();
        covet_txn::on_commit(move || async move { committed.note(format!("commit of attempt {attempt}")) }).await;
        let rolled_back = journal.clone();
        covet_txn::on_rollback(move || async move { rolled_back.note(format!("rollback of attempt {attempt}")) }).await;
        if attempt < 3 { Err(AppError::Refused("refused")) } else { Ok(()) }
    }

    #[tokio::test]
    async fn after_retries_only_the_successful_attempts_commit_hooks_run_once() {
        let Some(manager) = manager("hooks_retry", 1).await else { return };
        let journal = Journal::default();
        let attempts = AtomicU32::new(0);
        manager.scope(fails_on_first_attempt(journal.clone(), &attempts)).await.expect("third attempt commits");
        assert_eq!(journal.entries(), ["rollback of attempt 1", "rollback of attempt 2", "commit of attempt 3"]);
    }

    #[transactional]
    async fn after_the_fact_failures(journal: Journal, fail: bool) -> Result<(), AppError> {
        covet_txn::on_commit(|| async { Err::<(), _>("mail server down") }).await;
        covet_txn::on_commit(|| async {
            if true {
                panic!("hook bug");
            }
        })
        .await;
        covet_txn::on_commit(journal.hook("still ran")).await;
        covet_txn::on_rollback(|| async { Err::<(), _>("cleanup failed") }).await;
        covet_txn::on_rollback(journal.hook("rollback still ran")).await;
        if fail { Err(AppError::Refused("the original error")) } else { Ok(()) }
    }

    #[tokio::test]
    async fn failing_after_the_fact_hooks_change_nothing_and_the_rest_still_run() {
        let Some(manager) = manager("hooks_failing", 1).await else { return };
        let journal = Journal::default();
        manager.scope(after_the_fact_failures(journal.clone(), false)).await.expect("still committed");
        let failed = manager.scope(after_the_fact_failures(journal.clone(), true)).await;
        assert!(matches!(failed, Err(AppError::Refused("the original error"))), "{failed:?}");
        assert_eq!(journal.entries(), ["still ran", "rollback still ran"]);
    }

    #[transactional(timeout = "100ms")]
    async fn times_out(journal: Journal) -> Result<(), AppError> {
        covet_txn::on_rollback(journal.hook("timed out")).await;
        covet_txn::on_commit(journal.hook("never committed")).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok(())
    }

    #[transactional]
    async fn panics(journal: Journal) -> Result<(), AppError> {
        covet_txn::on_rollback(journal.hook("panicked")).await;
        panic!("boom");
    }

    #[transactional]
    async fn cancelled(journal: Journal, registered: tokio::sync::oneshot::Sender<()>) -> Result<(), AppError> {
        let done = journal.clone();
        covet_txn::on_rollback(move || async move { done.note("cancelled") }).await;
        let _ = registered.send(());
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok(())
    }

    #[tokio::test]
    async fn on_rollback_hooks_run_once_after_a_panic_a_timeout_or_a_cancellation() {
        let Some(manager) = manager("hooks_rollbacks", 1).await else { return };
        let journal = Journal::default();
        let timed_out = manager.scope(times_out(journal.clone())).await;
        assert!(matches!(timed_out, Err(AppError::Tx(Error::Timeout { .. }))), "{timed_out:?}");
        let panicked = tokio::spawn(manager.scope(panics(journal.clone()))).await;
        assert!(panicked.is_err_and(|error| error.is_panic()));
        let (registered, ready) = tokio::sync::oneshot::channel();
        let call = tokio::spawn(manager.scope(cancelled(journal.clone(), registered)));
        let _ = ready.await;
        call.abort();
        for _ in 0..100 {
            if journal.entries().len() == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(journal.entries(), ["timed out", "panicked", "cancelled"]);
    }

    #[tokio::test]
    async fn outside_any_transaction_a_commit_hook_runs_at_once_and_a_rollback_hook_never() {
        let journal = Journal::default();
        covet_txn::on_commit(journal.hook("ran now")).await;
        covet_txn::on_rollback(journal.hook("never")).await;
        assert_eq!(journal.entries(), ["ran now"]);
    }

    #[transactional(before_commit = [check_before_commit], on_commit = [nested_commit], on_rollback = [nested_rollback])]
    async fn declared_nested(fail: bool) -> Result<(), AppError> {
        if fail { Err(AppError::Refused("declared nested")) } else { Ok(()) }
    }

    #[transactional(on_commit = [audit_commit], before_rollback = [audit_before_rollback], on_rollback = [audit_rollback])]
    async fn declared_outer(fail_nested: bool, fail: bool) -> Result<(), AppError> {
        let _ = declared_nested(fail_nested).await;
        if fail { Err(AppError::Refused("declared outer")) } else { Ok(()) }
    }

    #[tokio::test]
    async fn declared_handlers_run_for_their_scope_with_the_event() {
        let Some(manager) = manager("hooks_declared", 1).await else { return };
        let summary = |seen: Vec<Seen>| -> Vec<(&'static str, &'static str, u32)> {
            seen.into_iter()
                .map(|(_, handler, name, _, _, depth)| (handler, name.rsplit("::").next().unwrap_or(name), depth))
                .collect()
        };

        manager.scope(declared_outer(false, false)).await.expect("commits");
        assert_eq!(
            summary(declared_on(BACKEND)),
            [
                ("check_before_commit", "declared_outer", 1),
                ("audit_commit", "declared_outer", 1),
                ("nested_commit", "declared_outer", 1),
            ],
            "the released savepoint's handlers waited for the outermost commit; each phase runs in \
             registration order (the outer function's handlers were registered first)"
        );

        manager.scope(declared_outer(true, true)).await.expect_err("rolls back");
        let seen = declared_on(BACKEND);
        assert_eq!(
            summary(seen[3..].to_vec()),
            [
                ("nested_rollback", "declared_nested", 2),
                ("audit_before_rollback", "declared_outer", 1),
                ("audit_rollback", "declared_outer", 1),
            ],
            "the savepoint's rollback handler ran when it rolled back; its commit handlers never"
        );
        let (_, _, _, outcome, cause, _) = &seen[5];
        assert_eq!(*outcome, TxOutcome::RolledBack);
        assert!(
            matches!(cause, Some(RollbackCause::Error { message, .. }) if message.contains("declared outer")),
            "{cause:?}"
        );
    }

    /// Commits or fails, with no handler of its own: the other tests read
    /// every declared handler's call.
    #[transactional]
    async fn commits_or_fails(fail: bool) -> Result<(), AppError> {
        if fail { Err(AppError::Refused("failed")) } else { Ok(()) }
    }

    #[tokio::test]
    async fn manager_hooks_run_for_every_transaction_of_the_manager() {
        let Some(pool) = pool("hooks_manager", 1).await else { return };
        let commits = Arc::new(AtomicU32::new(0));
        let rollbacks = Arc::new(AtomicU32::new(0));
        let (seen_commits, seen_rollbacks) = (Arc::clone(&commits), Arc::clone(&rollbacks));
        let manager = covet_txn::TxManager::builder(pool)
            .on_commit(move |event: TxEvent| {
                let commits = Arc::clone(&seen_commits);
                async move {
                    assert_eq!(event.outcome, TxOutcome::Committed);
                    commits.fetch_add(1, Ordering::SeqCst);
                }
            })
            .on_rollback(move |_| {
                let rollbacks = Arc::clone(&seen_rollbacks);
                async move {
                    rollbacks.fetch_add(1, Ordering::SeqCst);
                }
            })
            .build();
        for fail in [false, true, false] {
            let _ = manager.scope(commits_or_fails(fail)).await;
        }
        assert_eq!((commits.load(Ordering::SeqCst), rollbacks.load(Ordering::SeqCst)), (2, 1));
    }

    /// Waits up to two seconds for the journal to hold `count` entries, then
    /// a little longer, so that an entry too many would show.
    async fn settled(journal: &Journal, count: usize) -> Vec<String> {
        for _ in 0..200 {
            if journal.entries().len() >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        journal.entries()
    }

    #[transactional]
    async fn slow_commit_hooks(journal: Journal, hook_started: Arc<tokio::sync::Notify>) -> Result<(), AppError> {
        let first = journal.clone();
        covet_txn::on_commit(move || async move {
            hook_started.notify_one();
            tokio::time::sleep(Duration::from_millis(200)).await;
            first.note("first commit hook finished");
        })
        .await;
        covet_txn::on_commit(journal.hook("second commit hook")).await;
        covet_txn::on_rollback(journal.hook("rolled back")).await;
        Ok(())
    }

    #[tokio::test]
    async fn a_call_cancelled_during_its_commit_hooks_finishes_them_and_reports_no_rollback() {
        let Some(manager) = manager("hooks_cancel_commit", 1).await else { return };
        let journal = Journal::default();
        let hook_started = Arc::new(tokio::sync::Notify::new());
        let call = tokio::spawn(manager.scope(slow_commit_hooks(journal.clone(), Arc::clone(&hook_started))));
        hook_started.notified().await;
        call.abort();
        assert!(call.await.is_err_and(|error| error.is_cancelled()));
        assert_eq!(
            settled(&journal, 2).await,
            ["first commit hook finished", "second commit hook"],
            "the committed transaction's hooks all ran, once, and no rollback hook did"
        );
    }

    #[transactional]
    async fn refused_plainly() -> Result<(), AppError> {
        Err(AppError::Refused("refused plainly"))
    }

    #[tokio::test]
    async fn a_call_cancelled_during_its_rollback_hooks_runs_each_of_them_once() {
        let Some(pool) = pool("hooks_cancel_rollback", 1).await else { return };
        let journal = Journal::default();
        let hook_started = Arc::new(tokio::sync::Notify::new());
        let (seen, started) = (journal.clone(), Arc::clone(&hook_started));
        let manager = covet_txn::TxManager::builder(pool)
            .on_rollback(move |_| {
                let (journal, started) = (seen.clone(), Arc::clone(&started));
                async move {
                    journal.note("manager rollback hook started");
                    started.notify_one();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    journal.note("manager rollback hook finished");
                }
            })
            .build();
        let call = tokio::spawn(manager.scope(refused_plainly()));
        hook_started.notified().await;
        call.abort();
        assert!(call.await.is_err_and(|error| error.is_cancelled()));
        assert_eq!(
            settled(&journal, 2).await,
            ["manager rollback hook started", "manager rollback hook finished"]
        );
    }

    #[transactional(timeout = "50ms")]
    async fn nested_too_slow() -> Result<(), AppError> {
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(())
    }

    #[transactional]
    async fn swallows_a_nested_timeout(journal: Journal) -> Result<(), AppError> {
        covet_txn::before_commit(journal.hook("before commit")).await;
        covet_txn::on_rollback(journal.hook("rolled back")).await;
        let nested = nested_too_slow().await;
        assert!(matches!(nested, Err(AppError::Tx(Error::Timeout { .. }))), "{nested:?}");
        Ok(())
    }

    #[tokio::test]
    async fn a_transaction_aborted_by_a_nested_timeout_runs_no_before_commit_hook() {
        let Some(manager) = manager("hooks_aborted", 1).await else { return };
        let journal = Journal::default();
        let result = manager.scope(swallows_a_nested_timeout(journal.clone())).await;
        assert!(matches!(result, Err(AppError::Tx(Error::TransactionAborted(_)))), "{result:?}");
        assert_eq!(journal.entries(), ["rolled back"]);
    }
}
