//! Writing to the metrics store in the background: samples and alerts wait
//! in memory (at most as many as the monitor's history holds, the oldest
//! dropped first) until the writer task sends them in one batch, once per
//! sampling interval. A failed or slow write loses nothing that fits: the
//! rows wait for the next one. Failures are counted, and raised as a
//! `metrics_store_failures` alert, which the alert deduplication logs once
//! per window. At start-up the writer first reads back what an earlier run
//! stored.
//!
//! Nothing here is awaited by the sampling or by a transaction: the
//! sampler only pushes into the queue, under a lock held for a push.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use tokio::sync::{Notify, watch};

use super::codec::{self, MANAGER_CHARS};
use super::sql::{Batch, Load, RetentionLimits};
use super::{MetricsStore, Restored, StoreError, StoreStatus};
use crate::monitor::Sample;
use crate::monitor::alert::{Alert, AlertLevel, AlertRule};
use crate::monitor::alerts::DedupKey;
use crate::monitor::config::Clock;

/// The monitor, as the writer sees it.
pub(crate) trait Host: Send + Sync {
    /// Takes back an earlier run's history (oldest first), alerts (oldest
    /// first) and deduplication windows.
    fn restore(&self, samples: Vec<Sample>, alerts: Vec<Alert>, last_raised: Vec<(DedupKey, u64)>);
    /// Raises an alert about the store itself.
    fn raise(&self, alert: Alert);
}

/// What waits to be written, in the order it came.
#[derive(Default)]
struct Queue {
    samples: VecDeque<(u64, Sample)>,
    alerts: VecDeque<(u64, Alert)>,
    next: u64,
    schema_ready: bool,
    restored: bool,
    status: StoreStatus,
}

/// A monitor's connection to its store.
pub(crate) struct Writer {
    store: MetricsStore,
    manager: String,
    started_at_ms: u64,
    sample_capacity: usize,
    alert_capacity: usize,
    dedup_window_ms: u64,
    clock: Arc<dyn Clock>,
    queue: Mutex<Queue>,
    /// One batch at a time: the task's and a `flush()`'s never interleave.
    writing: tokio::sync::Mutex<()>,
    wake: Notify,
    restored: watch::Sender<Option<Result<Restored, StoreError>>>,
}

/// Where the writer's settings come from.
pub(crate) struct WriterSettings {
    pub(crate) manager: String,
    pub(crate) sample_capacity: usize,
    pub(crate) alert_capacity: usize,
    pub(crate) dedup_window_ms: u64,
    pub(crate) clock: Arc<dyn Clock>,
}

impl Writer {
    pub(crate) fn new(store: MetricsStore, settings: WriterSettings) -> Self {
        let status = StoreStatus {
            backend: store.backend(),
            ..StoreStatus::default()
        };
        Writer {
            store,
            manager: codec::cut(&settings.manager, MANAGER_CHARS),
            started_at_ms: settings.clock.now_ms(),
            sample_capacity: settings.sample_capacity,
            alert_capacity: settings.alert_capacity,
            dedup_window_ms: settings.dedup_window_ms,
            clock: settings.clock,
            queue: Mutex::new(Queue {
                status,
                ..Queue::default()
            }),
            writing: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            restored: watch::Sender::new(None),
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a sample and the alerts raised with it, and wakes the task.
    pub(crate) fn push(&self, sample: Option<&Sample>, alerts: &[Alert]) {
        {
            let mut queue = self.queue();
            if let Some(sample) = sample {
                let seq = queue.next;
                queue.next += 1;
                if queue.samples.len() >= self.sample_capacity {
                    queue.samples.pop_front();
                    queue.status.samples_dropped += 1;
                }
                queue.samples.push_back((seq, sample.clone()));
            }
            for alert in alerts {
                let seq = queue.next;
                queue.next += 1;
                if queue.alerts.len() >= self.alert_capacity {
                    queue.alerts.pop_front();
                    queue.status.alerts_dropped += 1;
                }
                queue.alerts.push_back((seq, alert.clone()));
            }
        }
        if sample.is_some() {
            self.wake.notify_one();
        }
    }

    pub(crate) fn status(&self) -> StoreStatus {
        let queue = self.queue();
        StoreStatus {
            pending_samples: queue.samples.len(),
            pending_alerts: queue.alerts.len(),
            ..queue.status.clone()
        }
    }

    /// Waits until the first attempt to read the history back has ended,
    /// and says how it went (the latest outcome, if it was retried since).
    pub(crate) async fn restored(&self) -> Result<Restored, StoreError> {
        let mut outcome = self.restored.subscribe();
        match outcome.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone().unwrap_or(Err(StoreError::Stopped)),
            Err(_) => Err(StoreError::Stopped),
        }
    }

    /// The task: restores at once, then writes whenever a sample arrives,
    /// until `stop`; then writes what waits one last time.
    pub(crate) async fn run(
        self: Arc<Self>,
        host: Weak<dyn Host>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let Some(monitor) = host.upgrade() else {
                break;
            };
            let _ = self.step(Some(&*monitor)).await;
            drop(monitor);
            if crate::monitor::stopped_first(&mut stop, self.wake.notified()).await {
                break;
            }
        }
        let monitor = host.upgrade();
        let _ = self.step(monitor.as_deref()).await;
        self.restored.send_if_modified(|outcome| {
            let unset = outcome.is_none();
            if unset {
                *outcome = Some(Err(StoreError::Stopped));
            }
            unset
        });
    }

    /// Creates the schema, restores and writes, as far as each is still
    /// needed; stops at the first failure, which is counted and raised.
    pub(crate) async fn step(&self, host: Option<&dyn Host>) -> Result<(), StoreError> {
        let _one_at_a_time = self.writing.lock().await;
        let (schema_ready, restored) = {
            let queue = self.queue();
            (queue.schema_ready, queue.restored)
        };
        if self.store.create_schema && !schema_ready {
            match self.store.ensure_schema().await {
                Ok(()) => self.queue().schema_ready = true,
                Err(error) => return Err(self.failed(host, error)),
            }
        }
        if let (Some(host), false) = (host, restored) {
            let outcome = self.restore(host).await;
            let failure = outcome.as_ref().err().cloned();
            self.restored.send_replace(Some(outcome));
            if let Some(error) = failure {
                return Err(self.failed(Some(host), error));
            }
        }
        self.write(host).await
    }

    async fn restore(&self, host: &dyn Host) -> Result<Restored, StoreError> {
        let signed = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        let now_ms = self.clock.now_ms();
        let load = Load {
            tables: &self.store.tables,
            manager: &self.manager,
            before_ms: signed(self.started_at_ms),
            samples: signed(self.sample_capacity as u64),
            alerts: signed(self.alert_capacity as u64),
            raised_since_ms: signed(now_ms.saturating_sub(self.dedup_window_ms)),
        };
        let loaded = tokio::time::timeout(self.store.write_timeout, self.store.pool.load(load))
            .await
            .map_err(|_| StoreError::Timeout(self.store.write_timeout))??;
        let mut samples = Vec::with_capacity(loaded.sample_json.len());
        for json in loaded.sample_json.iter().rev() {
            match codec::sample_from_json(json) {
                Ok(sample) => samples.push(sample),
                // One unreadable row must not cost the rest of the history.
                Err(error) => tracing::warn!(
                    target: "covet_txn::monitor",
                    %error,
                    "a stored sample could not be read; it is skipped"
                ),
            }
        }
        let alerts: Vec<Alert> = loaded
            .alert_rows
            .into_iter()
            .rev()
            .filter_map(codec::alert_from_row)
            .collect();
        let last_raised: Vec<(DedupKey, u64)> = loaded
            .last_raised
            .into_iter()
            .filter_map(|(rule, function, at_ms)| {
                let rule = AlertRule::from_name(&rule)?;
                let function = (!function.is_empty()).then_some(function);
                Some(((rule, function), u64::try_from(at_ms).ok()?))
            })
            .collect();
        let restored = Restored {
            samples: samples.len(),
            alerts: alerts.len(),
            open_windows: last_raised.len(),
        };
        host.restore(samples, alerts, last_raised);
        let mut queue = self.queue();
        queue.restored = true;
        queue.status.restored = Some(restored);
        drop(queue);
        tracing::info!(
            target: "covet_txn::monitor",
            samples = restored.samples,
            alerts = restored.alerts,
            backend = self.store.backend(),
            "monitor history restored from the metrics store"
        );
        Ok(restored)
    }

    async fn write(&self, host: Option<&dyn Host>) -> Result<(), StoreError> {
        let (samples, alerts, last_seq) = {
            let queue = self.queue();
            let last_seq = queue
                .samples
                .back()
                .map(|(seq, _)| *seq)
                .max(queue.alerts.back().map(|(seq, _)| *seq));
            let samples: Vec<Sample> = queue.samples.iter().map(|(_, s)| s.clone()).collect();
            let alerts: Vec<Alert> = queue.alerts.iter().map(|(_, a)| a.clone()).collect();
            (samples, alerts, last_seq)
        };
        let Some(last_seq) = last_seq else {
            return Ok(());
        };
        let sample_rows = samples
            .iter()
            .map(codec::sample_row)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| StoreError::Database(format!("cannot encode a sample: {error}")));
        let sample_rows = match sample_rows {
            Ok(rows) => rows,
            Err(error) => return Err(self.failed(host, error)),
        };
        let alert_rows: Vec<_> = alerts.iter().map(codec::alert_row).collect();
        let now_ms = i64::try_from(self.clock.now_ms()).unwrap_or(i64::MAX);
        let batch = Batch {
            tables: &self.store.tables,
            manager: &self.manager,
            samples: &sample_rows,
            alerts: &alert_rows,
            retention: RetentionLimits::from(&self.store.retention),
            now_ms,
        };
        let started = Instant::now();
        let written = tokio::time::timeout(self.store.write_timeout, self.store.pool.write(batch))
            .await
            .map_err(|_| StoreError::Timeout(self.store.write_timeout))
            .and_then(|written| written.map_err(StoreError::from));
        let deleted = match written {
            Ok(deleted) => deleted,
            Err(error) => return Err(self.failed(host, error)),
        };
        let took_ms = started.elapsed().as_secs_f64() * 1000.0;
        let mut queue = self.queue();
        queue.samples.retain(|(seq, _)| *seq > last_seq);
        queue.alerts.retain(|(seq, _)| *seq > last_seq);
        let status = &mut queue.status;
        let recovered_after = std::mem::take(&mut status.consecutive_failures);
        status.writes += 1;
        status.samples_written += samples.len() as u64;
        status.alerts_written += alerts.len() as u64;
        status.rows_deleted += deleted;
        status.last_write_at_ms = Some(self.clock.now_ms());
        status.last_write_ms = Some(took_ms);
        drop(queue);
        if recovered_after > 0 {
            tracing::info!(
                target: "covet_txn::monitor",
                backend = self.store.backend(),
                failures = recovered_after,
                samples = samples.len(),
                "the metrics store is written to again"
            );
        }
        Ok(())
    }

    /// Counts a failure and raises it as an alert (logged once per window
    /// by the alert deduplication).
    fn failed(&self, host: Option<&dyn Host>, error: StoreError) -> StoreError {
        let (consecutive, pending, dropped) = {
            let mut queue = self.queue();
            queue.status.failures += 1;
            queue.status.consecutive_failures += 1;
            queue.status.last_error = Some(error.to_string());
            (
                queue.status.consecutive_failures,
                queue.samples.len(),
                queue.status.samples_dropped,
            )
        };
        tracing::debug!(target: "covet_txn::monitor", %error, consecutive, "a metrics store write failed");
        if let Some(host) = host {
            host.raise(Alert {
                level: AlertLevel::Warning,
                rule: AlertRule::MetricsStoreFailures,
                function: None,
                message: format!(
                    "the metrics store ({}) failed {consecutive} time(s) in a row: {error}; \
                     {pending} sample(s) wait in memory, {dropped} dropped so far",
                    self.store.backend()
                ),
                value: consecutive as f64,
                threshold: 0.0,
                at_ms: self.clock.now_ms(),
            });
        }
        error
    }
}
