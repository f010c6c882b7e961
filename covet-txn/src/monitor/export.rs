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
use crate::engine::EngineHandle;
use crate::error::Error;
use crate::observe::counters::{Counter, DURATION_BUCKETS, FunctionMetrics};
use crate::observe::metrics::MetricsSnapshot;

/// The content type of [`prometheus_text`](crate::TxManager::prometheus_text).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A manager's metrics as a Prometheus collector: register it in your own
/// `prometheus_client` registry, or let
/// [`TxManager::prometheus_text`](crate::TxManager::prometheus_text) encode it.
#[derive(Clone)]
pub struct PrometheusCollector(pub(crate) EngineHandle);

impl std::fmt::Debug for PrometheusCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrometheusCollector")
            .finish_non_exhaustive()
    }
}

/// The help text of a family whose counters a label tells apart.
fn family_help(family: &str) -> &'static str {
    match family {
        "failures" => {
            "Retryable failures by kind: deadlocks and serialization failures among them."
        }
        "cancelled_commits" => {
            "COMMITs whose call was cancelled while they were in flight, by what became of them."
        }
        _ => "Counted by covet-txn.",
    }
}

impl Collector for PrometheusCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.0.snapshot();
        let manager = snapshot.manager.as_str();
        let labels = |function: &FunctionMetrics| {
            [
                ("manager", manager.to_owned()),
                ("function", function.function.clone()),
            ]
        };

        // One family per name in the counter table, in the table's order;
        // counters that share a family are told apart by their label.
        let mut families: Vec<&'static str> = Vec::new();
        for counter in Counter::ALL {
            let family = counter.exposed().family;
            if !families.contains(&family) {
                families.push(family);
            }
        }
        for family in families {
            let members: Vec<Counter> = Counter::ALL
                .iter()
                .copied()
                .filter(|counter| counter.exposed().family == family)
                .collect();
            let help = match members.as_slice() {
                [only] => only.exposed().help,
                _ => family_help(family),
            };
            let mut metric = encoder.encode_descriptor(family, help, None, MetricType::Counter)?;
            for function in &snapshot.functions {
                for counter in &members {
                    let mut labels = labels(function).to_vec();
                    if let Some((name, value)) = counter.exposed().label {
                        labels.push((name, value.to_owned()));
                    }
                    metric
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&counter.read(function), None)?;
                }
            }
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

/// The metrics as CSV: one row per function, then the totals; a column per
/// counter of the counter table, then the rates and percentiles.
pub(crate) fn metrics_csv(snapshot: &MetricsSnapshot) -> Result<String, Error> {
    let failed = |error: csv::Error| Error::InvalidOption(format!("cannot write CSV: {error}"));
    let mut writer = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["function"];
    header.extend(Counter::ALL.iter().map(|counter| counter.name()));
    header.extend(["success_rate", "mean_ms", "p50_ms", "p95_ms", "p99_ms"]);
    writer.write_record(&header).map_err(failed)?;
    let optional = |value: Option<f64>| value.map(|value| value.to_string()).unwrap_or_default();
    for function in snapshot
        .functions
        .iter()
        .chain(std::iter::once(&snapshot.total))
    {
        let mut row = vec![function.function.clone()];
        row.extend(
            Counter::ALL
                .iter()
                .map(|counter| counter.read(function).to_string()),
        );
        row.extend([
            optional(function.success_rate),
            optional(function.duration.mean_ms),
            optional(function.duration.p50_ms),
            optional(function.duration.p95_ms),
            optional(function.duration.p99_ms),
        ]);
        writer.write_record(&row).map_err(failed)?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|error| Error::InvalidOption(format!("cannot write CSV: {error}")))?;
    String::from_utf8(bytes)
        .map_err(|error| Error::InvalidOption(format!("cannot write CSV: {error}")))
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
