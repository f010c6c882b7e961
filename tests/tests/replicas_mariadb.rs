//! Read replicas and failover on MariaDB, on the pair `.ci/topology` runs
//! (3307, a primary with a binary log; 3308, its GTID replica with
//! `read_only`): read-only transactions run on the replica and read-write
//! ones on the primary; a replica that replays nothing, falls behind or is
//! down is skipped, and counted; a task reads its own writes, and so does a
//! later task given its session token; a write refused by a primary made
//! read-only finds the writable host and runs again there.
//!
//! The tests stop, pause and swap the pair's servers, so they take turns.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use covet_txn::{Error, ReplicaStatus, TxManager, TxOptions};
use covet_txn_tests::topology::{self, MARIADB_PRIMARY_URL, MARIADB_REPLICA_URL};
use sqlx::{MySql, MySqlPool};
use tokio::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

const PROBE: Duration = Duration::from_millis(50);
const MAX_LAG: Duration = Duration::from_millis(500);
const READ_ONLY: TxOptions = TxOptions::new().read_only(true);
/// `@@server_id` of each server of the pair.
const PRIMARY: u32 = 1;
const REPLICA: u32 = 2;

/// A manager on the pair's primary with its replica, probed once, and the
/// primary's pool.
async fn manager(max_lag: Duration) -> Option<(TxManager<MySql>, MySqlPool)> {
    let primary = topology::mysql_pool(MARIADB_PRIMARY_URL, 4).await?;
    let replica = topology::mysql_pool(MARIADB_REPLICA_URL, 4).await?;
    let manager = TxManager::builder(primary.clone())
        .replica(replica)
        .max_replica_lag(max_lag)
        .replica_probe_interval(PROBE)
        .build();
    manager.refresh_replicas().await;
    Some((manager, primary))
}

/// The `@@server_id` of the server a transaction ran on.
async fn server(manager: &TxManager<MySql>, options: TxOptions) -> u32 {
    manager
        .transaction(options, || async {
            let id: u32 = sqlx::query_scalar("SELECT @@server_id")
                .fetch_one(&mut *manager.conn()?)
                .await?;
            Ok::<_, Error>(id)
        })
        .await
        .expect("a transaction")
}

/// Makes `table` afresh on the primary and waits until the replica has
/// replayed that far (a table of an earlier run may still be there).
async fn fresh_table(primary: &MySqlPool, table: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (value BIGINT NOT NULL) ENGINE = InnoDB"
    )))
    .execute(primary)
    .await
    .expect("the table");
    let written: String = sqlx::query_scalar("SELECT @@gtid_binlog_pos")
        .fetch_one(primary)
        .await
        .expect("the primary's position");
    let replica = topology::mysql_pool(MARIADB_REPLICA_URL, 1)
        .await
        .expect("the replica");
    for _ in 0..200 {
        let replayed: String = sqlx::query_scalar("SELECT @@gtid_slave_pos")
            .fetch_one(&replica)
            .await
            .expect("the replica's position");
        if replayed == written {
            return;
        }
        tokio::time::sleep(PROBE).await;
    }
    panic!("the replica never got {table}");
}

/// Writes `value` into `table` in a read-write transaction.
async fn write(manager: &TxManager<MySql>, table: &str, value: i64) -> Result<(), Error> {
    let sql = format!("INSERT INTO {table} (value) VALUES (?)");
    manager
        .transaction(TxOptions::new(), || async {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(value)
                .execute(&mut *manager.conn()?)
                .await?;
            Ok::<_, Error>(())
        })
        .await
}

/// Whether a read-only transaction sees `value` in `table`, and the server
/// it ran on.
async fn read(manager: &TxManager<MySql>, table: &str, value: i64) -> (bool, u32) {
    let sql = format!("SELECT EXISTS (SELECT 1 FROM {table} WHERE value = ?) <> 0, @@server_id");
    manager
        .transaction(READ_ONLY, || async {
            let row: (bool, u32) = sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(value)
                .fetch_one(&mut *manager.conn()?)
                .await?;
            Ok::<_, Error>(row)
        })
        .await
        .expect("a read")
}

/// Waits up to 20 s for the replica's status to pass `check`.
async fn wait_for(manager: &TxManager<MySql>, check: fn(&ReplicaStatus) -> bool) {
    for _ in 0..400 {
        if check(&manager.replicas().replicas[0]) {
            return;
        }
        tokio::time::sleep(PROBE).await;
    }
    panic!("the replica never got there: {:?}", manager.replicas());
}

/// Runs a `.ci/topology` verb now, and another when dropped, even if the
/// test fails: the pair is put back for the next test.
struct Changed(&'static [&'static str]);

impl Changed {
    fn start(verb: &[&str], undo: &'static [&'static str]) -> Changed {
        topology::run(verb);
        Changed(undo)
    }
}

impl Drop for Changed {
    fn drop(&mut self) {
        topology::run(self.0);
    }
}

#[tokio::test]
async fn read_only_transactions_run_on_the_replica_and_the_others_on_the_primary() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some((manager, _)) = manager(MAX_LAG).await else {
        return;
    };
    assert_eq!(server(&manager, READ_ONLY).await, REPLICA);
    assert_eq!(server(&manager, TxOptions::new()).await, PRIMARY);
    assert_eq!(
        server(&manager, TxOptions::new().read_only(false)).await,
        PRIMARY
    );
    let report = manager.replicas();
    assert_eq!(report.replicas[0].reads, 1, "{report:?}");
    assert!(report.replicas[0].serving, "{report:?}");
    assert!(
        report.replicas[0].lag.is_some_and(|lag| lag <= MAX_LAG),
        "{report:?}"
    );
    assert!(report.replicas[0].lag_bytes.is_some(), "{report:?}");
    let exposed = manager.prometheus_text().expect("the Prometheus text");
    for line in [
        "replica_reads_total{manager=\"mysql\",replica=\"replica-0\"} 1",
        "replica_serving{manager=\"mysql\",replica=\"replica-0\"} 1",
        "reads_on_primary_total{manager=\"mysql\",reason=\"replicas_unavailable\"} 0",
        "replica_lag_seconds{manager=\"mysql\",replica=\"replica-0\"} ",
    ] {
        assert!(exposed.contains(line), "no `{line}` in\n{exposed}");
    }
}

#[tokio::test]
async fn the_dashboard_shows_the_mariadb_replica_and_where_reads_went() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some((manager, _)) = manager(MAX_LAG).await else {
        return;
    };
    assert_eq!(server(&manager, READ_ONLY).await, REPLICA);
    let running = covet_txn_dashboard::Dashboard::new(manager.monitor())
        .bind("127.0.0.1:0")
        .bearer_token("mdbrep-t0ken")
        .start()
        .await
        .expect("the dashboard");
    let (status, _, state) =
        covet_txn_tests::http_get(running.addr(), "/api/state", Some("Bearer mdbrep-t0ken")).await;
    running.shutdown().await;
    assert_eq!(status, 200, "{state}");
    let state: serde_json::Value = serde_json::from_str(&state).expect("JSON");
    let replica = &state["replicas"]["replicas"][0];
    assert_eq!(replica["name"], "replica-0", "{state}");
    assert_eq!(replica["serving"], true, "{state}");
    assert_eq!(replica["reads"], 1, "{state}");
    assert!(replica["lag_ms"].as_f64().is_some(), "{state}");
}

#[tokio::test]
async fn a_replica_whose_sql_thread_is_stopped_is_skipped_and_counted_then_serves_again() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some((manager, _)) = manager(MAX_LAG).await else {
        return;
    };
    {
        // An idle primary: the replica would look caught up by its position.
        let _paused = Changed::start(&["mariadb-pause-replica"], &["mariadb-resume-replica"]);
        wait_for(&manager, |status| !status.serving).await;
        let report = manager.replicas();
        let why = report.replicas[0].last_error.as_deref().unwrap_or_default();
        assert!(why.contains("not replaying"), "{report:?}");
        for _ in 0..3 {
            assert_eq!(server(&manager, READ_ONLY).await, PRIMARY);
        }
        assert_eq!(manager.replicas().reads_on_primary_unavailable, 3);
    }
    wait_for(&manager, |status| status.serving).await;
    assert_eq!(server(&manager, READ_ONLY).await, REPLICA);
}

#[tokio::test]
async fn a_replica_that_falls_behind_is_skipped_and_counted_then_serves_again() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some((manager, primary)) = manager(MAX_LAG).await else {
        return;
    };
    fresh_table(&primary, "mdbrep_lagging").await;
    {
        // Its SQL thread runs, so only its position says it lags.
        let _cut = Changed::start(&["mariadb-disconnect-replica"], &["mariadb-resume-replica"]);
        write(&TxManager::new(primary.clone()), "mdbrep_lagging", 1)
            .await
            .expect("a write the replica cannot receive");
        tokio::time::sleep(MAX_LAG + PROBE * 4).await;
        let report = manager.replicas();
        assert!(!report.replicas[0].serving, "{report:?}");
        assert!(report.replicas[0].reachable, "{report:?}");
        assert_eq!(report.replicas[0].lag_bytes, Some(1), "{report:?}");
        assert_eq!(server(&manager, READ_ONLY).await, PRIMARY);
        assert_eq!(manager.replicas().reads_on_primary_unavailable, 1);
    }
    wait_for(&manager, |status| status.serving).await;
    assert_eq!(server(&manager, READ_ONLY).await, REPLICA);
}

#[tokio::test]
async fn a_task_reads_its_own_writes_on_the_primary_while_the_replica_lacks_them() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // A bound long enough for the cut-off replica to keep serving reads.
    let Some((manager, primary)) = manager(Duration::from_secs(3)).await else {
        return;
    };
    fresh_table(&primary, "mdbrep_own_writes").await;
    let _cut = Changed::start(&["mariadb-disconnect-replica"], &["mariadb-resume-replica"]);
    let writer = manager.clone();
    let (seen, server_id) = tokio::spawn(async move {
        write(&writer, "mdbrep_own_writes", 7)
            .await
            .expect("the write");
        read(&writer, "mdbrep_own_writes", 7).await
    })
    .await
    .expect("the writing task");
    assert!(seen && server_id == PRIMARY, "seen {seen} on {server_id}");
    assert!(manager.replicas().reads_on_primary_for_writes >= 1);
    // Another task reads from the replica, which does not have the row.
    let other = manager.clone();
    let (seen, server_id) = tokio::spawn(async move { read(&other, "mdbrep_own_writes", 7).await })
        .await
        .expect("another task");
    assert!(!seen && server_id == REPLICA, "seen {seen} on {server_id}");
}

#[tokio::test]
async fn a_session_token_carries_read_your_writes_to_another_task() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some((manager, primary)) = manager(Duration::from_secs(3)).await else {
        return;
    };
    fresh_table(&primary, "mdbrep_tokens").await;
    let _cut = Changed::start(&["mariadb-disconnect-replica"], &["mariadb-resume-replica"]);
    let writer = manager.clone();
    let token = tokio::spawn(async move {
        write(&writer, "mdbrep_tokens", 7).await?;
        writer.session_token().await
    })
    .await
    .expect("the writing task")
    .expect("its token")
    .expect("a token after a write");
    let token: covet_txn::SessionToken = token.to_string().parse().expect("the token's text");
    let reader = manager.clone();
    let (seen, server_id) = tokio::spawn(async move {
        reader.read_after(token);
        read(&reader, "mdbrep_tokens", 7).await
    })
    .await
    .expect("the reading task");
    assert!(seen && server_id == PRIMARY, "seen {seen} on {server_id}");
}

#[tokio::test]
async fn with_the_replica_down_reads_go_to_the_primary_and_are_counted() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some((manager, _)) = manager(MAX_LAG).await else {
        return;
    };
    {
        let _down = Changed::start(&["mariadb-stop-replica"], &["mariadb-start-replica"]);
        wait_for(&manager, |status| !status.reachable).await;
        for _ in 0..3 {
            assert_eq!(server(&manager, READ_ONLY).await, PRIMARY);
        }
        let report = manager.replicas();
        assert_eq!(report.reads_on_primary_unavailable, 3, "{report:?}");
        assert!(report.replicas[0].last_error.is_some(), "{report:?}");
    }
    wait_for(&manager, |status| status.serving).await;
    assert_eq!(server(&manager, READ_ONLY).await, REPLICA);
}

/// A manager on the primary that knows both hosts of the pair.
async fn failover_manager() -> Option<(TxManager<MySql>, MySqlPool)> {
    let primary = topology::mysql_pool(MARIADB_PRIMARY_URL, 4).await?;
    let manager = TxManager::builder(primary.clone())
        .primary_hosts([MARIADB_PRIMARY_URL, MARIADB_REPLICA_URL].map(topology::mysql_options))
        .failover_wait(Duration::from_secs(10))
        .build();
    Some((manager, primary))
}

/// Inserts a row into `table` with `retry`, counting attempts; returns the
/// server the last attempt ran on.
async fn write_with_retry(
    manager: &TxManager<MySql>,
    table: &str,
    options: TxOptions,
    attempts: &AtomicU32,
) -> Result<u32, Error> {
    let sql = format!("INSERT INTO {table} (value) VALUES (@@server_id)");
    manager
        .transaction_with_retry(options.retries(3), || async {
            attempts.fetch_add(1, Ordering::Relaxed);
            let mut conn = manager.conn()?;
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .execute(&mut *conn)
                .await?;
            let id: u32 = sqlx::query_scalar("SELECT @@server_id")
                .fetch_one(&mut *conn)
                .await?;
            Ok::<_, Error>(id)
        })
        .await
}

#[tokio::test]
async fn a_write_refused_by_a_demoted_primary_runs_again_on_the_new_one() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some((manager, primary)) = failover_manager().await else {
        return;
    };
    fresh_table(&primary, "mdbrep_failover").await;
    let attempts = AtomicU32::new(0);
    // The pool's connections are open to 3307 when it is demoted.
    let before = write_with_retry(&manager, "mdbrep_failover", TxOptions::new(), &attempts).await;
    assert_eq!(before.expect("a write before the swap"), PRIMARY);
    // 3308 keeps replicating, and its own writes stay out of 3307's stream
    // (it has no binary log): the swap is undone for the next test.
    let _swapped = Changed::start(&["mariadb-swap-roles"], &["mariadb-reset-roles"]);
    attempts.store(0, Ordering::Relaxed);
    let after = write_with_retry(&manager, "mdbrep_failover", TxOptions::new(), &attempts).await;
    assert_eq!(after.expect("the write, run again"), REPLICA);
    assert_eq!(attempts.load(Ordering::Relaxed), 2);
    assert!(manager.replicas().primary_changes >= 1);
    // The demoted host's connections left the pool: the next call's first
    // attempt runs on the new primary.
    for _ in 0..4 {
        attempts.store(0, Ordering::Relaxed);
        let next = write_with_retry(&manager, "mdbrep_failover", TxOptions::new(), &attempts).await;
        assert_eq!(next.expect("a later write"), REPLICA);
        assert_eq!(attempts.load(Ordering::Relaxed), 1);
    }
    let exposed = manager.prometheus_text().expect("the Prometheus text");
    assert!(exposed.contains("kind=\"not_primary\""), "{exposed}");
}

#[tokio::test]
async fn a_read_only_transactions_own_write_is_its_error_and_moves_nothing() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some((manager, primary)) = failover_manager().await else {
        return;
    };
    fresh_table(&primary, "mdbrep_read_only_write").await;
    let attempts = AtomicU32::new(0);
    let refused = write_with_retry(&manager, "mdbrep_read_only_write", READ_ONLY, &attempts).await;
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
