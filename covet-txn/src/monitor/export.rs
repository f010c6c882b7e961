//! Getting the numbers out: the Prometheus (OpenMetrics) exposition, and
//! JSON and CSV reports of the metrics, the snapshot history and the alert
//! history.
//!
//! CSV is written to be opened in a spreadsheet by whoever downloads it:
//! every export has its header row, even with no rows, and a cell that a
//! spreadsheet would run as a formula (function names and alert texts come
//! from the application) is neutralised here, once, for every caller.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use serde::Serialize;

use super::Sample;
use super::alert::Alert;
use crate::engine::EngineHandle;
use crate::error::Error;
use crate::observe::counters::{Counter, DURATION_BUCKETS, FunctionMetrics};
use crate::observe::metrics::{AdmissionStatus, MetricsSnapshot};

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
        for (name, help, value) in [
            (
                "admission_limit",
                "How many first attempts of the function may run at once under contention management.",
                (|status: &AdmissionStatus| status.limit) as fn(&AdmissionStatus) -> Option<f64>,
            ),
            (
                "admission_waiting",
                "Attempts of the function waiting for their turn now.",
                |status: &AdmissionStatus| Some(f64::from(status.waiting)),
            ),
        ] {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for status in &snapshot.admission {
                let Some(value) = value(status) else { continue };
                let labels = [
                    ("manager", manager.to_owned()),
                    ("function", status.function.clone()),
                ];
                ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
            }
        }
        // What the `long_transaction` alert watches, for Prometheus rules.
        let oldest = ConstGauge::new(
            snapshot
                .active
                .first()
                .map_or(0.0, |transaction| transaction.age_ms / 1000.0),
        );
        let mut metric = encoder.encode_descriptor(
            "oldest_transaction_age",
            "How long the oldest running transaction has run; 0 when none runs.",
            Some(&Unit::Seconds),
            oldest.metric_type(),
        )?;
        oldest.encode(metric.encode_family(&manager_labels)?)?;
        super::replica_metrics::encode(&mut encoder, manager, &self.0.replica_report())
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

/// A CSV document: the header row, always (an export with no rows is still
/// a valid file with its columns), then the rows, every cell made safe to
/// open in a spreadsheet.
fn csv_document(
    header: &[&str],
    rows: impl IntoIterator<Item = Vec<String>>,
) -> Result<String, Error> {
    let failed = |error: csv::Error| Error::InvalidOption(format!("cannot write CSV: {error}"));
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(header).map_err(failed)?;
    for row in rows {
        writer
            .write_record(row.into_iter().map(spreadsheet_safe))
            .map_err(failed)?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|error| Error::InvalidOption(format!("cannot write CSV: {error}")))?;
    String::from_utf8(bytes)
        .map_err(|error| Error::InvalidOption(format!("cannot write CSV: {error}")))
}

/// A cell a spreadsheet reads as data. Excel, LibreOffice and Google Sheets
/// run a cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage
/// return as a formula, and function names and alert texts are the
/// application's: such a cell is prefixed with `'`, as OWASP recommends. A
/// plain number (`-1.5`) is data and left alone, since quoting it would turn
/// it into text.
fn spreadsheet_safe(cell: String) -> String {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) && cell.parse::<f64>().is_err() {
        format!("'{cell}")
    } else {
        cell
    }
}

fn optional(value: Option<f64>) -> String {
    value.map(|value| value.to_string()).unwrap_or_default()
}

/// The metrics as CSV: one row per function, then the totals; a column per
/// counter of the counter table, then the rates and percentiles.
pub(crate) fn metrics_csv(snapshot: &MetricsSnapshot) -> Result<String, Error> {
    let mut header = vec!["function"];
    header.extend(Counter::ALL.iter().map(|counter| counter.name()));
    header.extend(["success_rate", "mean_ms", "p50_ms", "p95_ms", "p99_ms"]);
    let rows = snapshot
        .functions
        .iter()
        .chain(std::iter::once(&snapshot.total))
        .map(|function| {
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
            row
        });
    csv_document(&header, rows)
}

/// The columns of the history export: what happened in each sample's
/// interval.
pub(crate) const HISTORY_COLUMNS: [&str; 16] = [
    "taken_at_ms",
    "started",
    "committed",
    "rolled_back",
    "failed",
    "retries",
    "deadlocks",
    "serialization_failures",
    "timeouts",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "active",
    "pool_size",
    "pool_idle",
    "health",
];

/// The snapshot history as CSV: one row per sample.
pub(crate) fn history_csv(samples: &[Sample]) -> Result<String, Error> {
    let rows = samples.iter().map(|sample| {
        let interval = &sample.interval;
        vec![
            sample.taken_at_ms.to_string(),
            interval.started.to_string(),
            interval.committed.to_string(),
            interval.rolled_back.to_string(),
            interval.failed.to_string(),
            interval.retries.to_string(),
            interval.deadlocks.to_string(),
            interval.serialization_failures.to_string(),
            interval.timeouts.to_string(),
            optional(interval.duration.p50_ms),
            optional(interval.duration.p95_ms),
            optional(interval.duration.p99_ms),
            sample.active.to_string(),
            sample.pool.size.to_string(),
            sample.pool.idle.to_string(),
            sample.health.to_string(),
        ]
    });
    csv_document(&HISTORY_COLUMNS, rows)
}

/// The columns of the alerts export.
pub(crate) const ALERT_COLUMNS: [&str; 7] = [
    "at_ms",
    "level",
    "rule",
    "function",
    "message",
    "value",
    "threshold",
];

/// The alert history as CSV.
pub(crate) fn alerts_csv(alerts: &[Alert]) -> Result<String, Error> {
    let rows = alerts.iter().map(|alert| {
        vec![
            alert.at_ms.to_string(),
            alert.level.name().to_owned(),
            alert.rule.name().to_owned(),
            alert.function.clone().unwrap_or_default(),
            alert.message.clone(),
            alert.value.to_string(),
            alert.threshold.to_string(),
        ]
    });
    csv_document(&ALERT_COLUMNS, rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::alert::{AlertLevel, AlertRule};

    fn rows(csv: &str) -> Vec<Vec<String>> {
        csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(csv.as_bytes())
            .records()
            .map(|row| match row {
                Ok(row) => row.iter().map(str::to_owned).collect(),
                Err(error) => panic!("not CSV: {error}"),
            })
            .collect()
    }

    fn alert(function: &str, message: &str, value: f64) -> Alert {
        Alert {
            level: AlertLevel::Error,
            rule: AlertRule::Timeouts,
            function: Some(function.to_owned()),
            message: message.to_owned(),
            value,
            threshold: 0.0,
            at_ms: 1,
        }
    }

    #[test]
    fn cells_a_spreadsheet_would_run_are_neutralised_and_numbers_kept() {
        let alerts = [
            alert("=HYPERLINK(\"x\")", "+1+2", -1.5),
            alert("@SUM(A1)", "\tcmd", 2.0),
            alert("\r=1", "-2+3", 0.0),
            alert("plain::name", "a - b", 3.0),
        ];
        let csv = alerts_csv(&alerts).unwrap_or_else(|error| panic!("{error}"));
        let rows = rows(&csv);
        let cells = |row: usize| {
            (
                rows[row][3].as_str(),
                rows[row][4].as_str(),
                rows[row][5].as_str(),
            )
        };
        assert_eq!(cells(1), ("'=HYPERLINK(\"x\")", "'+1+2", "-1.5"));
        assert_eq!(cells(2), ("'@SUM(A1)", "'\tcmd", "2"));
        assert_eq!(cells(3), ("'\r=1", "'-2+3", "0"));
        assert_eq!(cells(4), ("plain::name", "a - b", "3"));
    }

    #[test]
    fn empty_exports_still_have_their_header_row() {
        let alerts = alerts_csv(&[]).unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(alerts, format!("{}\n", ALERT_COLUMNS.join(",")));
        let history = history_csv(&[]).unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(history, format!("{}\n", HISTORY_COLUMNS.join(",")));
    }
}
