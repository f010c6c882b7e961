//! Read replicas on a real streaming replica of the shared cluster
//! (`.ci/topology` puts one on 5433): read-only transactions run on it and
//! read-write ones on the primary; a replica stopped or made to lag is
//! skipped, and counted; a task reads its own writes, and so does a later
//! task given its session token. The scenarios are
//! `covet_txn_tests::replica_scenarios`, shared with MariaDB's pair; here
//! they run on PostgreSQL, where replay paused makes the replica lag.
//!
//! The scenarios pause and stop the one replica, so they take turns.

use covet_txn::{Error, TxManager};
use covet_txn_tests::replica_scenarios::{self as scenarios, PgStreaming, READ_ONLY};

#[tokio::test]
async fn read_only_transactions_run_on_the_replica_and_the_others_on_the_primary() {
    scenarios::read_only_transactions_run_on_the_replica_and_the_others_on_the_primary::<
        PgStreaming,
    >()
    .await;
}

#[tokio::test]
async fn the_dashboard_shows_each_replica_and_where_reads_went() {
    scenarios::the_dashboard_shows_the_replica_and_where_reads_went::<PgStreaming>().await;
}

#[tokio::test]
async fn a_read_only_call_inside_a_read_write_transaction_joins_it_on_the_primary() {
    scenarios::a_read_only_call_inside_a_read_write_transaction_joins_it_on_the_primary::<
        PgStreaming,
    >()
    .await;
}

#[tokio::test]
async fn a_task_reads_its_own_writes_at_once_and_the_replica_again_once_it_has_them() {
    scenarios::a_task_reads_its_own_writes_at_once_and_the_replica_again_once_it_has_them::<
        PgStreaming,
    >()
    .await;
}

#[tokio::test]
async fn a_task_reads_its_own_writes_on_the_primary_while_the_replica_lacks_them() {
    scenarios::a_task_reads_its_own_writes_on_the_primary_while_the_replica_lacks_them::<
        PgStreaming,
    >()
    .await;
}

#[tokio::test]
async fn a_session_token_carries_read_your_writes_to_another_task() {
    scenarios::a_session_token_carries_read_your_writes_to_another_task::<PgStreaming>().await;
}

/// Replay paused while the primary takes a write.
#[tokio::test]
async fn a_lagging_replica_is_skipped_and_counted_then_serves_again() {
    scenarios::a_replica_cut_off_past_the_lag_bound_is_skipped_and_counted_then_serves_again::<
        PgStreaming,
    >()
    .await;
}

#[tokio::test]
async fn a_stopped_replica_is_skipped_and_counted_then_serves_again() {
    scenarios::a_stopped_replica_is_skipped_and_counted_then_serves_again::<PgStreaming>().await;
}

#[tokio::test]
async fn a_manager_whose_dialect_cannot_follow_replication_reads_from_the_primary_and_says_why() {
    let Some(primary) = covet_txn_tests::sqlite("replicas_unsupported", 2).await else {
        return;
    };
    let manager = TxManager::builder(primary.clone()).replica(primary).build();
    manager.refresh_replicas().await;
    manager
        .transaction(READ_ONLY, || async {
            sqlx::query("SELECT 1")
                .execute(&mut *manager.conn()?)
                .await?;
            Ok::<_, Error>(())
        })
        .await
        .expect("a read on the primary");
    let report = manager.replicas();
    assert_eq!(report.reads_on_primary_unavailable, 1, "{report:?}");
    assert!(!report.replicas[0].serving, "{report:?}");
    let why = report.replicas[0].last_error.as_deref().unwrap_or_default();
    assert!(why.contains("replication is not supported"), "{why}");
}
