//! What an alert is: its level, the rule that raised it, its text and
//! numbers, and the filter that lists alerts by level and time. Plain data:
//! the rules that raise alerts are in `rules`, their deduplication and
//! history in `alerts`.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

/// How serious an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlertLevel {
    /// Worth knowing.
    Info,
    /// Needs attention soon.
    Warning,
    /// Something is failing.
    Error,
    /// Something is failing badly.
    Critical,
}

impl AlertLevel {
    /// The level as written in reports: `INFO`, `WARNING`, `ERROR`, `CRITICAL`.
    pub const fn name(self) -> &'static str {
        match self {
            AlertLevel::Info => "INFO",
            AlertLevel::Warning => "WARNING",
            AlertLevel::Error => "ERROR",
            AlertLevel::Critical => "CRITICAL",
        }
    }

    /// Every level, lowest first.
    pub const ALL: [AlertLevel; 4] = [
        AlertLevel::Info,
        AlertLevel::Warning,
        AlertLevel::Error,
        AlertLevel::Critical,
    ];

    /// The level a report names (`"WARNING"`), in any case.
    ///
    /// ```
    /// use covet_txn::monitor::AlertLevel;
    /// assert_eq!(AlertLevel::from_name("warning"), Some(AlertLevel::Warning));
    /// assert_eq!(AlertLevel::from_name("loud"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<AlertLevel> {
        AlertLevel::ALL
            .into_iter()
            .find(|level| level.name().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for AlertLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which rule raised an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AlertRule {
    /// The success rate fell below a threshold.
    LowSuccessRate,
    /// The p99 duration rose above a threshold.
    HighLatency,
    /// Deadlocks exceeded a rate.
    Deadlocks,
    /// Serialization failures exceeded a rate.
    SerializationFailures,
    /// Calls timed out.
    Timeouts,
    /// Calls gave up after every retry.
    RetriesExhausted,
    /// COMMITs ended with an unknown outcome.
    AmbiguousCommits,
    /// A transaction has been running longer than a threshold.
    LongTransaction,
    /// Most of the pool's connections are in use.
    PoolBusy,
    /// Every connection the pool may open is in use.
    PoolSaturated,
    /// Hooks failed.
    HookFailures,
    /// The metrics store could not be written to (see
    /// [`MetricsStore`](crate::monitor::MetricsStore)).
    MetricsStoreFailures,
}

impl AlertRule {
    /// The rule's name, as reports write it.
    pub const fn name(self) -> &'static str {
        match self {
            AlertRule::LowSuccessRate => "low_success_rate",
            AlertRule::HighLatency => "high_latency",
            AlertRule::Deadlocks => "deadlocks",
            AlertRule::SerializationFailures => "serialization_failures",
            AlertRule::Timeouts => "timeouts",
            AlertRule::RetriesExhausted => "retries_exhausted",
            AlertRule::AmbiguousCommits => "ambiguous_commits",
            AlertRule::LongTransaction => "long_transaction",
            AlertRule::PoolBusy => "pool_busy",
            AlertRule::PoolSaturated => "pool_saturated",
            AlertRule::HookFailures => "hook_failures",
            AlertRule::MetricsStoreFailures => "metrics_store_failures",
        }
    }

    /// Every rule.
    pub const ALL: [AlertRule; 12] = [
        AlertRule::LowSuccessRate,
        AlertRule::HighLatency,
        AlertRule::Deadlocks,
        AlertRule::SerializationFailures,
        AlertRule::Timeouts,
        AlertRule::RetriesExhausted,
        AlertRule::AmbiguousCommits,
        AlertRule::LongTransaction,
        AlertRule::PoolBusy,
        AlertRule::PoolSaturated,
        AlertRule::HookFailures,
        AlertRule::MetricsStoreFailures,
    ];

    /// The rule a report names (`"deadlocks"`).
    ///
    /// ```
    /// use covet_txn::monitor::AlertRule;
    /// assert_eq!(AlertRule::from_name("deadlocks"), Some(AlertRule::Deadlocks));
    /// ```
    pub fn from_name(name: &str) -> Option<AlertRule> {
        AlertRule::ALL.into_iter().find(|rule| rule.name() == name)
    }
}

/// One alert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// How serious.
    pub level: AlertLevel,
    /// Which rule.
    pub rule: AlertRule,
    /// The function it is about, if one.
    pub function: Option<String>,
    /// What happened, in words.
    pub message: String,
    /// The value the rule measured.
    pub value: f64,
    /// The threshold it crossed.
    pub threshold: f64,
    /// When it was raised, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// Somewhere alerts go besides the history and the log.
pub type AlertSink = Arc<dyn Fn(&Alert) + Send + Sync>;

/// Which alerts to list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlertFilter {
    min_level: Option<AlertLevel>,
    since_ms: Option<u64>,
    until_ms: Option<u64>,
}

impl AlertFilter {
    /// Every alert.
    pub fn new() -> Self {
        AlertFilter::default()
    }

    /// Only alerts of this level or worse.
    pub fn at_least(mut self, level: AlertLevel) -> Self {
        self.min_level = Some(level);
        self
    }

    /// Only alerts raised at or after this time (ms since the Unix epoch).
    pub fn since_ms(mut self, since_ms: u64) -> Self {
        self.since_ms = Some(since_ms);
        self
    }

    /// Only alerts raised before this time (ms since the Unix epoch).
    pub fn until_ms(mut self, until_ms: u64) -> Self {
        self.until_ms = Some(until_ms);
        self
    }

    /// Whether the alert passes.
    pub fn matches(&self, alert: &Alert) -> bool {
        self.min_level.is_none_or(|level| alert.level >= level)
            && self.since_ms.is_none_or(|since| alert.at_ms >= since)
            && self.until_ms.is_none_or(|until| alert.at_ms < until)
    }
}
