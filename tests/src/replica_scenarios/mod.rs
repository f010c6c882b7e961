//! The read-replica scenarios, written once and run on every replicated
//! topology `.ci/topology` builds (PostgreSQL's streaming replica,
//! MariaDB's GTID pair): read-only transactions run on the replica and
//! read-write ones on the primary; a replica cut off, stopped or behind is
//! skipped and counted, then serves again; a task reads its own writes, and
//! so does another task given its session token.
//!
//! [`ReplicaTopology`] is what differs between backends: the servers, the
//! SQL that says which one a transaction ran on, how the replica is cut
//! off or stopped, how far behind one write leaves it. The scenarios
//! change the one replica, so each takes its topology's turn first.

mod mariadb;
mod outages;
mod own_writes;
mod postgres;

use std::future::Future;
use std::time::Duration;

use covet_txn::{Backend, Error, ReplicaStatus, TxManager, TxOptions};
use sqlx::{ColumnIndex, Decode, Executor, Pool, Type};
use tokio::sync::{Mutex, MutexGuard};

pub use mariadb::MariaDbPair;
pub use outages::*;
pub use own_writes::*;
pub use postgres::PgStreaming;

/// How often the managers of the scenarios probe their replica.
pub const PROBE: Duration = Duration::from_millis(50);
/// The lag bound of the scenarios' managers, unless one needs a longer one.
pub const MAX_LAG: Duration = Duration::from_millis(500);
/// A read-only transaction, which a serving replica runs.
pub const READ_ONLY: TxOptions = TxOptions::new().read_only(true);

/// A primary with one replica, as a backend runs them.
pub trait ReplicaTopology: 'static {
    /// The backend.
    type Db: Backend;
    /// The manager's label in the Prometheus text.
    const MANAGER: &'static str;
    /// A query whose one BIGINT says which server runs it: [`Self::PRIMARY`],
    /// [`Self::REPLICA`] or something else.
    const SERVER: &'static str;
    /// What [`Self::SERVER`] answers on the primary.
    const PRIMARY: i64;
    /// What [`Self::SERVER`] answers on the replica.
    const REPLICA: i64;
    /// What follows the column list of a `CREATE TABLE`.
    const TABLE_OPTIONS: &'static str;

    /// The lock the tests that change this topology take turns on (through
    /// [`Replicated::connect`]).
    fn turn() -> &'static Mutex<()>;
    /// A pool on the primary, or `None` after a notice.
    fn primary() -> impl Future<Output = Option<Pool<Self::Db>>> + Send;
    /// A pool on the replica, or `None` after a notice.
    fn replica() -> impl Future<Output = Option<Pool<Self::Db>>> + Send;
    /// The one BIGINT `sql` returns, run in `manager`'s current transaction.
    fn number(
        manager: &TxManager<Self::Db>,
        sql: String,
    ) -> impl Future<Output = Result<i64, Error>> + Send + '_;
    /// Runs `sql` on `pool`, outside any transaction, panicking if it fails.
    fn execute(pool: &Pool<Self::Db>, sql: String) -> impl Future<Output = ()> + Send + '_;
    /// Whether `replica` has replayed everything `primary` has written.
    fn caught_up<'a>(
        primary: &'a Pool<Self::Db>,
        replica: &'a Pool<Self::Db>,
    ) -> impl Future<Output = bool> + Send + 'a;
    /// Makes the replica receive no more writes while it keeps answering and
    /// counts as replaying ([`Self::reconnect`] undoes it).
    fn cut_off();
    /// Lets a replica [`Self::cut_off`] catch up again.
    fn reconnect();
    /// Shuts the replica's server down ([`Self::start_replica`] undoes it).
    fn stop_replica();
    /// Starts the replica's server again.
    fn start_replica();
    /// Whether a replica's reported lag is what one write it missed makes.
    fn one_write_behind(lag_bytes: Option<u64>) -> bool;
}

/// A manager on a topology's primary with its replica, probed once, and the
/// two pools; the topology's turn is held until it goes.
pub struct Replicated<T: ReplicaTopology> {
    /// Reads on the replica, writes on the primary.
    pub manager: TxManager<T::Db>,
    /// The primary's pool.
    pub primary: Pool<T::Db>,
    /// The replica's pool.
    pub replica: Pool<T::Db>,
    _turn: MutexGuard<'static, ()>,
}

impl<T: ReplicaTopology> Replicated<T> {
    /// Takes the topology's turn and connects with `max_lag` as the lag
    /// bound, or `None` after a notice.
    pub async fn connect(max_lag: Duration) -> Option<Self> {
        let turn = T::turn().lock().await;
        let primary = T::primary().await?;
        let replica = T::replica().await?;
        let manager = TxManager::builder(primary.clone())
            .replica(replica.clone())
            .max_replica_lag(max_lag)
            .replica_probe_interval(PROBE)
            .build();
        manager.refresh_replicas().await;
        Some(Replicated {
            manager,
            primary,
            replica,
            _turn: turn,
        })
    }

    /// [`Self::connect`], then [`Self::fresh_table`].
    pub async fn with_table(max_lag: Duration, table: &str) -> Option<Self> {
        let replicated = Self::connect(max_lag).await?;
        replicated.fresh_table(table).await;
        Some(replicated)
    }

    /// Makes `table (value BIGINT)` afresh on the primary and waits until the
    /// replica has replayed that far (a table of an earlier run, with its
    /// rows, may still be there).
    pub async fn fresh_table(&self, table: &str) {
        let options = T::TABLE_OPTIONS;
        T::execute(
            &self.primary,
            format!(
                "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (value BIGINT NOT NULL){options}"
            ),
        )
        .await;
        for _ in 0..200 {
            if T::caught_up(&self.primary, &self.replica).await {
                return;
            }
            tokio::time::sleep(PROBE).await;
        }
        panic!("the replica never got {table}");
    }
}

/// The one BIGINT `sql` returns, run in `manager`'s current transaction
/// over the simple protocol: [`ReplicaTopology::number`] for a backend.
async fn number<DB>(manager: &TxManager<DB>, sql: String) -> Result<i64, Error>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: for<'r> Decode<'r, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    match crate::column(&mut *manager.conn()?, sql.clone()).await?[..] {
        [value] => Ok(value),
        ref other => panic!("`{sql}` returned {other:?}, not one row"),
    }
}

/// Runs `sql` on `pool`, panicking if it fails: [`ReplicaTopology::execute`]
/// for a backend.
async fn execute<DB>(pool: &Pool<DB>, sql: String)
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    if let Err(error) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
        .execute(pool)
        .await
    {
        panic!("`{sql}` failed: {error}");
    }
}

/// What [`ReplicaTopology::SERVER`] says of the server a transaction ran on.
pub async fn server<T: ReplicaTopology>(manager: &TxManager<T::Db>, options: TxOptions) -> i64 {
    manager
        .transaction(options, || T::number(manager, T::SERVER.to_owned()))
        .await
        .expect("a transaction")
}

/// Writes `value` into `table` in a read-write transaction.
pub async fn write<T: ReplicaTopology>(
    manager: &TxManager<T::Db>,
    table: &str,
    value: i64,
) -> Result<(), Error> {
    let sql = format!("INSERT INTO {table} (value) VALUES ({value}) RETURNING value");
    manager
        .transaction(TxOptions::new(), || T::number(manager, sql))
        .await?;
    Ok(())
}

/// Whether a read-only transaction sees `value` in `table`, and what
/// [`ReplicaTopology::SERVER`] says of the server it ran on.
pub async fn read<T: ReplicaTopology>(
    manager: &TxManager<T::Db>,
    table: &str,
    value: i64,
) -> (bool, i64) {
    let sql = format!("SELECT COUNT(*) FROM {table} WHERE value = {value}");
    manager
        .transaction(READ_ONLY, || async {
            let rows = T::number(manager, sql).await?;
            let server = T::number(manager, T::SERVER.to_owned()).await?;
            Ok::<_, Error>((rows > 0, server))
        })
        .await
        .expect("a read")
}

/// Waits up to 20 s for the replica's status to pass `check`.
pub async fn wait_for<DB: Backend>(manager: &TxManager<DB>, check: fn(&ReplicaStatus) -> bool) {
    for _ in 0..400 {
        if check(&manager.replicas().replicas[0]) {
            return;
        }
        tokio::time::sleep(PROBE).await;
    }
    panic!("the replica never got there: {:?}", manager.replicas());
}

/// Read-only transactions run on the replica, read-write ones (said or
/// not) on the primary; the report and the Prometheus text count them.
pub async fn read_only_transactions_run_on_the_replica_and_the_others_on_the_primary<
    T: ReplicaTopology,
>() {
    let Some(replicated) = Replicated::<T>::connect(MAX_LAG).await else {
        return;
    };
    let manager = &replicated.manager;
    assert_eq!(server::<T>(manager, READ_ONLY).await, T::REPLICA);
    assert_eq!(server::<T>(manager, TxOptions::new()).await, T::PRIMARY);
    assert_eq!(
        server::<T>(manager, TxOptions::new().read_only(false)).await,
        T::PRIMARY
    );
    let report = manager.replicas();
    assert_eq!(report.replicas.len(), 1, "{report:?}");
    assert_eq!(report.replicas[0].reads, 1, "{report:?}");
    assert!(report.replicas[0].serving, "{report:?}");
    assert!(
        report.replicas[0].lag.is_some_and(|lag| lag <= MAX_LAG),
        "{report:?}"
    );
    assert!(report.replicas[0].lag_bytes.is_some(), "{report:?}");
    let exposed = manager.prometheus_text().expect("the Prometheus text");
    let manager = T::MANAGER;
    for line in [
        format!("replica_reads_total{{manager=\"{manager}\",replica=\"replica-0\"}} 1"),
        format!("replica_serving{{manager=\"{manager}\",replica=\"replica-0\"}} 1"),
        format!(
            "reads_on_primary_total{{manager=\"{manager}\",reason=\"replicas_unavailable\"}} 0"
        ),
        format!("replica_lag_seconds{{manager=\"{manager}\",replica=\"replica-0\"}} "),
    ] {
        assert!(exposed.contains(&line), "no `{line}` in\n{exposed}");
    }
}

/// The dashboard's state shows the replica, the read it served, and that
/// no read went to the primary for want of it.
pub async fn the_dashboard_shows_the_replica_and_where_reads_went<T: ReplicaTopology>() {
    let Some(replicated) = Replicated::<T>::connect(MAX_LAG).await else {
        return;
    };
    let manager = &replicated.manager;
    assert_eq!(server::<T>(manager, READ_ONLY).await, T::REPLICA);
    let running = covet_txn_dashboard::Dashboard::new(manager.monitor())
        .bind("127.0.0.1:0")
        .bearer_token("replica-t0ken")
        .start()
        .await
        .expect("the dashboard");
    let (status, _, state) =
        crate::http_get(running.addr(), "/api/state", Some("Bearer replica-t0ken")).await;
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

/// A read-only call that joins a read-write transaction runs in it, on the
/// primary, and is no replica read.
pub async fn a_read_only_call_inside_a_read_write_transaction_joins_it_on_the_primary<
    T: ReplicaTopology,
>() {
    let Some(replicated) = Replicated::<T>::connect(MAX_LAG).await else {
        return;
    };
    let manager = &replicated.manager;
    let inner = manager
        .transaction(TxOptions::new(), || async {
            let joined = READ_ONLY.propagation(covet_txn::Propagation::Required);
            Ok::<_, Error>(server::<T>(manager, joined).await)
        })
        .await
        .expect("the transaction");
    assert_eq!(inner, T::PRIMARY, "the joined read ran elsewhere");
    assert_eq!(manager.replicas().replicas[0].reads, 0);
}
