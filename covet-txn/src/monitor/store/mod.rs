//! The metrics store: the monitor's samples and alerts kept in a database
//! table, so that history, alerts and alert deduplication outlive the
//! process. It owns the settings ([`MetricsStore`]), what a store reports
//! about itself ([`StoreStatus`]) and its errors; `sql` holds the SQL per
//! backend, `codec` the row format, and `writer` the background writing.
//!
//! Writes come from the monitor's own background task, on the pool given
//! here, once per sampling interval: never from a transaction's path, and
//! never through covet-txn's transaction machinery.

mod codec;
mod sql;
pub(crate) mod writer;

use std::time::Duration;

use serde::Serialize;

use self::sql::StorePool;

/// Where and how a monitor stores its samples and alerts: a pool of any of
/// the three backends (the application's own database, or a separate one
/// such as a local SQLite file), the tables, and how much to keep.
///
/// ```no_run
/// # async fn demo(manager: covet_txn::TxManager<sqlx::Postgres>) -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use covet_txn::monitor::{MetricsStore, MonitorConfig};
///
/// let metrics_db = sqlx::SqlitePool::connect("sqlite:metrics.db?mode=rwc").await?;
/// let store = MetricsStore::sqlite(metrics_db)
///     .create_schema() // CREATE TABLE IF NOT EXISTS, once, when the monitor starts
///     .keep_for(Duration::from_secs(7 * 24 * 3600))
///     .keep_samples(100_000);
/// let monitor = manager.monitor_with(MonitorConfig::new().store(store));
/// let restored = monitor.restored().await?; // the history from before the restart
/// println!("{} samples and {} alerts restored", restored.samples, restored.alerts);
/// # Ok(()) }
/// ```
///
/// The schema, on PostgreSQL (MySQL/MariaDB writes `DOUBLE`, SQLite
/// `INTEGER` and `REAL`; [`schema_sql`](Self::schema_sql) prints a store's
/// own):
///
/// ```sql
/// CREATE TABLE IF NOT EXISTS covet_txn_samples (
///     manager       VARCHAR(100) NOT NULL,
///     taken_at_ms   BIGINT NOT NULL,
///     committed     BIGINT NOT NULL,
///     failed        BIGINT NOT NULL,
///     retries       BIGINT NOT NULL,
///     p99_ms        DOUBLE PRECISION,
///     active        BIGINT NOT NULL,
///     health        BIGINT NOT NULL,
///     sample        TEXT NOT NULL,
///     PRIMARY KEY (manager, taken_at_ms)
/// );
/// CREATE TABLE IF NOT EXISTS covet_txn_alerts (
///     manager       VARCHAR(100) NOT NULL,
///     at_ms         BIGINT NOT NULL,
///     rule          VARCHAR(64) NOT NULL,
///     function_name VARCHAR(255) NOT NULL,
///     level         VARCHAR(16) NOT NULL,
///     message       TEXT NOT NULL,
///     value         DOUBLE PRECISION NOT NULL,
///     threshold     DOUBLE PRECISION NOT NULL,
///     PRIMARY KEY (manager, at_ms, rule, function_name)
/// );
/// ```
#[derive(Clone)]
pub struct MetricsStore {
    pub(crate) pool: StorePool,
    pub(crate) tables: Tables,
    pub(crate) retention: Retention,
    pub(crate) create_schema: bool,
    pub(crate) write_timeout: Duration,
}

impl std::fmt::Debug for MetricsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsStore")
            .field("backend", &self.pool.system())
            .field("tables", &self.tables)
            .field("retention", &self.retention)
            .field("create_schema", &self.create_schema)
            .field("write_timeout", &self.write_timeout)
            .finish()
    }
}

/// The two tables a store writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tables {
    pub(crate) samples: String,
    pub(crate) alerts: String,
}

/// How much a store keeps, per manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retention {
    pub(crate) max_age: Duration,
    pub(crate) max_samples: u64,
    pub(crate) max_alerts: u64,
}

/// How many samples a store keeps per manager, by default: a week at the
/// default 10-second interval, and then some.
pub const DEFAULT_MAX_SAMPLES: u64 = 100_000;
/// How many alerts a store keeps per manager, by default.
pub const DEFAULT_MAX_ALERTS: u64 = 10_000;
/// How long a store keeps samples and alerts, by default: 7 days.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long one write may take before it counts as failed, by default.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

impl MetricsStore {
    fn with(pool: StorePool) -> Self {
        MetricsStore {
            pool,
            tables: Tables {
                samples: "covet_txn_samples".to_owned(),
                alerts: "covet_txn_alerts".to_owned(),
            },
            retention: Retention {
                max_age: DEFAULT_MAX_AGE,
                max_samples: DEFAULT_MAX_SAMPLES,
                max_alerts: DEFAULT_MAX_ALERTS,
            },
            create_schema: false,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
        }
    }

    /// A store in a PostgreSQL database.
    #[cfg(feature = "postgres")]
    pub fn postgres(pool: sqlx::PgPool) -> Self {
        MetricsStore::with(StorePool::Postgres(pool))
    }

    /// A store in a MySQL or MariaDB database.
    #[cfg(feature = "mysql")]
    pub fn mysql(pool: sqlx::MySqlPool) -> Self {
        MetricsStore::with(StorePool::MySql(pool))
    }

    /// A store in a SQLite database. Give it a file of its own (or a pool of
    /// its own): SQLite has one writer, and the application's writers would
    /// wait for the store's few milliseconds per interval.
    #[cfg(feature = "sqlite")]
    pub fn sqlite(pool: sqlx::SqlitePool) -> Self {
        MetricsStore::with(StorePool::Sqlite(pool))
    }

    /// Other table names than `covet_txn_samples` and `covet_txn_alerts`:
    /// identifiers of letters, digits and `_` (not starting with a digit, at
    /// most 63 characters), optionally qualified by a schema (`metrics.samples`).
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")]
    /// # fn demo(pool: sqlx::SqlitePool) {
    /// use covet_txn::monitor::MetricsStore;
    /// assert!(MetricsStore::sqlite(pool.clone()).tables("samples", "alerts").is_ok());
    /// assert!(MetricsStore::sqlite(pool).tables("samples; DROP TABLE x", "alerts").is_err());
    /// # }
    /// ```
    pub fn tables(mut self, samples: &str, alerts: &str) -> Result<Self, StoreError> {
        for name in [samples, alerts] {
            if !is_table_name(name) {
                return Err(StoreError::InvalidTableName(name.to_owned()));
            }
        }
        self.tables = Tables {
            samples: samples.to_owned(),
            alerts: alerts.to_owned(),
        };
        Ok(self)
    }

    /// Creates the tables (`CREATE TABLE IF NOT EXISTS`) when the monitor
    /// starts, before it reads or writes them.
    pub fn create_schema(mut self) -> Self {
        self.create_schema = true;
        self
    }

    /// Deletes samples and alerts older than this (default 7 days).
    pub fn keep_for(mut self, age: Duration) -> Self {
        self.retention.max_age = age;
        self
    }

    /// Keeps at most this many samples per manager, the newest (default
    /// [`DEFAULT_MAX_SAMPLES`]).
    pub fn keep_samples(mut self, rows: u64) -> Self {
        self.retention.max_samples = rows.max(1);
        self
    }

    /// Keeps at most this many alerts per manager, the newest (default
    /// [`DEFAULT_MAX_ALERTS`]).
    pub fn keep_alerts(mut self, rows: u64) -> Self {
        self.retention.max_alerts = rows.max(1);
        self
    }

    /// How long one write may take before it counts as failed and its rows
    /// wait for the next one (default 5 s).
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The statements that create this store's tables, for its backend.
    pub fn schema_sql(&self) -> String {
        self.pool.schema(&self.tables)
    }

    /// Creates the tables now if they are missing.
    pub async fn ensure_schema(&self) -> Result<(), StoreError> {
        tokio::time::timeout(self.write_timeout, self.pool.create_schema(&self.tables))
            .await
            .map_err(|_| StoreError::Timeout(self.write_timeout))??;
        Ok(())
    }

    /// The backend's OpenTelemetry `db.system` name: `postgresql`, `mysql`
    /// or `sqlite`.
    pub fn backend(&self) -> &'static str {
        self.pool.system()
    }
}

fn is_table_name(name: &str) -> bool {
    let part = |part: &str| {
        let mut chars = part.chars();
        chars
            .next()
            .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && part.len() <= 63
    };
    match name.split_once('.') {
        Some((schema, table)) => part(schema) && part(table),
        None => part(name),
    }
}

/// Why the metrics store could not be used.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database refused or failed (the text of sqlx's error).
    #[error("the metrics store failed: {0}")]
    Database(String),
    /// The database did not answer in time.
    #[error("the metrics store did not answer within {0:?}")]
    Timeout(Duration),
    /// A table name that is not a plain identifier.
    #[error("`{0}` is not a table name: use letters, digits and `_`, optionally `schema.table`")]
    InvalidTableName(String),
    /// The monitor has no store.
    #[error("the monitor has no metrics store: set one with MonitorConfig::store")]
    NotConfigured,
    /// The monitor stopped before it could restore the history.
    #[error("the monitor stopped before it restored its history")]
    Stopped,
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        StoreError::Database(error.to_string())
    }
}

/// What a monitor took back from its store when it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Restored {
    /// Samples put back into the history.
    pub samples: usize,
    /// Alerts put back into the alert history.
    pub alerts: usize,
    /// Rules whose deduplication window was still open.
    pub open_windows: usize,
}

/// How a monitor's store is doing.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StoreStatus {
    /// `postgresql`, `mysql` or `sqlite`.
    pub backend: &'static str,
    /// What was restored at start-up, once it was.
    pub restored: Option<Restored>,
    /// Writes that succeeded.
    pub writes: u64,
    /// Writes (and start-up reads) that failed or timed out.
    pub failures: u64,
    /// Failures since the last success.
    pub consecutive_failures: u64,
    /// Samples written.
    pub samples_written: u64,
    /// Alerts written.
    pub alerts_written: u64,
    /// Rows deleted by retention.
    pub rows_deleted: u64,
    /// Samples waiting in memory for the next write.
    pub pending_samples: usize,
    /// Alerts waiting in memory for the next write.
    pub pending_alerts: usize,
    /// Samples dropped, oldest first, while the store was away and the
    /// waiting ones filled the history's capacity.
    pub samples_dropped: u64,
    /// Alerts dropped the same way.
    pub alerts_dropped: u64,
    /// When the last write succeeded (ms since the Unix epoch).
    pub last_write_at_ms: Option<u64>,
    /// How long it took, in milliseconds.
    pub last_write_ms: Option<f64>,
    /// The last failure.
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain_identifiers() {
        for good in ["samples", "_x1", "metrics.samples", "A_b_9"] {
            assert!(is_table_name(good), "{good}");
        }
        let long = "x".repeat(64);
        for bad in [
            "",
            "1x",
            "a-b",
            "a b",
            "a;b",
            "a.b.c",
            ".a",
            "\"a\"",
            long.as_str(),
        ] {
            assert!(!is_table_name(bad), "{bad}");
        }
    }
}
