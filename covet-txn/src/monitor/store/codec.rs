//! How a sample and an alert become rows of the metrics store, and back.
//!
//! A sample is stored whole as JSON (its counters by name, its histogram
//! and its duration summary), beside a few plain columns for whoever reads
//! the table with SQL. Counters are stored by name, so a sample written by
//! an older version, which lacks a counter added since, reads back with that
//! counter at zero; a histogram whose buckets no longer match is dropped and
//! the stored percentiles are kept instead.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::monitor::Sample;
use crate::monitor::alert::{Alert, AlertLevel, AlertRule};
use crate::observe::counters::{
    Counter, DURATION_BUCKETS, DurationSummary, FunctionMetrics, HistogramCounts,
};
use crate::observe::metrics::PoolStatus;

/// The longest manager name stored; longer ones are cut (at a character).
pub(crate) const MANAGER_CHARS: usize = 100;
/// The longest function name stored in an alert row.
pub(crate) const FUNCTION_CHARS: usize = 255;

/// `text` cut to at most `chars` characters: a column that is too narrow
/// would otherwise fail the whole batch, forever, on MySQL in strict mode.
pub(crate) fn cut(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((end, _)) => text[..end].to_owned(),
        None => text.to_owned(),
    }
}

/// One row of the samples table.
#[derive(Debug, Clone)]
pub(crate) struct SampleRow {
    pub(crate) taken_at_ms: i64,
    pub(crate) committed: i64,
    pub(crate) failed: i64,
    pub(crate) retries: i64,
    pub(crate) p99_ms: Option<f64>,
    pub(crate) active: i64,
    pub(crate) health: i64,
    pub(crate) json: String,
}

/// One row of the alerts table; an alert about no function has `""`.
#[derive(Debug, Clone)]
pub(crate) struct AlertRow {
    pub(crate) at_ms: i64,
    pub(crate) level: String,
    pub(crate) rule: String,
    pub(crate) function: String,
    pub(crate) message: String,
    pub(crate) value: f64,
    pub(crate) threshold: f64,
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[derive(Serialize, Deserialize)]
struct StoredSample {
    taken_at_ms: u64,
    total: StoredMetrics,
    interval: StoredMetrics,
    active: usize,
    oldest_active_ms: Option<f64>,
    pool: StoredPool,
    health: u8,
}

#[derive(Serialize, Deserialize)]
struct StoredMetrics {
    counts: BTreeMap<String, u64>,
    buckets: Vec<u64>,
    sum_nanos: u64,
    duration: StoredDuration,
}

#[derive(Serialize, Deserialize)]
struct StoredDuration {
    count: u64,
    mean_ms: Option<f64>,
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
    p99_ms: Option<f64>,
}

#[derive(Serialize, Deserialize)]
struct StoredPool {
    size: u32,
    idle: u32,
    max: u32,
}

impl StoredMetrics {
    fn of(metrics: &FunctionMetrics) -> Self {
        let duration = metrics.duration;
        StoredMetrics {
            counts: Counter::ALL
                .iter()
                .map(|counter| (counter.name().to_owned(), counter.read(metrics)))
                .collect(),
            buckets: metrics.histogram.buckets.to_vec(),
            sum_nanos: metrics.histogram.sum_nanos,
            duration: StoredDuration {
                count: duration.count,
                mean_ms: duration.mean_ms,
                p50_ms: duration.p50_ms,
                p95_ms: duration.p95_ms,
                p99_ms: duration.p99_ms,
            },
        }
    }

    fn restore(self) -> FunctionMetrics {
        let histogram = <[u64; DURATION_BUCKETS.len() + 1]>::try_from(self.buckets.as_slice())
            .ok()
            .map(|buckets| HistogramCounts {
                buckets,
                sum_nanos: self.sum_nanos,
            });
        let mut metrics = FunctionMetrics::from_counts(
            "all".to_owned(),
            |counter| self.counts.get(counter.name()).copied().unwrap_or(0),
            histogram.unwrap_or_default(),
        );
        if histogram.is_none() {
            let stored = self.duration;
            metrics.duration = DurationSummary {
                count: stored.count,
                mean_ms: stored.mean_ms,
                p50_ms: stored.p50_ms,
                p95_ms: stored.p95_ms,
                p99_ms: stored.p99_ms,
            };
        }
        metrics
    }
}

/// The row that stores `sample`.
pub(crate) fn sample_row(sample: &Sample) -> Result<SampleRow, serde_json::Error> {
    let stored = StoredSample {
        taken_at_ms: sample.taken_at_ms,
        total: StoredMetrics::of(&sample.total),
        interval: StoredMetrics::of(&sample.interval),
        active: sample.active,
        oldest_active_ms: sample.oldest_active_ms,
        pool: StoredPool {
            size: sample.pool.size,
            idle: sample.pool.idle,
            max: sample.pool.max,
        },
        health: sample.health,
    };
    let interval = &sample.interval;
    Ok(SampleRow {
        taken_at_ms: signed(sample.taken_at_ms),
        committed: signed(interval.committed),
        failed: signed(interval.failed),
        retries: signed(interval.retries),
        p99_ms: interval.duration.p99_ms,
        active: signed(sample.active as u64),
        health: i64::from(sample.health),
        json: serde_json::to_string(&stored)?,
    })
}

/// The sample a row's JSON stores.
pub(crate) fn sample_from_json(json: &str) -> Result<Sample, serde_json::Error> {
    let stored: StoredSample = serde_json::from_str(json)?;
    Ok(Sample {
        taken_at_ms: stored.taken_at_ms,
        total: stored.total.restore(),
        interval: stored.interval.restore(),
        active: stored.active,
        oldest_active_ms: stored.oldest_active_ms,
        pool: PoolStatus {
            size: stored.pool.size,
            idle: stored.pool.idle,
            max: stored.pool.max,
        },
        health: stored.health,
    })
}

/// The row that stores `alert`.
pub(crate) fn alert_row(alert: &Alert) -> AlertRow {
    AlertRow {
        at_ms: signed(alert.at_ms),
        level: alert.level.name().to_owned(),
        rule: alert.rule.name().to_owned(),
        function: cut(alert.function.as_deref().unwrap_or(""), FUNCTION_CHARS),
        message: alert.message.clone(),
        value: alert.value,
        threshold: alert.threshold,
    }
}

/// The alert a row stores, or `None` for a level or rule this version does
/// not know (written by a newer one).
pub(crate) fn alert_from_row(row: AlertRow) -> Option<Alert> {
    Some(Alert {
        level: AlertLevel::from_name(&row.level)?,
        rule: AlertRule::from_name(&row.rule)?,
        function: (!row.function.is_empty()).then_some(row.function),
        message: row.message,
        value: row.value,
        threshold: row.threshold,
        at_ms: u64::try_from(row.at_ms).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Sample {
        let mut interval = FunctionMetrics {
            function: "all".to_owned(),
            started: 12,
            committed: 10,
            failed: 2,
            deadlocks: 3,
            ..FunctionMetrics::default()
        };
        interval.histogram.buckets[3] = 12;
        interval.histogram.sum_nanos = 48_000_000;
        interval.derive();
        Sample {
            taken_at_ms: 1_700_000_000_000,
            total: interval.clone(),
            interval,
            active: 2,
            oldest_active_ms: Some(1500.0),
            pool: PoolStatus {
                size: 4,
                idle: 1,
                max: 8,
            },
            health: 87,
        }
    }

    #[test]
    fn a_sample_reads_back_as_it_was_written() {
        let original = sample();
        let row = sample_row(&original).unwrap_or_else(|error| panic!("{error}"));
        assert_eq!((row.committed, row.failed, row.health), (10, 2, 87));
        let read = sample_from_json(&row.json).unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(read, original);
    }

    #[test]
    fn a_sample_from_another_version_keeps_what_it_can() {
        let original = sample();
        let row = sample_row(&original).unwrap_or_else(|error| panic!("{error}"));
        let mut json: serde_json::Value =
            serde_json::from_str(&row.json).unwrap_or_else(|error| panic!("{error}"));
        // An older version without `deadlocks`, and other bucket bounds.
        json["interval"]["counts"]
            .as_object_mut()
            .map(|counts| counts.remove("deadlocks"));
        json["interval"]["buckets"] = serde_json::json!([1, 2, 3]);
        let read = sample_from_json(&json.to_string()).unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(read.interval.deadlocks, 0);
        assert_eq!(read.interval.committed, 10);
        assert_eq!(read.interval.duration, original.interval.duration);
    }

    #[test]
    fn names_are_cut_at_a_character_and_alerts_round_trip() {
        assert_eq!(cut("żółw", 2), "żó");
        assert_eq!(cut("ab", 5), "ab");
        let alert = Alert {
            level: AlertLevel::Error,
            rule: AlertRule::RetriesExhausted,
            function: Some("bank::transfer".to_owned()),
            message: "gave up".to_owned(),
            value: 3.0,
            threshold: 0.0,
            at_ms: 42,
        };
        assert_eq!(alert_from_row(alert_row(&alert)), Some(alert.clone()));
        let mut unknown = alert_row(&alert);
        unknown.rule = "from_the_future".to_owned();
        assert_eq!(alert_from_row(unknown), None);
    }
}
