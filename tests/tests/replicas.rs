//! Read replicas on a real streaming replica of the shared cluster
//! (`.ci/topology` puts one on 5433): read-only transactions run on it and
//! read-write ones on the primary; a replica stopped or made to lag is
//! skipped, and counted; a task reads its own writes, and so does a later
//! task given its session token.
//!
//! The tests pause and stop the one replica, so they take turns.

use std::time::Duration;

use covet_txn::{Error, TxManager, TxOptions};
use covet_txn_tests::topology::{self, REPLICA_URL};
use sqlx::{PgPool, Postgres};
use tokio::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

const PROBE: Duration = Duration::from_millis(50);
const MAX_LAG: Duration = Duration::from_millis(500);

/// A manager on the shared cluster with the replica, probed once.
async fn manager() -> Option<(TxManager<Postgres>, PgPool)> {
    manager_with_lag(MAX_LAG).await
}

async fn manager_with_lag(max_lag: Duration) -> Option<(TxManager<Postgres>, PgPool)> {
    let primary = covet_txn_tests::postgres(4).await?;
    let replica = topology::pool(REPLICA_URL, 4).await?;
    let manager = TxManager::builder(primary.clone())
        .replica(replica)
        .max_replica_lag(max_lag)
        .replica_probe_interval(PROBE)
        .build();
    manager.refresh_replicas().await;
    Some((manager, primary))
}

/// Whether the transaction's server is a standby.
async fn on_replica(manager: &TxManager<Postgres>, options: TxOptions) -> Result<bool, Error> {
    manager
        .transaction(options, || async {
            let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
                .fetch_one(&mut *manager.conn()?)
                .await?;
            Ok::<_, Error>(standby)
        })
        .await
}

const READ_ONLY: TxOptions = TxOptions::new().read_only(true);

#[tokio::test]
async fn read_only_transactions_run_on_the_replica_and_the_others_on_the_primary() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some((manager, _)) = manager().await else {
        return;
    };
    assert!(on_replica(&manager, READ_ONLY).await.expect("a read"));
    assert!(
        !on_replica(&manager, TxOptions::new())
            .await
            .expect("a write")
    );
    assert!(
        !on_replica(&manager, TxOptions::new().read_only(false))
            .await
            .expect("an explicit read-write transaction")
    );
    let report = manager.replicas();
    assert_eq!(report.replicas.len(), 1);
    assert_eq!(report.replicas[0].reads, 1, "{report:?}");
    assert!(report.replicas[0].serving, "{report:?}");
    assert!(
        report.replicas[0].lag.is_some_and(|lag| lag <= MAX_LAG),
        "{report:?}"
    );
    let exposed = manager.prometheus_text().expect("the Prometheus text");
    for line in [
        "replica_reads_total{manager=\"postgresql\",replica=\"replica-0\"} 1",
        "replica_serving{manager=\"postgresql\",replica=\"replica-0\"} 1",
        "reads_on_primary_total{manager=\"postgresql\",reason=\"replicas_unavailable\"} 0",
        "replica_lag_seconds{manager=\"postgresql\",replica=\"replica-0\"} ",
    ] {
        assert!(exposed.contains(line), "no `{line}` in\n{exposed}");
    }
}

#[tokio::test]
async fn the_dashboard_shows_each_replica_and_where_reads_went() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some((manager, _)) = manager().await else {
        return;
    };
    assert!(on_replica(&manager, READ_ONLY).await.expect("a read"));
    let running = covet_txn_dashboard::Dashboard::new(manager.monitor())
        .bind("127.0.0.1:0")
        .bearer_token("replica-t0ken")
        .start()
        .await
        .expect("the dashboard");
    let (status, _, state) =
        covet_txn_tests::http_get(running.addr(), "/api/state", Some("Bearer replica-t0ken")).await;
    running.shutdown().await;
    assert_eq!(status, 200, "{state}");
    let state: serde_json::Value = serde_json::from_str(&state).expect("JSON");
    let replica = &state["replicas"]["replicas"][0];
    assert_eq!(replica["name"], "replica-0", "{state}");
    assert_eq!(replica["serving"], true, "{state}");
    assert_eq!(replica["reads"], 1, "{state}");
    assert!(replica["lag_ms"].as_f64().is_some(), "{state}");
    assert_eq!(
        state["replicas"]["reads_on_primary_unavailable"], 0,
        "{state}"
    );
}

#[tokio::test]
async fn a_read_only_call_inside_a_read_write_transaction_joins_it_on_the_primary() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some((manager, _)) = manager().await else {
        return;
    };
    let inner = manager
        .transaction(TxOptions::new(), || async {
            on_replica(
                &manager,
                READ_ONLY.propagation(covet_txn::Propagation::Required),
            )
            .await
        })
        .await
        .expect("the transaction");
    assert!(!inner, "the joined read ran on the replica");
    assert_eq!(manager.replicas().replicas[0].reads, 0);
}

/// Writes `value` into `table` in a read-write transaction.
async fn write(manager: &TxManager<Postgres>, table: &str, value: i64) -> Result<(), Error> {
    let sql = format!("INSERT INTO {table} (value) VALUES ($1)");
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

/// Whether a read-only transaction sees `value` in `table`, and where it ran.
async fn read(manager: &TxManager<Postgres>, table: &str, value: i64) -> (bool, bool) {
    let sql =
        format!("SELECT EXISTS (SELECT 1 FROM {table} WHERE value = $1), pg_is_in_recovery()");
    manager
        .transaction(READ_ONLY, || async {
            let row: (bool, bool) = sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(value)
                .fetch_one(&mut *manager.conn()?)
                .await?;
            Ok::<_, Error>(row)
        })
        .await
        .expect("a read")
}

/// A manager as [`manager`] gives, and `table` created afresh.
async fn with_table(table: &str) -> Option<(TxManager<Postgres>, PgPool)> {
    let (manager, primary) = manager().await?;
    fresh_table(&primary, table).await;
    Some((manager, primary))
}

async fn fresh_table(primary: &PgPool, table: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (value int8 NOT NULL)"
    )))
    .execute(primary)
    .await
    .expect("the table");
}

#[tokio::test]
async fn a_task_reads_its_own_writes_at_once_and_the_replica_again_once_it_has_them() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some((manager, _)) = with_table("replica_own_writes").await else {
        return;
    };
    for value in 0..20 {
        write(&manager, "replica_own_writes", value)
            .await
            .expect("the write");
        let (seen, _) = read(&manager, "replica_own_writes", value).await;
        assert!(seen, "write {value} not seen by the task that made it");
    }
    let before = manager.replicas().reads_on_primary_for_writes;
    assert!(
        before >= 1,
        "no read went to the primary for the task's writes"
    );
    // Once the probe has sampled past the writes and the replica has
    // replayed them, the task's reads go back to it.
    tokio::time::sleep(PROBE * 6).await;
    let (seen, standby) = read(&manager, "replica_own_writes", 19).await;
    assert!(seen && standby, "seen {seen}, on the replica {standby}");
}

#[tokio::test]
async fn a_session_token_carries_read_your_writes_to_another_task() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // A bound long enough for the paused replica to keep serving reads.
    let Some((manager, primary)) = manager_with_lag(Duration::from_secs(3)).await else {
        return;
    };
    fresh_table(&primary, "replica_tokens").await;
    // Replay paused: the replica is within the lag bound for a while but
    // cannot have the write, so only the token can send the read elsewhere.
    let _paused = Paused::start();
    let writer = manager.clone();
    let token = tokio::spawn(async move {
        write(&writer, "replica_tokens", 7).await?;
        writer.session_token().await
    })
    .await
    .expect("the writing task")
    .expect("its token")
    .expect("a token after a write");
    let token: covet_txn::SessionToken = token.to_string().parse().expect("the token's text");
    let reader = manager.clone();
    let (seen, standby) = tokio::spawn(async move {
        reader.read_after(token);
        read(&reader, "replica_tokens", 7).await
    })
    .await
    .expect("the reading task");
    assert!(seen && !standby, "seen {seen}, on the replica {standby}");
    // A task without the token reads from the replica, without the row.
    let other = manager.clone();
    let (seen, standby) = tokio::spawn(async move { read(&other, "replica_tokens", 7).await })
        .await
        .expect("another task");
    assert!(!seen && standby, "seen {seen}, on the replica {standby}");
}

#[tokio::test]
async fn a_lagging_replica_is_skipped_and_counted_then_serves_again() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some((manager, primary)) = with_table("replica_lagging").await else {
        return;
    };
    {
        let _paused = Paused::start();
        write(&primary_only(&primary), "replica_lagging", 1)
            .await
            .expect("a write the replica cannot replay");
        tokio::time::sleep(MAX_LAG + PROBE * 4).await;
        let report = manager.replicas();
        assert!(!report.replicas[0].serving, "{report:?}");
        assert!(
            report.replicas[0].lag_bytes.is_some_and(|bytes| bytes > 0),
            "{report:?}"
        );
        assert!(!on_replica(&manager, READ_ONLY).await.expect("a read"));
        assert_eq!(manager.replicas().reads_on_primary_unavailable, 1);
    }
    wait_until_serving(&manager).await;
    assert!(on_replica(&manager, READ_ONLY).await.expect("a read"));
}

#[tokio::test]
async fn a_stopped_replica_is_skipped_and_counted_then_serves_again() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some((manager, _)) = manager().await else {
        return;
    };
    {
        let _stopped = Stopped::start();
        wait_for(&manager, |status| !status.reachable).await;
        let report = manager.replicas();
        assert!(
            !report.replicas[0].reachable && !report.replicas[0].serving,
            "{report:?}"
        );
        assert!(report.replicas[0].last_error.is_some(), "{report:?}");
        for _ in 0..3 {
            assert!(!on_replica(&manager, READ_ONLY).await.expect("a read"));
        }
        assert_eq!(manager.replicas().reads_on_primary_unavailable, 3);
    }
    wait_until_serving(&manager).await;
    assert!(on_replica(&manager, READ_ONLY).await.expect("a read"));
}

/// A manager without replicas on the same primary.
fn primary_only(primary: &PgPool) -> TxManager<Postgres> {
    TxManager::new(primary.clone())
}

async fn wait_until_serving(manager: &TxManager<Postgres>) {
    wait_for(manager, |status| status.serving).await;
}

/// Waits up to 10 s for the replica's status to pass `check`.
async fn wait_for(manager: &TxManager<Postgres>, check: fn(&covet_txn::ReplicaStatus) -> bool) {
    for _ in 0..200 {
        if check(&manager.replicas().replicas[0]) {
            return;
        }
        tokio::time::sleep(PROBE).await;
    }
    panic!("the replica never got there: {:?}", manager.replicas());
}

/// Replay paused on the replica while it lives; resumed when dropped, even
/// if the test fails.
struct Paused;

impl Paused {
    fn start() -> Paused {
        psql_on_replica("SELECT pg_wal_replay_pause()");
        Paused
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        psql_on_replica("SELECT pg_wal_replay_resume()");
    }
}

/// The replica stopped while it lives; started again when dropped.
struct Stopped;

impl Stopped {
    fn start() -> Stopped {
        topology::run(&["stop-replica"]);
        Stopped
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        topology::run(&["start-replica"]);
    }
}

/// Runs `sql` on the replica with psql, which works from a `Drop` too.
fn psql_on_replica(sql: &str) {
    let status = std::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            "5433",
            "-U",
            "postgres",
            "-qAtc",
            sql,
            "test",
        ])
        .stdout(std::process::Stdio::null())
        .status();
    assert!(
        status.is_ok_and(|status| status.success()),
        "psql `{sql}` on the replica failed"
    );
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
