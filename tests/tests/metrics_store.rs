//! The monitor's metrics store on the real servers: the history, the alerts
//! and the alerts' deduplication windows survive a restart; retention keeps
//! the newest rows by count and by age; and when the store stops taking
//! writes (an INSERT privilege revoked on PostgreSQL, a table locked and the
//! connections killed on MariaDB, the write lock held on SQLite) sampling
//! goes on unhindered, samples wait in memory up to the history's size,
//! failures are counted, raised once per window and logged once, and the
//! waiting rows are written when the store comes back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use covet_txn::monitor::{
    AlertFilter, AlertRule, ManualClock, MetricsStore, Monitor, MonitorConfig, Restored,
    StoreStatus,
};
use covet_txn::{TxManager, TxOptions};

/// A store of each backend, over a pool of that backend.
trait IntoStore: sqlx::Database {
    fn store(pool: sqlx::Pool<Self>) -> MetricsStore;
}

impl IntoStore for sqlx::Postgres {
    fn store(pool: sqlx::Pool<Self>) -> MetricsStore {
        MetricsStore::postgres(pool)
    }
}

impl IntoStore for sqlx::MySql {
    fn store(pool: sqlx::Pool<Self>) -> MetricsStore {
        MetricsStore::mysql(pool)
    }
}

impl IntoStore for sqlx::Sqlite {
    fn store(pool: sqlx::Pool<Self>) -> MetricsStore {
        MetricsStore::sqlite(pool)
    }
}

/// The two tables of one test.
fn table_names(test: &str) -> (String, String) {
    (format!("{test}_samples"), format!("{test}_alerts"))
}

/// Waits up to `limit` for `done`, checking every 20 ms.
async fn eventually(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn status(monitor: &Monitor) -> StoreStatus {
    monitor.store_status().expect("the monitor has a store")
}

/// Runs a call named `name` that times out: a `timeouts` alert about it.
async fn time_out<DB: covet_txn::Backend>(manager: &TxManager<DB>, name: &'static str) {
    let timed_out = manager
        .transaction(
            TxOptions::new()
                .name(name)
                .timeout(Duration::from_millis(10)),
            || async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok::<_, covet_txn::Error>(())
            },
        )
        .await;
    assert!(matches!(timed_out, Err(covet_txn::Error::Timeout { .. })));
}

async fn commit<DB: covet_txn::Backend>(manager: &TxManager<DB>) {
    manager
        .transaction(TxOptions::new().name("deposit"), || async {
            Ok::<_, covet_txn::Error>(())
        })
        .await
        .expect("commits");
}

covet_txn_tests::each_backend! {
    use super::IntoStore;

    async fn fresh_tables(pool: &sqlx::Pool<Db>, test: &str) -> (String, String) {
        let (samples, alerts) = table_names(&format!("{test}_{BACKEND}"));
        for table in [&samples, &alerts] {
            let drop = format!("DROP TABLE IF EXISTS {table}");
            sqlx::raw_sql(sqlx::AssertSqlSafe(drop)).execute(pool).await.expect("drops");
        }
        (samples, alerts)
    }

    fn store(pool: &sqlx::Pool<Db>, (samples, alerts): &(String, String)) -> MetricsStore {
        <Db as IntoStore>::store(pool.clone())
            .tables(samples, alerts)
            .expect("plain table names")
            .create_schema()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn history_alerts_and_alert_windows_survive_a_restart() {
        let Some(pool) = pool("store_restart", 4).await else { return };
        let tables = fresh_tables(&pool, "store_restart").await;
        let config = || {
            MonitorConfig::new()
                .interval(Duration::from_millis(100))
                .store(store(&pool, &tables))
        };

        let manager = TxManager::builder(pool.clone()).name("store-restart").build();
        let monitor = manager.monitor_with(config());
        assert_eq!(
            monitor.restored().await.expect("an empty store reads back"),
            Restored::default()
        );
        commit(&manager).await;
        time_out(&manager, "slow_export").await;
        eventually(Duration::from_secs(10), "four samples and the alert", || {
            monitor.history().len() >= 4
                && monitor
                    .alerts(AlertFilter::new())
                    .iter()
                    .any(|alert| alert.rule == AlertRule::Timeouts)
        })
        .await;
        monitor.flush().await.expect("the store takes the batch");
        let written = status(&monitor);
        eprintln!(
            "{BACKEND}: {} writes, the last {:.2} ms",
            written.writes,
            written.last_write_ms.unwrap_or_default()
        );
        let before = monitor.history();
        let before_alerts = monitor.alerts(AlertFilter::new());
        monitor.shutdown();
        drop(monitor);
        drop(manager);

        // The process restarts: a new manager of the same name, a new monitor.
        let manager = TxManager::builder(pool.clone()).name("store-restart").build();
        let restarted_at = Instant::now();
        let monitor = manager.monitor_with(config());
        let restored = monitor.restored().await.expect("the store answers");
        assert!(
            restored.samples >= before.len() && restored.alerts >= before_alerts.len(),
            "{restored:?}, {} samples and {} alerts before",
            before.len(),
            before_alerts.len()
        );
        assert!(restored.open_windows >= 1, "{restored:?}");
        let history = monitor.history();
        assert_eq!(
            history[..before.len()],
            before[..],
            "the samples read back are those written"
        );
        // Alerts raised by one sample share a time, and come back in any
        // order among themselves.
        let key = |alert: &covet_txn::monitor::Alert| {
            (alert.at_ms, alert.rule.name(), alert.function.clone())
        };
        let mut alerts = monitor.alerts(AlertFilter::new())[..before_alerts.len()].to_vec();
        let mut before_alerts = before_alerts;
        alerts.sort_by_key(key);
        before_alerts.sort_by_key(key);
        assert_eq!(alerts, before_alerts);

        // The same trouble again, within the window: no second alert.
        time_out(&manager, "slow_export").await;
        let sampled = monitor.history().len();
        eventually(Duration::from_secs(10), "two more samples", || {
            monitor.history().len() >= sampled + 2
        })
        .await;
        let raised_again = monitor
            .alerts(AlertFilter::new())
            .iter()
            .filter(|alert| alert.rule == AlertRule::Timeouts)
            .count();
        assert_eq!(raised_again, 1, "the window opened before the restart still holds");
        assert!(restarted_at.elapsed() < Duration::from_secs(60));

        let stored = pool_scalar(&pool, format!("SELECT COUNT(*) FROM {}", tables.0)).await;
        assert!(stored >= before.len() as i64, "{stored} rows");
        monitor.shutdown();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_keeps_the_newest_rows_by_count_and_by_age() {
        let Some(app) = pool("store_retention", 2).await else { return };
        // A pool of its own, so that the store's writes never show in the
        // application pool's figures (and raise no pool alert).
        let Some(pool) = pool("store_retention_metrics", 2).await else { return };
        let tables = fresh_tables(&pool, "store_retention").await;
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let manager = TxManager::builder(app).name("store-retention").build();
        let monitor = manager.monitor_with(
            MonitorConfig::new()
                .interval(Duration::from_secs(3600))
                .dedup_window(Duration::ZERO)
                .clock(clock.clone())
                .store(
                    store(&pool, &tables)
                        .keep_samples(5)
                        .keep_alerts(3)
                        .keep_for(Duration::from_secs(600)),
                ),
        );
        monitor.restored().await.expect("the store answers");
        for name in ["a", "b", "c", "d"] {
            time_out(&manager, name).await;
        }
        let mut taken = Vec::new();
        for _ in 0..12 {
            clock.advance(Duration::from_secs(1));
            taken.push(monitor.sample().expect("a sample").taken_at_ms as i64);
        }
        monitor.flush().await.expect("written");
        let kept = |sql: String| {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
                    .fetch_all(&pool)
                    .await
                    .expect("reads")
            }
        };
        let samples_sql = format!("SELECT taken_at_ms FROM {} ORDER BY taken_at_ms", tables.0);
        assert_eq!(kept(samples_sql.clone()).await, taken[7..], "the newest five samples");
        let alerts = pool_scalar(&pool, format!("SELECT COUNT(*) FROM {}", tables.1)).await;
        assert_eq!(alerts, 3, "four timeout alerts, three kept");
        assert_eq!(status(&monitor).rows_deleted, 7 + 1);

        clock.advance(Duration::from_secs(20 * 60));
        let last = monitor.sample().expect("a sample").taken_at_ms as i64;
        monitor.flush().await.expect("written");
        assert_eq!(kept(samples_sql).await, [last], "older than ten minutes: deleted");
        assert_eq!(
            pool_scalar(&pool, format!("SELECT COUNT(*) FROM {}", tables.1)).await,
            0
        );
        monitor.shutdown();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_documented_schema_is_the_one_created() {
        let Some(pool) = pool("store_schema", 1).await else { return };
        let default = <Db as IntoStore>::store(pool.clone()).schema_sql();
        let readme = include_str!("../../README.md");
        assert!(
            readme.contains(default.trim_end()),
            "the README prints the {BACKEND} schema:\n{default}"
        );
    }
}

/// PostgreSQL: the store's role loses INSERT, then gets it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_writes_wait_while_insert_is_revoked_and_catch_up_when_granted() {
    let Some(admin) = covet_txn_tests::postgres(4).await else {
        return;
    };
    let (samples, alerts) = table_names("store_revoked_postgres");
    let role = "covet_metrics_writer";
    let setup = format!(
        "DROP TABLE IF EXISTS {samples}; DROP TABLE IF EXISTS {alerts};
         DO $$ BEGIN CREATE ROLE {role} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(setup))
        .execute(&admin)
        .await
        .expect("tables dropped, role there");
    let store = |pool| {
        MetricsStore::postgres(pool)
            .tables(&samples, &alerts)
            .expect("plain names")
    };
    store(admin.clone())
        .ensure_schema()
        .await
        .expect("the schema");
    let grant = format!("GRANT SELECT, INSERT, DELETE ON {samples}, {alerts} TO {role}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(grant.clone()))
        .execute(&admin)
        .await
        .expect("granted");
    let Some(writer_pool) =
        covet_txn_tests::postgres_with(covet_txn_tests::postgres_options().username(role), 2).await
    else {
        return;
    };

    let manager = TxManager::builder(admin.clone())
        .name("store-revoked")
        .build();
    let monitor = manager.monitor_with(
        MonitorConfig::new()
            .interval(Duration::from_millis(100))
            .capacity(8)
            .store(store(writer_pool)),
    );
    let outage = Outage::begin(&monitor, &samples).await;
    let revoke = format!("REVOKE INSERT ON {samples} FROM {role}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(revoke))
        .execute(&admin)
        .await
        .expect("revoked");
    let stored_before = outage.rows(AnyPool::Postgres(&admin)).await;
    let during = outage.wait_for_failures(&monitor, &manager, 5).await;
    assert!(
        during
            .last_error
            .as_deref()
            .is_some_and(|error| error.contains("permission denied")),
        "{during:?}"
    );
    assert_eq!(
        outage.rows(AnyPool::Postgres(&admin)).await,
        stored_before,
        "nothing written meanwhile"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(grant))
        .execute(&admin)
        .await
        .expect("granted again");
    outage.end(&monitor, AnyPool::Postgres(&admin)).await;
}

/// MariaDB: the samples table is locked by another session, so writes hang
/// until their timeout; then the lock goes and the store's connections are
/// killed, and the pool's new connections write what waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_writes_time_out_on_a_locked_table_and_survive_killed_connections() {
    let Some(admin) = covet_txn_tests::mysql(4).await else {
        return;
    };
    let (samples, alerts) = table_names("store_locked_mysql");
    let fresh = format!("DROP TABLE IF EXISTS {samples}; DROP TABLE IF EXISTS {alerts}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(fresh))
        .execute(&admin)
        .await
        .expect("dropped");
    let connections = Arc::new(Mutex::new(Vec::<u64>::new()));
    let seen = Arc::clone(&connections);
    let options = covet_txn_tests::pool_options::<sqlx::MySql>(2).after_connect(move |conn, _| {
        let seen = Arc::clone(&seen);
        Box::pin(async move {
            let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
                .fetch_one(&mut *conn)
                .await?;
            seen.lock().expect("not poisoned").push(id);
            Ok(())
        })
    });
    let Some(store_pool) =
        covet_txn_tests::mysql_pool(options, covet_txn_tests::mysql_options()).await
    else {
        return;
    };
    let manager = TxManager::builder(admin.clone())
        .name("store-locked")
        .build();
    let monitor = manager.monitor_with(
        MonitorConfig::new()
            .interval(Duration::from_millis(100))
            .capacity(8)
            .store(
                MetricsStore::mysql(store_pool)
                    .tables(&samples, &alerts)
                    .expect("plain names")
                    .create_schema()
                    .write_timeout(Duration::from_millis(1500)),
            ),
    );
    let outage = Outage::begin(&monitor, &samples).await;
    let mut locker = admin.acquire().await.expect("a connection");
    let lock = format!("LOCK TABLES {samples} WRITE");
    sqlx::raw_sql(sqlx::AssertSqlSafe(lock))
        .execute(&mut *locker)
        .await
        .expect("locked");
    // A write hangs for its whole timeout: sampling must not wait for it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..5 {
        let started = Instant::now();
        monitor.sample().expect("a sample");
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "a sample waited {:?} on the store",
            started.elapsed()
        );
    }
    let during = outage.wait_for_failures(&monitor, &manager, 2).await;
    assert!(
        during
            .last_error
            .as_deref()
            .is_some_and(|error| error.contains("did not answer")),
        "{during:?}"
    );
    sqlx::raw_sql("UNLOCK TABLES")
        .execute(&mut *locker)
        .await
        .expect("unlocked");
    drop(locker);
    let ids: Vec<u64> = connections.lock().expect("not poisoned").clone();
    assert!(!ids.is_empty());
    for id in ids {
        // Some may be gone already; the point is that none is left.
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("KILL CONNECTION {id}")))
            .execute(&admin)
            .await;
    }
    outage.end(&monitor, AnyPool::MySql(&admin)).await;
}

/// The log of this test binary: every event of every test, captured by a
/// global subscriber (a per-thread one misses events whose callsites other
/// threads registered first). Tests tell their lines apart by backend.
fn log() -> &'static Captured {
    static LOG: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let log = Captured::default();
        tracing::subscriber::set_global_default(log.clone())
            .expect("the only subscriber of this test binary");
        log
    })
}

/// SQLite: another connection holds the file's write lock; the warning is
/// logged once however often the write fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_writes_wait_for_a_held_write_lock_and_the_failure_is_logged_once() {
    let log = log();
    let path = covet_txn_tests::sqlite_path("store_sqlite_lock_metrics");
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.clone().into_os_string();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_millis(50));
    let store_pool = covet_txn_tests::pool_options::<sqlx::Sqlite>(2)
        .connect_with(options.clone())
        .await
        .expect("the metrics file");
    let Some(app) = covet_txn_tests::sqlite("store_sqlite_lock_app", 2).await else {
        return;
    };
    let (samples, alerts) = table_names("store_lock_sqlite");
    let manager = TxManager::builder(app).name("store-sqlite").build();
    let monitor = manager.monitor_with(
        MonitorConfig::new()
            .interval(Duration::from_millis(100))
            .capacity(8)
            .store(
                MetricsStore::sqlite(store_pool.clone())
                    .tables(&samples, &alerts)
                    .expect("plain names")
                    .create_schema(),
            ),
    );
    let outage = Outage::begin(&monitor, &samples).await;
    let mut locker = <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&options)
        .await
        .expect("a second connection");
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut locker)
        .await
        .expect("the write lock");
    let during = outage.wait_for_failures(&monitor, &manager, 4).await;
    assert!(
        during
            .last_error
            .as_deref()
            .is_some_and(|error| error.contains("locked") || error.contains("busy")),
        "{during:?}"
    );
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut locker)
        .await
        .expect("released");
    outage.end(&monitor, AnyPool::Sqlite(&store_pool)).await;
    let warnings: Vec<String> = log
        .lines()
        .into_iter()
        .filter(|line| line.contains("metrics_store_failures") && line.contains("(sqlite)"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning for {} failures: {warnings:?}",
        during.failures
    );
    assert!(
        warnings[0].starts_with("WARN covet_txn::alerts"),
        "{warnings:?}"
    );
    assert!(
        log.lines()
            .iter()
            .any(|line| line.contains("written to again") && line.contains("backend=\"sqlite\"")),
        "the recovery is logged"
    );
}

/// A pool of any backend, to count rows with.
#[derive(Clone, Copy)]
enum AnyPool<'a> {
    Postgres(&'a sqlx::PgPool),
    MySql(&'a sqlx::MySqlPool),
    Sqlite(&'a sqlx::SqlitePool),
}

impl AnyPool<'_> {
    async fn scalar(self, sql: String) -> i64 {
        let read = match self {
            AnyPool::Postgres(pool) => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
                    .fetch_one(pool)
                    .await
            }
            AnyPool::MySql(pool) => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
                    .fetch_one(pool)
                    .await
            }
            AnyPool::Sqlite(pool) => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
                    .fetch_one(pool)
                    .await
            }
        };
        read.unwrap_or_else(|error| panic!("`{sql}` failed: {error}"))
    }
}

/// An outage of the store, watched from before it begins to after it ends.
struct Outage {
    samples_table: String,
    capacity: usize,
    last_sample_during: AtomicU64,
}

impl Outage {
    /// Waits until the store has taken a first write.
    async fn begin(monitor: &Monitor, samples_table: &str) -> Outage {
        monitor.restored().await.expect("the store answers");
        eventually(Duration::from_secs(10), "a first write", || {
            status(monitor).writes >= 1
        })
        .await;
        Outage {
            samples_table: samples_table.to_owned(),
            capacity: 8,
            last_sample_during: AtomicU64::new(0),
        }
    }

    async fn rows(&self, pool: AnyPool<'_>) -> i64 {
        pool.scalar(format!("SELECT COUNT(*) FROM {}", self.samples_table))
            .await
    }

    /// While the store refuses: transactions and sampling go on, samples
    /// wait up to the history's size (the oldest dropped), failures are
    /// counted, and raised as one alert. Returns the status then.
    async fn wait_for_failures<DB: covet_txn::Backend>(
        &self,
        monitor: &Monitor,
        manager: &TxManager<DB>,
        failures: u64,
    ) -> StoreStatus {
        let last_taken = || monitor.history().last().map(|sample| sample.taken_at_ms);
        let sampled = last_taken();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut slowest = Duration::ZERO;
        loop {
            let began = Instant::now();
            commit(manager).await;
            slowest = slowest.max(began.elapsed());
            let now = status(monitor);
            if now.consecutive_failures >= failures && now.samples_dropped > 0 {
                break;
            }
            assert!(Instant::now() < deadline, "the store kept failing: {now:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let during = status(monitor);
        // A failing or hanging store (MariaDB's writes hang for 1.5 s) never
        // holds up the application's transactions.
        assert!(
            slowest < Duration::from_millis(500),
            "a transaction took {slowest:?} during the outage"
        );
        assert_eq!(during.pending_samples, self.capacity, "{during:?}");
        assert!(last_taken() > sampled, "sampling went on during the outage");
        let raised: Vec<_> = monitor
            .alerts(AlertFilter::new())
            .into_iter()
            .filter(|alert| alert.rule == AlertRule::MetricsStoreFailures)
            .collect();
        assert_eq!(raised.len(), 1, "one alert per window: {raised:?}");
        if let Some(last) = monitor.history().last() {
            self.last_sample_during
                .store(last.taken_at_ms, Ordering::SeqCst);
        }
        during
    }

    /// After the store is back: what waited is written, and the alert of
    /// the outage with it.
    async fn end(&self, monitor: &Monitor, pool: AnyPool<'_>) {
        eventually(Duration::from_secs(20), "the waiting rows written", || {
            let now = status(monitor);
            now.consecutive_failures == 0 && now.pending_samples <= 1 && now.pending_alerts == 0
        })
        .await;
        let newest = pool
            .scalar(format!(
                "SELECT MAX(taken_at_ms) FROM {}",
                self.samples_table
            ))
            .await;
        let last_during = self.last_sample_during.load(Ordering::SeqCst);
        assert!(
            newest >= last_during as i64,
            "the samples of the outage were written: newest {newest}, last during {last_during}"
        );
        let now = status(monitor);
        assert!(now.alerts_written >= 1, "the outage's alert: {now:?}");
        eprintln!(
            "store write: {:.2} ms ({} writes, {} failures)",
            now.last_write_ms.unwrap_or_default(),
            now.writes,
            now.failures
        );
        monitor.shutdown();
    }
}

/// Every event of this thread, as `LEVEL target: field=value ...`.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<String>>>);

impl Captured {
    fn lines(&self) -> Vec<String> {
        self.0.lock().map(|lines| lines.clone()).unwrap_or_default()
    }
}

struct Line<'a>(&'a mut String);

impl tracing::field::Visit for Line<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

impl tracing::Subscriber for Captured {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let metadata = event.metadata();
        let mut line = format!("{} {}:", metadata.level(), metadata.target());
        event.record(&mut Line(&mut line));
        if let Ok(mut lines) = self.0.lock() {
            lines.push(line);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
