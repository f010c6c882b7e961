//! Watching a manager over time: a background task samples its metrics at
//! an interval into a bounded history, evaluates the alert rules on each
//! sample, and keeps a health score and recommendations; reports export it
//! all.
//!
//! The monitor reads the metrics; it never sits on the transactions' path.
//! It stops when it is shut down, when the last handle to it is dropped, or
//! when its manager is dropped.

mod alert;
mod alerts;
mod config;
mod export;
mod health;
mod rules;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures_util::future::Either;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub use alert::{Alert, AlertFilter, AlertLevel, AlertRule, AlertSink};
pub use alerts::AlertEngine;
pub use config::{Clock, ManualClock, MonitorConfig, SystemClock};
pub(crate) use export::encode_text as export_text;
pub use export::{OPENMETRICS_CONTENT_TYPE, PrometheusCollector};
pub use health::Health;
pub use rules::{AlertInput, AlertThresholds};

use crate::engine::{EngineHandle, WeakEngine};
use crate::error::Error;
use crate::observe::counters::FunctionMetrics;
use crate::observe::metrics::{MetricsSnapshot, PoolStatus};

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

struct State {
    history: VecDeque<Sample>,
    latest: Option<MetricsSnapshot>,
    alerts: AlertEngine,
}

struct Inner {
    manager: WeakEngine,
    config: MonitorConfig,
    state: Mutex<State>,
    /// Shared with the sampling task, which holds the monitor only weakly.
    stop: Arc<Notify>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.notify_one();
    }
}

/// A manager's monitor. Cheap to clone; the background sampling stops when
/// the last clone is dropped, on [`shutdown`](Self::shutdown), or when the
/// manager is dropped.
///
/// ```no_run
/// # async fn demo(manager: covet_txn::TxManager<sqlx::Postgres>) -> Result<(), covet_txn::Error> {
/// use covet_txn::monitor::{AlertFilter, AlertLevel, MonitorConfig};
/// let monitor = manager.monitor_with(MonitorConfig::new().on_alert(|alert| eprintln!("{}", alert.message)));
/// let health = monitor.health()?;
/// println!("health {} / 100: {:?}", health.score, health.recommendations);
/// let serious = monitor.alerts(AlertFilter::new().at_least(AlertLevel::Error));
/// # let _ = serious; Ok(()) }
/// ```
#[derive(Clone)]
pub struct Monitor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("config", &self.inner.config)
            .finish()
    }
}

/// Everything the monitor knows, for a JSON report.
#[derive(Serialize)]
struct Report<'a> {
    metrics: &'a MetricsSnapshot,
    health: &'a Health,
    history: &'a [Sample],
    alerts: &'a [Alert],
}

impl Monitor {
    pub(crate) fn start(manager: &EngineHandle, config: MonitorConfig) -> Monitor {
        let alerts = AlertEngine::new(
            config.thresholds,
            config.dedup_window,
            config.alert_capacity,
        );
        let monitor = Monitor {
            inner: Arc::new(Inner {
                manager: manager.downgrade(),
                state: Mutex::new(State {
                    history: VecDeque::new(),
                    latest: None,
                    alerts,
                }),
                config,
                stop: Arc::new(Notify::new()),
                task: Mutex::new(None),
            }),
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let task = runtime.spawn(sample_periodically(
                Arc::downgrade(&monitor.inner),
                Arc::clone(&monitor.inner.stop),
                monitor.inner.config.interval,
            ));
            *lock(&monitor.inner.task) = Some(task);
        }
        monitor
    }

    /// Takes a sample now: adds it to the history and raises the alerts it
    /// calls for.
    pub fn sample(&self) -> Result<Sample, Error> {
        self.inner.sample()
    }

    /// The samples kept, oldest first.
    pub fn history(&self) -> Vec<Sample> {
        lock(&self.inner.state).history.iter().cloned().collect()
    }

    /// The alerts kept that pass `filter`, oldest first.
    pub fn alerts(&self, filter: AlertFilter) -> Vec<Alert> {
        lock(&self.inner.state).alerts.history(&filter)
    }

    /// The manager's metrics now.
    pub fn metrics(&self) -> Result<MetricsSnapshot, Error> {
        self.inner.manager().map(|manager| manager.snapshot())
    }

    /// The health score over the last interval, and recommendations.
    pub fn health(&self) -> Result<Health, Error> {
        let metrics = self.metrics()?;
        let state = lock(&self.inner.state);
        let recent = state
            .history
            .back()
            .map_or(&metrics.total, |sample| &sample.interval);
        Ok(Health::assess(
            recent,
            &metrics.functions,
            &metrics.active,
            metrics.pool,
            state.alerts.thresholds(),
        ))
    }

    /// The thresholds the alerts are raised at.
    pub fn thresholds(&self) -> AlertThresholds {
        self.inner.config.thresholds
    }

    /// Metrics, health, history and alerts, as JSON.
    pub fn report_json(&self) -> Result<String, Error> {
        let metrics = self.metrics()?;
        let health = self.health()?;
        let history = self.history();
        let alerts = self.alerts(AlertFilter::new());
        export::json(&Report {
            metrics: &metrics,
            health: &health,
            history: &history,
            alerts: &alerts,
        })
    }

    /// The metrics now as CSV: one row per function, then the totals.
    ///
    /// Every CSV export is safe to open in a spreadsheet: a cell that would
    /// run as a formula (starting with `=`, `+`, `-`, `@`, a tab or a
    /// carriage return, unless it is a plain number) is prefixed with `'`,
    /// and an export with no rows still has its header row.
    pub fn metrics_csv(&self) -> Result<String, Error> {
        export::metrics_csv(&self.metrics()?)
    }

    /// The snapshot history as CSV: one row per sample (a header row only,
    /// before the first sample).
    pub fn history_csv(&self) -> Result<String, Error> {
        export::history_csv(&self.history())
    }

    /// The alert history as CSV (a header row only, without alerts).
    pub fn alerts_csv(&self, filter: AlertFilter) -> Result<String, Error> {
        export::alerts_csv(&self.alerts(filter))
    }

    /// The manager's metrics now in the Prometheus (OpenMetrics) text format,
    /// as [`TxManager::prometheus_text`](crate::TxManager::prometheus_text)
    /// gives them.
    pub fn prometheus_text(&self) -> Result<String, Error> {
        export_text(PrometheusCollector(self.inner.manager()?))
    }

    /// Stops the background sampling; what was gathered stays readable.
    pub fn shutdown(&self) {
        self.inner.stop.notify_one();
    }

    /// Whether the background sampling is still running.
    pub fn is_running(&self) -> bool {
        lock(&self.inner.task)
            .as_ref()
            .is_some_and(|task| !task.is_finished())
    }
}

impl Inner {
    fn manager(&self) -> Result<EngineHandle, Error> {
        self.manager.upgrade().ok_or(Error::InvalidOption(
            "the monitored transaction manager has been dropped".to_owned(),
        ))
    }

    fn sample(&self) -> Result<Sample, Error> {
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
        for alert in &raised {
            log_alert(alert);
            for sink in &self.config.sinks {
                sink(alert);
            }
        }
        Ok(sample)
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

async fn sample_periodically(monitor: Weak<Inner>, stop: Arc<Notify>, interval: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopped = std::pin::pin!(stop.notified());
        let tick = std::pin::pin!(ticks.tick());
        if let Either::Left(_) = futures_util::future::select(stopped, tick).await {
            return;
        }
        // The last handle gone, or the manager dropped: nothing to watch.
        let Some(inner) = monitor.upgrade() else {
            return;
        };
        if inner.sample().is_err() {
            return;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
