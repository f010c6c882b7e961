//! MariaDB's GTID pair (3307, a primary with a binary log; 3308, its
//! replica with `read_only`), as the replica scenarios see it: its I/O
//! thread stopped cuts the replica off, `.ci/topology` stops and starts it.

use covet_txn::{Error, TxManager};
use sqlx::{MySql, MySqlPool};
use tokio::sync::Mutex;

use super::ReplicaTopology;
use crate::topology::{self, MARIADB_PRIMARY_URL, MARIADB_REPLICA_URL};

/// The pair on 3307 and 3308.
pub struct MariaDbPair;

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

impl ReplicaTopology for MariaDbPair {
    type Db = MySql;
    const MANAGER: &'static str = "mysql";
    const SERVER: &'static str = "SELECT CAST(@@server_id AS SIGNED)";
    const PRIMARY: i64 = 1;
    const REPLICA: i64 = 2;
    const TABLE_OPTIONS: &'static str = " ENGINE = InnoDB";

    fn turn() -> &'static Mutex<()> {
        &ONE_AT_A_TIME
    }

    async fn primary() -> Option<MySqlPool> {
        topology::pool(MARIADB_PRIMARY_URL, 4).await
    }

    async fn replica() -> Option<MySqlPool> {
        topology::pool(MARIADB_REPLICA_URL, 4).await
    }

    async fn number(manager: &TxManager<MySql>, sql: String) -> Result<i64, Error> {
        super::number(manager, sql).await
    }

    async fn execute(pool: &MySqlPool, sql: String) {
        super::execute(pool, sql).await;
    }

    async fn caught_up(primary: &MySqlPool, replica: &MySqlPool) -> bool {
        let written: String = sqlx::query_scalar("SELECT @@gtid_binlog_pos")
            .fetch_one(primary)
            .await
            .expect("the primary's position");
        let replayed: String = sqlx::query_scalar("SELECT @@gtid_slave_pos")
            .fetch_one(replica)
            .await
            .expect("the replica's position");
        replayed == written
    }

    fn cut_off() {
        // Its SQL thread runs, so only its position says it lags.
        topology::run(&["mariadb-disconnect-replica"]);
    }

    fn reconnect() {
        topology::run(&["mariadb-resume-replica"]);
    }

    fn stop_replica() {
        topology::run(&["mariadb-stop-replica"]);
    }

    fn start_replica() {
        topology::run(&["mariadb-start-replica"]);
    }

    /// Transactions (GTID sequence numbers): exactly the one.
    fn one_write_behind(lag_bytes: Option<u64>) -> bool {
        lag_bytes == Some(1)
    }
}
