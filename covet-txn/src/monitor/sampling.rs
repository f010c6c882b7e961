//! Taking a sample: the manager's counters now, less those of the previous
//! sample, give an interval; the alert rules and the health score are run
//! on it; the sample joins the history (and, with a store, the queue of
//! rows to write); the alerts raised go to the log and the sinks. The
//! background task takes one per interval.

use std::sync::Weak;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use super::alert::{Alert, AlertLevel};
use super::health::Health;
use super::rules::AlertInput;
use super::{Inner, lock};
use crate::error::Error;
use crate::observe::counters::FunctionMetrics;
use crate::observe::metrics::PoolStatus;

/// One sample of the history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// When it was taken, in milliseconds since the Unix epoch.
    pub taken_at_ms: u64,
    /// Everything counted so far.
    pub total: FunctionMetrics,
    /// What happened since the previous sample (everything, for the first).
    pub interval: FunctionMetrics,
    /// Transactions running when it was taken.
    pub active: usize,
    /// The age of the oldest of them, in milliseconds.
    pub oldest_active_ms: Option<f64>,
    /// The pool.
    pub pool: PoolStatus,
    /// The health score over the interval.
    pub health: u8,
}

impl Inner {
    pub(super) fn sample(&self) -> Result<Sample, Error> {
        let snapshot = self.manager()?.snapshot();
        let now_ms = self.config.clock.now_ms();
        let mut state = lock(&self.state);
        let (interval, functions) = match &state.latest {
            Some(previous) => (
                snapshot.total.since(&previous.total),
                snapshot
                    .functions
                    .iter()
                    .map(|function| {
                        previous
                            .functions
                            .iter()
                            .find(|earlier| earlier.function == function.function)
                            .map_or_else(|| function.clone(), |earlier| function.since(earlier))
                    })
                    .collect(),
            ),
            None => (snapshot.total.clone(), snapshot.functions.clone()),
        };
        let input = AlertInput {
            interval: interval.clone(),
            functions,
            active: snapshot.active.clone(),
            pool: snapshot.pool,
        };
        let raised = state.alerts.evaluate(&input, now_ms);
        let health = Health::assess(
            &interval,
            &snapshot.functions,
            &snapshot.active,
            snapshot.pool,
            state.alerts.thresholds(),
        );
        let sample = Sample {
            taken_at_ms: now_ms,
            total: snapshot.total.clone(),
            interval,
            active: snapshot.active.len(),
            oldest_active_ms: snapshot
                .active
                .first()
                .map(|transaction| transaction.age_ms),
            pool: snapshot.pool,
            health: health.score,
        };
        if state.history.len() == self.config.capacity {
            state.history.pop_front();
        }
        state.history.push_back(sample.clone());
        state.latest = Some(snapshot);
        drop(state);
        if let Some(store) = &self.store {
            store.push(Some(&sample), &raised);
        }
        for alert in &raised {
            self.announce(alert);
        }
        Ok(sample)
    }

    /// Sends a raised alert to the log and to every sink.
    pub(super) fn announce(&self, alert: &Alert) {
        log_alert(alert);
        for sink in &self.config.sinks {
            sink(alert);
        }
    }
}

fn log_alert(alert: &Alert) {
    let function = alert.function.as_deref().unwrap_or("");
    match alert.level {
        AlertLevel::Info => {
            tracing::info!(target: "covet_txn::alerts", level = alert.level.name(), rule = alert.rule.name(), function, "{}", alert.message)
        }
        AlertLevel::Warning => {
            tracing::warn!(target: "covet_txn::alerts", level = alert.level.name(), rule = alert.rule.name(), function, "{}", alert.message)
        }
        AlertLevel::Error | AlertLevel::Critical => {
            tracing::error!(target: "covet_txn::alerts", level = alert.level.name(), rule = alert.rule.name(), function, "{}", alert.message)
        }
    }
}

/// Samples every `interval` until `stop`, the last handle to the monitor
/// is dropped, or the manager is.
pub(super) async fn sample_periodically(
    monitor: Weak<Inner>,
    mut stop: watch::Receiver<bool>,
    interval: Duration,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if super::stopped_first(&mut stop, ticks.tick()).await {
            return;
        }
        let Some(inner) = monitor.upgrade() else {
            return;
        };
        if inner.sample().is_err() {
            return;
        }
    }
}
