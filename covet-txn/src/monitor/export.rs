//! Getting the numbers out: the Prometheus (OpenMetrics) exposition, and
//! JSON and CSV reports of the metrics, the snapshot history and the alert
//! history.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use serde::Serialize;

use super::Sample;
use super::alerts::Alert;
use crate::error::Error;
use crate::manager::ManagerHandle;
use crate::metrics::{DURATION_BUCKETS, FunctionMetrics, MetricsSnapshot};

/// The content type of [`prometheus_text`](crate::TxManager::prometheus_text).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A manager's metrics as a Prometheus collector: register it in your own
/// `prometheus_client` registry, or let
/// [`TxManager::prometheus_text`](crate::TxManager::prometheus_text) encode it.
#[derive(Clone)]
pub struct PrometheusCollector(pub(crate) ManagerHandle);

impl std::fmt::Debug for PrometheusCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrometheusCollector")
            .finish_non_exhaustive()
    }
}

/// Reads one counter of a function's metrics.
type Read = fn(&FunctionMetrics) -> u64;

/// The counters of a function, by metric name (without prefix and suffix)
/// and help text.
type CounterField = (&'static str, &'static str, Read);

const COUNTERS: [CounterField; 11] = [
    (
        "transactions_started",
        "Transactions begun; each attempt counts.",
        |f| f.started,
    ),
    ("transactions_committed", "Transactions committed.", |f| {
        f.committed
    }),
    (
        "transactions_rolled_back",
        "Transactions rolled back; each failed attempt counts.",
        |f| f.rolled_back,
    ),
    (
        "calls_failed",
        "Transactional calls that returned an error after any retries.",
        |f| f.failed,
    ),
    ("retries", "Retries after a retryable failure.", |f| {
        f.retries
    }),
    ("timeouts", "Calls that timed out.", |f| f.timeouts),
    (
        "ambiguous_commits",
        "COMMITs whose outcome was unknown.",
        |f| f.ambiguous_commits,
    ),
    (
        "retries_exhausted",
        "Calls that gave up after every retry.",
        |f| f.retries_exhausted,
    ),
    (
        "savepoints_created",
        "Savepoints created by nested scopes.",
        |f| f.savepoints_created,
    ),
    (
        "savepoints_rolled_back",
        "Nested scopes rolled back to their savepoint.",
        |f| f.savepoints_rolled_back,
    ),
    (
        "rollback_failures",
        "ROLLBACKs that failed; the connection was closed, so the server rolled back.",
        |f| f.rollback_failures,
    ),
];

const CANCELLED_COMMITS: [(&str, Read); 3] = [
    ("committed", |f| f.cancelled_commits.committed),
    ("rolled_back", |f| f.cancelled_commits.rolled_back),
    ("unknown", |f| f.cancelled_commits.unknown),
];

const FAILURES: [(&str, Read); 6] = [
    ("serialization_failure", |f| f.serialization_failures),
    ("deadlock", |f| f.deadlocks),
    ("lock_timeout", |f| f.lock_timeouts),
    ("snapshot_conflict", |f| f.snapshot_conflicts),
    ("busy", |f| f.busy),
    ("connection_lost", |f| f.connections_lost),
];

impl Collector for PrometheusCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.0.metrics_snapshot();
        let manager = snapshot.manager.as_str();
        let labels = |function: &FunctionMetrics| {
            [
                ("manager", manager.to_owned()),
                ("function", function.function.clone()),
            ]
        };

        for (name, help, read) in COUNTERS {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for function in &snapshot.functions {
                let labels = labels(function);
                metric
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&read(function), None)?;
            }
        }

        let mut failures = encoder.encode_descriptor(
            "failures",
            "Retryable failures by kind: deadlocks and serialization failures among them.",
            None,
            MetricType::Counter,
        )?;
        for function in &snapshot.functions {
            for (kind, read) in FAILURES {
                let labels = [
                    ("manager", manager.to_owned()),
                    ("function", function.function.clone()),
                    ("kind", kind.to_owned()),
                ];
                failures
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&read(function), None)?;
            }
        }

        let mut cancelled = encoder.encode_descriptor(
            "cancelled_commits",
            "COMMITs whose call was cancelled while they were in flight, by what became of them.",
            None,
            MetricType::Counter,
        )?;
        for function in &snapshot.functions {
            for (outcome, read) in CANCELLED_COMMITS {
                let labels = [
                    ("manager", manager.to_owned()),
                    ("function", function.function.clone()),
                    ("outcome", outcome.to_owned()),
                ];
                cancelled
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&read(function), None)?;
            }
        }

        let mut hooks = encoder.encode_descriptor(
            "hook_failures",
            "Hooks that failed or panicked.",
            None,
            MetricType::Counter,
        )?;
        for function in &snapshot.functions {
            let labels = labels(function);
            hooks
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&function.hook_failures, None)?;
        }

        let mut durations = encoder.encode_descriptor(
            "transaction_duration",
            "How long transactions ran, from BEGIN to COMMIT or ROLLBACK.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for function in &snapshot.functions {
            let labels = labels(function);
            let mut cumulative = 0;
            let buckets: Vec<(f64, u64)> = DURATION_BUCKETS
                .iter()
                .copied()
                .chain(std::iter::once(f64::INFINITY))
                .zip(function.histogram.buckets)
                .map(|(bound, count)| {
                    cumulative += count;
                    (bound, count)
                })
                .collect();
            let sum = function.histogram.sum_nanos as f64 / 1e9;
            durations
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(sum, cumulative, &buckets, None)?;
        }

        let manager_labels = [("manager", manager.to_owned())];
        let active = i64::try_from(snapshot.active.len()).unwrap_or(i64::MAX);
        let gauges = [
            ("active_transactions", "Transactions running now.", active),
            (
                "pool_connections",
                "Connections the pool has open.",
                i64::from(snapshot.pool.size),
            ),
            (
                "pool_idle_connections",
                "Open connections not in use.",
                i64::from(snapshot.pool.idle),
            ),
            (
                "pool_max_connections",
                "The most connections the pool may open.",
                i64::from(snapshot.pool.max),
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            let mut metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric.encode_family(&manager_labels)?)?;
        }
        Ok(())
    }
}

/// Encodes the collector in the OpenMetrics text format.
pub(crate) fn encode_text(collector: PrometheusCollector) -> Result<String, Error> {
    let mut registry = Registry::with_prefix("covet_txn");
    registry.register_collector(Box::new(collector));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .map_err(|_| Error::InvalidOption("the metrics could not be encoded".to_owned()))?;
    Ok(text)
}

fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String, Error> {
    serde_json::to_string_pretty(value)
        .map_err(|error| Error::InvalidOption(format!("cannot write JSON: {error}")))
}

/// A report of everything, as JSON.
pub(crate) fn json<T: Serialize + ?Sized>(value: &T) -> Result<String, Error> {
    to_json(value)
}

fn write_csv<T: Serialize>(rows: impl IntoIterator<Item = T>) -> Result<String, Error> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for row in rows {
        writer
            .serialize(row)
            .map_err(|error| Error::InvalidOption(format!("cannot write CSV: {error}")))?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|error| Error::InvalidOption(format!("cannot write CSV: {error}")))?;
    String::from_utf8(bytes)
        .map_err(|error| Error::InvalidOption(format!("cannot write CSV: {error}")))
}

/// One CSV row per function.
#[derive(Serialize)]
struct FunctionRow<'a> {
    function: &'a str,
    started: u64,
    committed: u64,
    rolled_back: u64,
    failed: u64,
    retries: u64,
    deadlocks: u64,
    serialization_failures: u64,
    timeouts: u64,
    retries_exhausted: u64,
    ambiguous_commits: u64,
    savepoints_created: u64,
    savepoints_rolled_back: u64,
    hook_failures: u64,
    success_rate: Option<f64>,
    mean_ms: Option<f64>,
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
    p99_ms: Option<f64>,
}

impl<'a> From<&'a FunctionMetrics> for FunctionRow<'a> {
    fn from(f: &'a FunctionMetrics) -> Self {
        FunctionRow {
            function: &f.function,
            started: f.started,
            committed: f.committed,
            rolled_back: f.rolled_back,
            failed: f.failed,
            retries: f.retries,
            deadlocks: f.deadlocks,
            serialization_failures: f.serialization_failures,
            timeouts: f.timeouts,
            retries_exhausted: f.retries_exhausted,
            ambiguous_commits: f.ambiguous_commits,
            savepoints_created: f.savepoints_created,
            savepoints_rolled_back: f.savepoints_rolled_back,
            hook_failures: f.hook_failures,
            success_rate: f.success_rate,
            mean_ms: f.duration.mean_ms,
            p50_ms: f.duration.p50_ms,
            p95_ms: f.duration.p95_ms,
            p99_ms: f.duration.p99_ms,
        }
    }
}

/// The metrics as CSV: one row per function, then the totals.
pub(crate) fn metrics_csv(snapshot: &MetricsSnapshot) -> Result<String, Error> {
    write_csv(
        snapshot
            .functions
            .iter()
            .chain(std::iter::once(&snapshot.total))
            .map(FunctionRow::from),
    )
}

/// One CSV row per sample: what happened in its interval.
#[derive(Serialize)]
struct SampleRow {
    taken_at_ms: u64,
    started: u64,
    committed: u64,
    rolled_back: u64,
    failed: u64,
    retries: u64,
    deadlocks: u64,
    serialization_failures: u64,
    timeouts: u64,
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
    p99_ms: Option<f64>,
    active: usize,
    pool_size: u32,
    pool_idle: u32,
    health: u8,
}

/// The snapshot history as CSV.
pub(crate) fn history_csv(samples: &[Sample]) -> Result<String, Error> {
    write_csv(samples.iter().map(|sample| {
        let interval = &sample.interval;
        SampleRow {
            taken_at_ms: sample.taken_at_ms,
            started: interval.started,
            committed: interval.committed,
            rolled_back: interval.rolled_back,
            failed: interval.failed,
            retries: interval.retries,
            deadlocks: interval.deadlocks,
            serialization_failures: interval.serialization_failures,
            timeouts: interval.timeouts,
            p50_ms: interval.duration.p50_ms,
            p95_ms: interval.duration.p95_ms,
            p99_ms: interval.duration.p99_ms,
            active: sample.active,
            pool_size: sample.pool.size,
            pool_idle: sample.pool.idle,
            health: sample.health,
        }
    }))
}

/// One CSV row per alert.
#[derive(Serialize)]
struct AlertRow<'a> {
    at_ms: u64,
    level: &'static str,
    rule: &'static str,
    function: Option<&'a str>,
    message: &'a str,
    value: f64,
    threshold: f64,
}

/// The alert history as CSV.
pub(crate) fn alerts_csv(alerts: &[Alert]) -> Result<String, Error> {
    write_csv(alerts.iter().map(|alert| AlertRow {
        at_ms: alert.at_ms,
        level: alert.level.name(),
        rule: alert.rule.name(),
        function: alert.function.as_deref(),
        message: &alert.message,
        value: alert.value,
        threshold: alert.threshold,
    }))
}
