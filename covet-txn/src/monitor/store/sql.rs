//! The metrics store's SQL, per backend: the schema, the batched insert
//! (duplicates ignored, so a batch written twice after an unknown outcome
//! is harmless), the reads at start-up, and the retention deletes. Every
//! statement goes straight to the store's own sqlx pool, in a transaction
//! of sqlx's, never through covet-txn's: a metrics write is never part of
//! an application's transaction.

use sqlx::{AssertSqlSafe, QueryBuilder, Row};

use super::codec::{AlertRow, SampleRow};
use super::{Retention, Tables};

/// Rows per INSERT statement: far below every backend's limit on bound
/// parameters (SQLite's is 32,766; nine per row here).
const ROWS_PER_INSERT: usize = 500;

/// The pool of a metrics store, of any compiled-in backend.
#[derive(Clone, Debug)]
pub(crate) enum StorePool {
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
    #[cfg(feature = "mysql")]
    MySql(sqlx::MySqlPool),
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::SqlitePool),
}

/// Runs `$body` with `$pool` bound to the store's typed pool; the body is
/// compiled once per backend.
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            #[cfg(feature = "postgres")]
            StorePool::Postgres($pool) => $body,
            #[cfg(feature = "mysql")]
            StorePool::MySql($pool) => $body,
            #[cfg(feature = "sqlite")]
            StorePool::Sqlite($pool) => $body,
            // Without a backend the enum has no variant and no value.
            #[cfg(not(any(feature = "postgres", feature = "mysql", feature = "sqlite")))]
            _ => unreachable!("no backend feature is enabled"),
        }
    };
}

/// What differs between the backends' SQL.
struct Flavour {
    integer: &'static str,
    real: &'static str,
    /// The start of an INSERT that skips rows already there.
    insert: &'static str,
    /// What follows its VALUES for the same.
    on_conflict: &'static str,
}

impl StorePool {
    /// The backend's OpenTelemetry `db.system` name.
    pub(crate) fn system(&self) -> &'static str {
        match self {
            #[cfg(feature = "postgres")]
            StorePool::Postgres(_) => "postgresql",
            #[cfg(feature = "mysql")]
            StorePool::MySql(_) => "mysql",
            #[cfg(feature = "sqlite")]
            StorePool::Sqlite(_) => "sqlite",
            // Without a backend the enum has no variant and no value.
            #[cfg(not(any(feature = "postgres", feature = "mysql", feature = "sqlite")))]
            _ => unreachable!("no backend feature is enabled"),
        }
    }

    fn flavour(&self) -> Flavour {
        match self {
            #[cfg(feature = "postgres")]
            StorePool::Postgres(_) => Flavour {
                integer: "BIGINT",
                real: "DOUBLE PRECISION",
                insert: "INSERT INTO",
                on_conflict: " ON CONFLICT DO NOTHING",
            },
            #[cfg(feature = "mysql")]
            StorePool::MySql(_) => Flavour {
                integer: "BIGINT",
                real: "DOUBLE",
                insert: "INSERT IGNORE INTO",
                on_conflict: "",
            },
            #[cfg(feature = "sqlite")]
            StorePool::Sqlite(_) => Flavour {
                integer: "INTEGER",
                real: "REAL",
                insert: "INSERT OR IGNORE INTO",
                on_conflict: "",
            },
            // Without a backend the enum has no variant and no value.
            #[cfg(not(any(feature = "postgres", feature = "mysql", feature = "sqlite")))]
            _ => unreachable!("no backend feature is enabled"),
        }
    }

    /// The statements that create the two tables, if they are missing.
    pub(crate) fn schema(&self, tables: &Tables) -> String {
        let Flavour { integer, real, .. } = self.flavour();
        let (samples, alerts) = (&tables.samples, &tables.alerts);
        format!(
            "CREATE TABLE IF NOT EXISTS {samples} (
    manager       VARCHAR(100) NOT NULL,
    taken_at_ms   {integer} NOT NULL,
    committed     {integer} NOT NULL,
    failed        {integer} NOT NULL,
    retries       {integer} NOT NULL,
    p99_ms        {real},
    active        {integer} NOT NULL,
    health        {integer} NOT NULL,
    sample        TEXT NOT NULL,
    PRIMARY KEY (manager, taken_at_ms)
);
CREATE TABLE IF NOT EXISTS {alerts} (
    manager       VARCHAR(100) NOT NULL,
    at_ms         {integer} NOT NULL,
    rule          VARCHAR(64) NOT NULL,
    function_name VARCHAR(255) NOT NULL,
    level         VARCHAR(16) NOT NULL,
    message       TEXT NOT NULL,
    value         {real} NOT NULL,
    threshold     {real} NOT NULL,
    PRIMARY KEY (manager, at_ms, rule, function_name)
);
"
        )
    }

    pub(crate) async fn create_schema(&self, tables: &Tables) -> Result<(), sqlx::Error> {
        let schema = self.schema(tables);
        with_pool!(self, pool => {
            // Table names are checked identifiers; nothing else is spliced.
            sqlx::raw_sql(AssertSqlSafe(schema)).execute(pool).await?;
        });
        Ok(())
    }

    /// Writes one batch and applies retention, in one transaction of the
    /// store's pool. Returns the rows retention deleted.
    pub(crate) async fn write(&self, batch: Batch<'_>) -> Result<u64, sqlx::Error> {
        let flavour = self.flavour();
        let Batch {
            tables,
            manager,
            samples,
            alerts,
            retention,
            now_ms,
        } = batch;
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for chunk in samples.chunks(ROWS_PER_INSERT) {
                let mut insert = QueryBuilder::new(format!(
                    "{} {} (manager, taken_at_ms, committed, failed, retries, p99_ms, active, \
                     health, sample) ",
                    flavour.insert, tables.samples
                ));
                insert.push_values(chunk, |mut row, sample| {
                    row.push_bind(manager.to_owned())
                        .push_bind(sample.taken_at_ms)
                        .push_bind(sample.committed)
                        .push_bind(sample.failed)
                        .push_bind(sample.retries)
                        .push_bind(sample.p99_ms)
                        .push_bind(sample.active)
                        .push_bind(sample.health)
                        .push_bind(sample.json.clone());
                });
                insert.push(flavour.on_conflict);
                insert.build().execute(&mut *tx).await?;
            }
            for chunk in alerts.chunks(ROWS_PER_INSERT) {
                let mut insert = QueryBuilder::new(format!(
                    "{} {} (manager, at_ms, rule, function_name, level, message, value, \
                     threshold) ",
                    flavour.insert, tables.alerts
                ));
                insert.push_values(chunk, |mut row, alert| {
                    row.push_bind(manager.to_owned())
                        .push_bind(alert.at_ms)
                        .push_bind(alert.rule.clone())
                        .push_bind(alert.function.clone())
                        .push_bind(alert.level.clone())
                        .push_bind(alert.message.clone())
                        .push_bind(alert.value)
                        .push_bind(alert.threshold);
                });
                insert.push(flavour.on_conflict);
                insert.build().execute(&mut *tx).await?;
            }
            // Rows older than the age limit go, and so do those past the
            // row limit: those at or below the newest row beyond it, in
            // primary-key order (MySQL cannot DELETE from a table its own
            // subquery reads, hence two statements).
            let cutoff = now_ms.saturating_sub(retention.age_ms);
            let mut deleted = 0;

            let mut beyond = QueryBuilder::new(format!(
                "SELECT taken_at_ms FROM {} WHERE manager = ",
                tables.samples
            ));
            beyond
                .push_bind(manager.to_owned())
                .push(" ORDER BY taken_at_ms DESC LIMIT 1 OFFSET ")
                .push_bind(retention.samples);
            let beyond: Option<i64> = match beyond.build().fetch_optional(&mut *tx).await? {
                Some(row) => Some(row.try_get(0)?),
                None => None,
            };
            let mut delete = QueryBuilder::new(format!(
                "DELETE FROM {} WHERE manager = ",
                tables.samples
            ));
            delete
                .push_bind(manager.to_owned())
                .push(" AND taken_at_ms < ")
                .push_bind(beyond.map_or(cutoff, |at| cutoff.max(at.saturating_add(1))));
            deleted += delete.build().execute(&mut *tx).await?.rows_affected();

            // Alerts raised by one sample share a time: the rule and the
            // function break the tie.
            let mut beyond = QueryBuilder::new(format!(
                "SELECT at_ms, rule, function_name FROM {} WHERE manager = ",
                tables.alerts
            ));
            beyond
                .push_bind(manager.to_owned())
                .push(" ORDER BY at_ms DESC, rule DESC, function_name DESC LIMIT 1 OFFSET ")
                .push_bind(retention.alerts);
            let beyond: Option<(i64, String, String)> =
                match beyond.build().fetch_optional(&mut *tx).await? {
                    Some(row) => Some((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)),
                    None => None,
                };
            let mut delete = QueryBuilder::new(format!(
                "DELETE FROM {} WHERE manager = ",
                tables.alerts
            ));
            delete
                .push_bind(manager.to_owned())
                .push(" AND (at_ms < ")
                .push_bind(cutoff);
            if let Some((at_ms, rule, function)) = beyond {
                delete
                    .push(" OR (at_ms, rule, function_name) <= (")
                    .push_bind(at_ms)
                    .push(", ")
                    .push_bind(rule)
                    .push(", ")
                    .push_bind(function)
                    .push(")");
            }
            delete.push(")");
            deleted += delete.build().execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
            Ok(deleted)
        })
    }

    /// What an earlier run stored for `manager` before `before_ms`: the
    /// newest `samples` samples' JSON and the newest `alerts` alerts, newest
    /// first, and when each rule last raised an alert about each function
    /// since `raised_since_ms`.
    pub(crate) async fn load(&self, request: Load<'_>) -> Result<Loaded, sqlx::Error> {
        let Load {
            tables,
            manager,
            before_ms,
            samples,
            alerts,
            raised_since_ms,
        } = request;
        with_pool!(self, pool => {
            let mut query = QueryBuilder::new(format!(
                "SELECT sample FROM {} WHERE manager = ",
                tables.samples
            ));
            query
                .push_bind(manager.to_owned())
                .push(" AND taken_at_ms < ")
                .push_bind(before_ms)
                .push(" ORDER BY taken_at_ms DESC LIMIT ")
                .push_bind(samples);
            let sample_json = query
                .build()
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| row.try_get::<String, _>(0))
                .collect::<Result<Vec<_>, _>>()?;

            let mut query = QueryBuilder::new(format!(
                "SELECT at_ms, level, rule, function_name, message, value, threshold FROM {} \
                 WHERE manager = ",
                tables.alerts
            ));
            query
                .push_bind(manager.to_owned())
                .push(" AND at_ms < ")
                .push_bind(before_ms)
                .push(" ORDER BY at_ms DESC LIMIT ")
                .push_bind(alerts);
            let alert_rows = query
                .build()
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| {
                    Ok(AlertRow {
                        at_ms: row.try_get(0)?,
                        level: row.try_get(1)?,
                        rule: row.try_get(2)?,
                        function: row.try_get(3)?,
                        message: row.try_get(4)?,
                        value: row.try_get(5)?,
                        threshold: row.try_get(6)?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?;

            let mut query = QueryBuilder::new(format!(
                "SELECT rule, function_name, MAX(at_ms) FROM {} WHERE manager = ",
                tables.alerts
            ));
            query
                .push_bind(manager.to_owned())
                .push(" AND at_ms >= ")
                .push_bind(raised_since_ms)
                .push(" GROUP BY rule, function_name");
            let last_raised = query
                .build()
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
                .collect::<Result<Vec<(String, String, i64)>, sqlx::Error>>()?;
            Ok(Loaded {
                sample_json,
                alert_rows,
                last_raised,
            })
        })
    }
}

/// One write: what to insert, for which manager, and what to keep.
pub(crate) struct Batch<'a> {
    pub(crate) tables: &'a Tables,
    pub(crate) manager: &'a str,
    pub(crate) samples: &'a [SampleRow],
    pub(crate) alerts: &'a [AlertRow],
    pub(crate) retention: RetentionLimits,
    pub(crate) now_ms: i64,
}

/// Retention in the columns' terms.
#[derive(Clone, Copy)]
pub(crate) struct RetentionLimits {
    pub(crate) age_ms: i64,
    pub(crate) samples: i64,
    pub(crate) alerts: i64,
}

impl From<&Retention> for RetentionLimits {
    fn from(retention: &Retention) -> Self {
        let signed = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        RetentionLimits {
            age_ms: signed(u64::try_from(retention.max_age.as_millis()).unwrap_or(u64::MAX)),
            samples: signed(retention.max_samples),
            alerts: signed(retention.max_alerts),
        }
    }
}

/// What to read at start-up.
pub(crate) struct Load<'a> {
    pub(crate) tables: &'a Tables,
    pub(crate) manager: &'a str,
    pub(crate) before_ms: i64,
    pub(crate) samples: i64,
    pub(crate) alerts: i64,
    pub(crate) raised_since_ms: i64,
}

/// What was read, newest first.
pub(crate) struct Loaded {
    pub(crate) sample_json: Vec<String>,
    pub(crate) alert_rows: Vec<AlertRow>,
    /// (rule, function or `""`, when it last raised an alert).
    pub(crate) last_raised: Vec<(String, String, i64)>,
}
