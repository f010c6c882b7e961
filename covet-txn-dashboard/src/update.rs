//! What one update of the page carries, read from the monitor, and the
//! `?level=` filter of the alerts. Pure reading: no HTTP here.

use std::time::Duration;

use covet_txn::monitor::{Alert, AlertFilter, AlertLevel, Health, Monitor, Sample, StoreStatus};
use covet_txn::{MetricsSnapshot, ReplicaReport};
use serde::Serialize;

/// How many samples and alerts one update carries at most.
const HISTORY_SHOWN: usize = 300;
const ALERTS_SHOWN: usize = 200;

/// The levels `?level=` accepts, in any case.
pub(crate) const LEVELS: [(&str, AlertLevel); 4] = [
    ("INFO", AlertLevel::Info),
    ("WARNING", AlertLevel::Warning),
    ("ERROR", AlertLevel::Error),
    ("CRITICAL", AlertLevel::Critical),
];

/// The lowest alert level a request asks for: `None` for all of them.
pub(crate) type Level = Option<AlertLevel>;

/// Reads `?level=`: absent or empty means every level; an unknown name is
/// an error that lists the accepted ones.
pub(crate) fn parse_level(value: Option<&str>) -> Result<Level, String> {
    let Some(value) = value.map(str::trim).filter(|value| !value.is_empty()) else {
        return Ok(None);
    };
    LEVELS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(value))
        // INFO is the lowest level: at least INFO is every alert.
        .map(|(_, level)| Some(*level).filter(|level| *level != AlertLevel::Info))
        .ok_or_else(|| {
            let names: Vec<&str> = LEVELS.iter().map(|(name, _)| *name).collect();
            format!(
                "unknown alert level `{}`: use one of {} (in any case), or leave `level` out for all",
                value.escape_debug(),
                names.join(", ")
            )
        })
}

pub(crate) fn filter(level: Level) -> AlertFilter {
    level.map_or_else(AlertFilter::new, |level| AlertFilter::new().at_least(level))
}

/// One point of the charts.
#[derive(Serialize)]
struct Point {
    at_ms: u64,
    seconds: f64,
    committed: u64,
    rolled_back: u64,
    failed: u64,
    retries: u64,
    deadlocks: u64,
    serialization_failures: u64,
    /// Busy databases, lock wait timeouts and snapshot conflicts: how
    /// SQLite and MySQL report most collisions.
    lock_conflicts: u64,
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
    p99_ms: Option<f64>,
    active: usize,
    health: u8,
}

/// One replica's row.
#[derive(Serialize)]
struct ReplicaRow {
    name: String,
    reachable: bool,
    serving: bool,
    lag_ms: Option<f64>,
    lag_bytes: Option<u64>,
    reads: u64,
    last_error: Option<String>,
}

/// The replicas panel, shown when the manager has replicas or primary hosts.
#[derive(Serialize)]
struct Replicas {
    replicas: Vec<ReplicaRow>,
    max_lag_ms: f64,
    reads_on_primary_unavailable: u64,
    reads_on_primary_for_writes: u64,
    primary_changes: u64,
}

impl From<ReplicaReport> for Replicas {
    fn from(report: ReplicaReport) -> Self {
        Replicas {
            replicas: report
                .replicas
                .into_iter()
                .map(|replica| ReplicaRow {
                    name: replica.name,
                    reachable: replica.reachable,
                    serving: replica.serving,
                    lag_ms: replica.lag.map(|lag| lag.as_secs_f64() * 1000.0),
                    lag_bytes: replica.lag_bytes,
                    reads: replica.reads,
                    last_error: replica.last_error,
                })
                .collect(),
            max_lag_ms: report.max_lag.as_secs_f64() * 1000.0,
            reads_on_primary_unavailable: report.reads_on_primary_unavailable,
            reads_on_primary_for_writes: report.reads_on_primary_for_writes,
            primary_changes: report.primary_changes,
        }
    }
}

/// Everything the page shows, in one update.
#[derive(Serialize)]
struct Update {
    metrics: MetricsSnapshot,
    health: Health,
    history: Vec<Point>,
    alerts: Vec<Alert>,
    /// The metrics store, if the monitor keeps its history in one.
    store: Option<StoreStatus>,
    replicas: Replicas,
    /// Active transactions older than this are shown as long.
    long_transaction_ms: u128,
    refresh_ms: u128,
}

/// The update for alerts at `level` and above, as one line of JSON (an
/// event's data must not span lines).
pub(crate) fn json(
    monitor: &Monitor,
    refresh: Duration,
    level: Level,
) -> Result<Vec<u8>, covet_txn::Error> {
    let metrics = monitor.metrics()?;
    let health = monitor.health()?;
    let samples = monitor.history();
    let shown = &samples[samples.len().saturating_sub(HISTORY_SHOWN + 1)..];
    let mut previous_at = None;
    let mut history: Vec<Point> = shown
        .iter()
        .map(|sample| point(sample, &mut previous_at))
        .collect();
    // The extra sample read above only gives the first point its duration.
    if history.len() > HISTORY_SHOWN {
        history.remove(0);
    }
    let mut alerts = monitor.alerts(filter(level));
    if alerts.len() > ALERTS_SHOWN {
        alerts.drain(..alerts.len() - ALERTS_SHOWN);
    }
    alerts.reverse();
    let update = Update {
        metrics,
        health,
        history,
        alerts,
        store: monitor.store_status(),
        replicas: monitor.replicas()?.into(),
        long_transaction_ms: monitor.thresholds().long_transaction.as_millis(),
        refresh_ms: refresh.as_millis(),
    };
    serde_json::to_vec(&update)
        .map_err(|error| covet_txn::Error::InvalidOption(format!("cannot write JSON: {error}")))
}

fn point(sample: &Sample, previous_at: &mut Option<u64>) -> Point {
    let seconds = previous_at.map_or(0.0, |at: u64| {
        sample.taken_at_ms.saturating_sub(at) as f64 / 1000.0
    });
    *previous_at = Some(sample.taken_at_ms);
    let interval = &sample.interval;
    Point {
        at_ms: sample.taken_at_ms,
        seconds,
        committed: interval.committed,
        rolled_back: interval.rolled_back,
        failed: interval.failed,
        retries: interval.retries,
        deadlocks: interval.deadlocks,
        serialization_failures: interval.serialization_failures,
        lock_conflicts: interval.busy + interval.lock_timeouts + interval.snapshot_conflicts,
        p50_ms: interval.duration.p50_ms,
        p95_ms: interval.duration.p95_ms,
        p99_ms: interval.duration.p99_ms,
        active: sample.active,
        health: sample.health,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_read_in_any_case_and_unknown_ones_are_refused() {
        assert_eq!(parse_level(None), Ok(None));
        assert_eq!(parse_level(Some("")), Ok(None));
        assert_eq!(parse_level(Some("info")), Ok(None));
        assert_eq!(parse_level(Some("Warning")), Ok(Some(AlertLevel::Warning)));
        assert_eq!(
            parse_level(Some("CRITICAL")),
            Ok(Some(AlertLevel::Critical))
        );
        let refusal = parse_level(Some("loud")).expect_err("unknown");
        assert!(
            refusal.contains("INFO, WARNING, ERROR, CRITICAL"),
            "{refusal}"
        );
    }
}
