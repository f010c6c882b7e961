//! Read replicas and failover on MariaDB, on the pair `.ci/topology` runs
//! (3307, a primary with a binary log; 3308, its GTID replica with
//! `read_only`): read-only transactions run on the replica and read-write
//! ones on the primary; a replica that replays nothing, falls behind or is
//! down is skipped, and counted; a task reads its own writes, and so does a
//! later task given its session token; a write refused by a primary made
//! read-only finds the writable host and runs again there. The scenarios
//! PostgreSQL shares are `covet_txn_tests::replica_scenarios`; those that
//! only MariaDB has (its SQL thread, its failover) are written here.
//!
//! The tests stop, pause and swap the pair's servers, so they take turns.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use covet_txn::{Error, TxManager, TxOptions};
use covet_txn_tests::replica_scenarios::{
    self as scenarios, MAX_LAG, MariaDbPair, READ_ONLY, ReplicaTopology, Replicated, server,
    wait_for,
};
use covet_txn_tests::topology::{self, Changed, MARIADB_PRIMARY_URL, MARIADB_REPLICA_URL};
use sqlx::MySql;

const PRIMARY: i64 = MariaDbPair::PRIMARY;
const REPLICA: i64 = MariaDbPair::REPLICA;

#[tokio::test]
async fn read_only_transactions_run_on_the_replica_and_the_others_on_the_primary() {
    scenarios::read_only_transactions_run_on_the_replica_and_the_others_on_the_primary::<
        MariaDbPair,
    >()
    .await;
}

#[tokio::test]
async fn the_dashboard_shows_the_mariadb_replica_and_where_reads_went() {
    scenarios::the_dashboard_shows_the_replica_and_where_reads_went::<MariaDbPair>().await;
}

#[tokio::test]
async fn a_read_only_call_inside_a_read_write_transaction_joins_it_on_the_primary() {
    scenarios::a_read_only_call_inside_a_read_write_transaction_joins_it_on_the_primary::<
        MariaDbPair,
    >()
    .await;
}

#[tokio::test]
async fn a_replica_whose_sql_thread_is_stopped_is_skipped_and_counted_then_serves_again() {
    let Some(replicated) = Replicated::<MariaDbPair>::connect(MAX_LAG).await else {
        return;
    };
    let manager = &replicated.manager;
    {
        // An idle primary: the replica would look caught up by its position.
        let _paused = Changed::start(
            || topology::run(&["mariadb-pause-replica"]),
            MariaDbPair::reconnect,
        );
        wait_for(manager, |status| !status.serving).await;
        let report = manager.replicas();
        let why = report.replicas[0].last_error.as_deref().unwrap_or_default();
        assert!(why.contains("not replaying"), "{report:?}");
        for _ in 0..3 {
            assert_eq!(server::<MariaDbPair>(manager, READ_ONLY).await, PRIMARY);
        }
        assert_eq!(manager.replicas().reads_on_primary_unavailable, 3);
    }
    wait_for(manager, |status| status.serving).await;
    assert_eq!(server::<MariaDbPair>(manager, READ_ONLY).await, REPLICA);
}

/// Its I/O thread stopped while the primary takes a write.
#[tokio::test]
async fn a_replica_that_falls_behind_is_skipped_and_counted_then_serves_again() {
    scenarios::a_replica_cut_off_past_the_lag_bound_is_skipped_and_counted_then_serves_again::<
        MariaDbPair,
    >()
    .await;
}

#[tokio::test]
async fn a_task_reads_its_own_writes_at_once_and_the_replica_again_once_it_has_them() {
    scenarios::a_task_reads_its_own_writes_at_once_and_the_replica_again_once_it_has_them::<
        MariaDbPair,
    >()
    .await;
}

#[tokio::test]
async fn a_task_reads_its_own_writes_on_the_primary_while_the_replica_lacks_them() {
    scenarios::a_task_reads_its_own_writes_on_the_primary_while_the_replica_lacks_them::<
        MariaDbPair,
    >()
    .await;
}

#[tokio::test]
async fn a_session_token_carries_read_your_writes_to_another_task() {
    scenarios::a_session_token_carries_read_your_writes_to_another_task::<MariaDbPair>().await;
}

#[tokio::test]
async fn with_the_replica_down_reads_go_to_the_primary_and_are_counted() {
    scenarios::a_stopped_replica_is_skipped_and_counted_then_serves_again::<MariaDbPair>().await;
}

/// The pair (its turn taken) with `table` made afresh, and a manager on
/// the primary that knows both hosts of the pair.
async fn failover_manager(table: &str) -> Option<(TxManager<MySql>, Replicated<MariaDbPair>)> {
    let replicated = Replicated::<MariaDbPair>::with_table(MAX_LAG, table).await?;
    let manager = TxManager::builder(replicated.primary.clone())
        .primary_hosts([MARIADB_PRIMARY_URL, MARIADB_REPLICA_URL].map(topology::options))
        .failover_wait(Duration::from_secs(10))
        .build();
    Some((manager, replicated))
}

/// Inserts a row into `table` with `retry`, counting attempts; returns the
/// server the last attempt ran on.
async fn write_with_retry(
    manager: &TxManager<MySql>,
    table: &str,
    options: TxOptions,
    attempts: &AtomicU32,
) -> Result<i64, Error> {
    let sql = format!("INSERT INTO {table} (value) VALUES (@@server_id)");
    manager
        .transaction_with_retry(options.retries(3), || async {
            attempts.fetch_add(1, Ordering::Relaxed);
            let mut conn = manager.conn()?;
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .execute(&mut *conn)
                .await?;
            let id: i64 = sqlx::query_scalar(MariaDbPair::SERVER)
                .fetch_one(&mut *conn)
                .await?;
            Ok::<_, Error>(id)
        })
        .await
}

#[tokio::test]
async fn a_write_refused_by_a_demoted_primary_runs_again_on_the_new_one() {
    let Some((manager, _pair)) = failover_manager("reptests_failover").await else {
        return;
    };
    let attempts = AtomicU32::new(0);
    // The pool's connections are open to 3307 when it is demoted.
    let before = write_with_retry(&manager, "reptests_failover", TxOptions::new(), &attempts).await;
    assert_eq!(before.expect("a write before the swap"), PRIMARY);
    // 3308 keeps replicating, and its own writes stay out of 3307's stream
    // (it has no binary log): the swap is undone for the next test.
    let _swapped = Changed::start(
        || topology::run(&["mariadb-swap-roles"]),
        || topology::run(&["mariadb-reset-roles"]),
    );
    attempts.store(0, Ordering::Relaxed);
    let after = write_with_retry(&manager, "reptests_failover", TxOptions::new(), &attempts).await;
    assert_eq!(after.expect("the write, run again"), REPLICA);
    assert_eq!(attempts.load(Ordering::Relaxed), 2);
    assert!(manager.replicas().primary_changes >= 1);
    // The demoted host's connections left the pool: the next call's first
    // attempt runs on the new primary.
    for _ in 0..4 {
        attempts.store(0, Ordering::Relaxed);
        let next =
            write_with_retry(&manager, "reptests_failover", TxOptions::new(), &attempts).await;
        assert_eq!(next.expect("a later write"), REPLICA);
        assert_eq!(attempts.load(Ordering::Relaxed), 1);
    }
    let exposed = manager.prometheus_text().expect("the Prometheus text");
    assert!(exposed.contains("kind=\"not_primary\""), "{exposed}");
}

#[tokio::test]
async fn a_read_only_transactions_own_write_is_its_error_and_moves_nothing() {
    let Some((manager, _pair)) = failover_manager("reptests_read_only_write").await else {
        return;
    };
    let attempts = AtomicU32::new(0);
    let refused =
        write_with_retry(&manager, "reptests_read_only_write", READ_ONLY, &attempts).await;
    let error = refused.expect_err("a write in a read-only transaction");
    let code = error
        .as_sqlx_error()
        .and_then(|error| error.as_database_error())
        .and_then(|database| database.code().map(|code| code.into_owned()));
    // ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION (SQLSTATE 25006).
    assert_eq!(code.as_deref(), Some("25006"), "{error}");
    assert_eq!(attempts.load(Ordering::Relaxed), 1, "retried: {error}");
    assert_eq!(manager.replicas().primary_changes, 0);
}
