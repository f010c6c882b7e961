//! How a monitor is set up: its interval, how much it keeps, its alert
//! thresholds and sinks, the clock it reads, and where it stores what it
//! gathered. Plain settings, read by the monitor when it starts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::alert::{Alert, AlertSink};
use super::rules::AlertThresholds;
use super::store::MetricsStore;
use crate::observe::metrics::unix_millis;

/// Where the monitor gets the time from: the system clock, or a clock a
/// test moves by hand.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        unix_millis(SystemTime::now())
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock showing `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        ManualClock(AtomicU64::new(now_ms))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.0.fetch_add(by, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// How a monitor samples and alerts.
#[derive(Clone)]
pub struct MonitorConfig {
    pub(super) interval: Duration,
    pub(super) capacity: usize,
    pub(super) alert_capacity: usize,
    pub(super) dedup_window: Duration,
    pub(super) thresholds: AlertThresholds,
    pub(super) sinks: Vec<AlertSink>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) store: Option<MetricsStore>,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            interval: Duration::from_secs(10),
            capacity: 3600,
            alert_capacity: 1000,
            dedup_window: Duration::from_secs(300),
            thresholds: AlertThresholds::default(),
            sinks: Vec::new(),
            clock: Arc::new(SystemClock),
            store: None,
        }
    }
}

impl std::fmt::Debug for MonitorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorConfig")
            .field("interval", &self.interval)
            .field("capacity", &self.capacity)
            .field("alert_capacity", &self.alert_capacity)
            .field("dedup_window", &self.dedup_window)
            .field("thresholds", &self.thresholds)
            .field("sinks", &self.sinks.len())
            .field("store", &self.store)
            .finish()
    }
}

impl MonitorConfig {
    /// Sample every 10 s, keep 3,600 samples (10 hours) and 1,000 alerts,
    /// raise an alert at most once per 5 minutes, default thresholds.
    pub fn new() -> Self {
        MonitorConfig::default()
    }

    /// How often to sample.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How many samples to keep.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// How many alerts to keep.
    pub fn alert_capacity(mut self, capacity: usize) -> Self {
        self.alert_capacity = capacity.max(1);
        self
    }

    /// An alert (same rule, same function) is raised again only after this
    /// long.
    pub fn dedup_window(mut self, window: Duration) -> Self {
        self.dedup_window = window;
        self
    }

    /// The alert thresholds.
    pub fn thresholds(mut self, thresholds: AlertThresholds) -> Self {
        self.thresholds = thresholds;
        self
    }

    /// Also send each alert to `sink` (alerts always go to the log, target
    /// `covet_txn::alerts`).
    pub fn on_alert(mut self, sink: impl Fn(&Alert) + Send + Sync + 'static) -> Self {
        self.sinks.push(Arc::new(sink));
        self
    }

    /// Where to get the time from.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Also keeps the samples and alerts in a database, and takes them back
    /// when the monitor starts (see [`MetricsStore`]).
    pub fn store(mut self, store: MetricsStore) -> Self {
        self.store = Some(store);
        self
    }
}
