//! Watching a manager over time: a background task samples its metrics at
//! an interval into a bounded history, evaluates the alert rules on each
//! sample, and keeps a health score and recommendations; reports export it
//! all.
//!
//! The monitor reads the metrics; it never sits on the transactions' path.
//! It stops when it is shut down, when the last handle to it is dropped, or
//! when its manager is dropped. With a [`MetricsStore`] it also keeps its
//! samples and alerts in a database, and takes them back when it starts.

mod alert;
mod alerts;
mod config;
mod export;
mod health;
mod replica_metrics;
mod rules;
mod sampling;
mod store;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use alert::{Alert, AlertFilter, AlertLevel, AlertRule, AlertSink};
pub use alerts::AlertEngine;
pub use config::{Clock, ManualClock, MonitorConfig, SystemClock};
pub(crate) use export::encode_text as export_text;
pub use export::{OPENMETRICS_CONTENT_TYPE, PrometheusCollector};
pub use health::Health;
pub use rules::{AlertInput, AlertThresholds};
pub use sampling::Sample;
pub use store::{
    DEFAULT_MAX_AGE, DEFAULT_MAX_ALERTS, DEFAULT_MAX_SAMPLES, DEFAULT_WRITE_TIMEOUT, MetricsStore,
    Restored, StoreError, StoreStatus,
};

use self::alerts::DedupKey;
use self::store::writer::{Host, Writer, WriterSettings};
use crate::engine::{EngineHandle, WeakEngine};
use crate::error::Error;
use crate::observe::metrics::MetricsSnapshot;

struct State {
    history: VecDeque<Sample>,
    latest: Option<MetricsSnapshot>,
    alerts: AlertEngine,
}

struct Inner {
    manager: WeakEngine,
    config: MonitorConfig,
    state: Mutex<State>,
    /// The store's writer, if there is a store.
    store: Option<Arc<Writer>>,
    /// Raised to stop the background tasks, which hold the monitor only
    /// weakly.
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.send_replace(true);
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
        let store = config.store.clone().map(|store| {
            Arc::new(Writer::new(
                store,
                WriterSettings {
                    manager: manager.name().to_owned(),
                    sample_capacity: config.capacity,
                    alert_capacity: config.alert_capacity,
                    dedup_window_ms: u64::try_from(config.dedup_window.as_millis())
                        .unwrap_or(u64::MAX),
                    clock: Arc::clone(&config.clock),
                },
            ))
        });
        let monitor = Monitor {
            inner: Arc::new(Inner {
                manager: manager.downgrade(),
                state: Mutex::new(State {
                    history: VecDeque::new(),
                    latest: None,
                    alerts,
                }),
                config,
                store,
                stop: watch::Sender::new(false),
                tasks: Mutex::new(Vec::new()),
            }),
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let inner = &monitor.inner;
            let mut tasks = lock(&inner.tasks);
            tasks.push(runtime.spawn(sampling::sample_periodically(
                Arc::downgrade(inner),
                inner.stop.subscribe(),
                inner.config.interval,
            )));
            if let Some(store) = &inner.store {
                let host: std::sync::Weak<dyn Host> = Arc::downgrade(inner) as _;
                tasks.push(runtime.spawn(Arc::clone(store).run(host, inner.stop.subscribe())));
            }
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

    /// Where the manager's read-only transactions went and its replicas'
    /// state: [`TxManager::replicas`](crate::TxManager::replicas).
    pub fn replicas(&self) -> Result<crate::ReplicaReport, Error> {
        self.inner.manager().map(|manager| manager.replica_report())
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

    /// Waits until the monitor has read back what its store kept from
    /// earlier runs (history, alerts and open deduplication windows), and
    /// says how much; at once if it already has. With the store unreachable
    /// at start-up, the error of the first attempt (the monitor tries again
    /// at every interval, and [`store_status`](Self::store_status) tells
    /// when it succeeded).
    pub async fn restored(&self) -> Result<Restored, StoreError> {
        match &self.inner.store {
            Some(store) => store.restored().await,
            None => Err(StoreError::NotConfigured),
        }
    }

    /// Writes the samples and alerts that wait for the store now, instead
    /// of at the next interval: before a planned exit, for example. Fails
    /// as a write fails; what could not be written keeps waiting.
    pub async fn flush(&self) -> Result<(), StoreError> {
        match &self.inner.store {
            Some(store) => store.step(Some(&*self.inner)).await,
            None => Err(StoreError::NotConfigured),
        }
    }

    /// How the metrics store is doing: rows written, failures, what waits;
    /// `None` without a store.
    pub fn store_status(&self) -> Option<StoreStatus> {
        self.inner.store.as_ref().map(|store| store.status())
    }

    /// Stops the background sampling; what was gathered stays readable. A
    /// store gets one last write of what waits, in the background.
    pub fn shutdown(&self) {
        self.inner.stop.send_replace(true);
    }

    /// Whether the background sampling is still running.
    pub fn is_running(&self) -> bool {
        lock(&self.inner.tasks)
            .first()
            .is_some_and(|task| !task.is_finished())
    }
}

impl Inner {
    fn manager(&self) -> Result<EngineHandle, Error> {
        self.manager.upgrade().ok_or(Error::InvalidOption(
            "the monitored transaction manager has been dropped".to_owned(),
        ))
    }
}

impl Host for Inner {
    fn restore(&self, samples: Vec<Sample>, alerts: Vec<Alert>, last_raised: Vec<(DedupKey, u64)>) {
        let mut state = lock(&self.state);
        // What this run sampled before the store answered is newer than
        // anything stored (only rows from before it started are read).
        let merged: Vec<Sample> = samples.into_iter().chain(state.history.drain(..)).collect();
        let excess = merged.len().saturating_sub(self.config.capacity);
        state.history = merged.into_iter().skip(excess).collect();
        state.alerts.restore(alerts, last_raised);
    }

    fn raise(&self, alert: Alert) {
        let raised = lock(&self.state).alerts.raise(alert);
        if let Some(alert) = raised {
            if let Some(store) = &self.store {
                store.push(None, std::slice::from_ref(&alert));
            }
            self.announce(&alert);
        }
    }
}

/// Waits for `stop` to be raised or `other` to finish: `true` if the
/// monitor stopped first (or every handle to it is gone).
async fn stopped_first(stop: &mut watch::Receiver<bool>, other: impl std::future::Future) -> bool {
    let stopped = std::pin::pin!(stop.wait_for(|stopped| *stopped));
    let other = std::pin::pin!(other);
    matches!(
        futures_util::future::select(stopped, other).await,
        futures_util::future::Either::Left(_)
    )
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
