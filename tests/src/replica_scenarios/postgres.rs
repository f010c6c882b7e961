//! PostgreSQL's streaming replica of the shared cluster (5433), as the
//! replica scenarios see it: replay paused cuts it off, `.ci/topology`
//! stops and starts it.

use covet_txn::{Error, TxManager};
use sqlx::{PgPool, Postgres};
use tokio::sync::Mutex;

use super::ReplicaTopology;
use crate::topology::{self, REPLICA_URL};

/// The shared cluster on 5432 and its replica on 5433.
pub struct PgStreaming;

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

impl ReplicaTopology for PgStreaming {
    type Db = Postgres;
    const MANAGER: &'static str = "postgresql";
    const SERVER: &'static str = "SELECT pg_is_in_recovery()::int4::int8";
    const PRIMARY: i64 = 0;
    const REPLICA: i64 = 1;
    const TABLE_OPTIONS: &'static str = "";

    fn turn() -> &'static Mutex<()> {
        &ONE_AT_A_TIME
    }

    async fn primary() -> Option<PgPool> {
        crate::postgres(4).await
    }

    async fn replica() -> Option<PgPool> {
        topology::pool(REPLICA_URL, 4).await
    }

    async fn number(manager: &TxManager<Postgres>, sql: String) -> Result<i64, Error> {
        super::number(manager, sql).await
    }

    async fn execute(pool: &PgPool, sql: String) {
        super::execute(pool, sql).await;
    }

    async fn caught_up(primary: &PgPool, replica: &PgPool) -> bool {
        let written: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(primary)
            .await
            .expect("the primary's position");
        sqlx::query_scalar("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn")
            .bind(written)
            .fetch_one(replica)
            .await
            .expect("the replica's position")
    }

    fn cut_off() {
        psql_on_replica("SELECT pg_wal_replay_pause()");
    }

    fn reconnect() {
        psql_on_replica("SELECT pg_wal_replay_resume()");
    }

    fn stop_replica() {
        topology::run(&["stop-replica"]);
    }

    fn start_replica() {
        topology::run(&["start-replica"]);
    }

    /// Bytes of WAL, as many as the write took.
    fn one_write_behind(lag_bytes: Option<u64>) -> bool {
        lag_bytes.is_some_and(|bytes| bytes > 0)
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
