//! Alerts: rules over what happened in the last interval, four levels,
//! deduplication within a window, a bounded history, and sinks.
//!
//! Evaluation is a pure function of its input and the time it is given, so
//! that every rule is tested with an injected clock.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::observe::counters::FunctionMetrics;
use crate::observe::metrics::{ActiveTransaction, PoolStatus};

/// Reads one counter of a function's metrics.
type Read = fn(&FunctionMetrics) -> u64;

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
        }
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

/// The thresholds of the alert rules.
///
/// | rule | default | level |
/// |---|---|---|
/// | success rate below `success_rate_warning` / `success_rate_critical` | 95 % / 80 %, over at least `min_calls` (20) calls | WARNING / CRITICAL |
/// | p99 above `p99_warning` | 1 s, over at least 10 transactions | WARNING |
/// | deadlocks above `deadlock_rate` of transactions | 1 % | WARNING |
/// | serialization failures above `serialization_failure_rate` | 5 % | WARNING |
/// | timeouts | any | WARNING |
/// | retries exhausted | any | ERROR |
/// | ambiguous COMMITs | any | ERROR |
/// | a transaction older than `long_transaction` | 30 s | WARNING |
/// | pool in use above `pool_busy` | 80 % | INFO |
/// | pool saturated | every connection in use | WARNING |
/// | hook failures | any | WARNING |
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlertThresholds {
    /// Below this success rate: WARNING.
    pub success_rate_warning: f64,
    /// Below this success rate: CRITICAL.
    pub success_rate_critical: f64,
    /// Calls needed in an interval before its success rate counts.
    pub min_calls: u64,
    /// Above this p99: WARNING.
    pub p99_warning: Duration,
    /// Above this share of transactions deadlocking: WARNING.
    pub deadlock_rate: f64,
    /// Above this share of transactions failing to serialize: WARNING.
    pub serialization_failure_rate: f64,
    /// A transaction running longer: WARNING.
    pub long_transaction: Duration,
    /// Above this share of the pool in use: INFO.
    pub pool_busy: f64,
}

impl Default for AlertThresholds {
    fn default() -> Self {
        AlertThresholds {
            success_rate_warning: 0.95,
            success_rate_critical: 0.80,
            min_calls: 20,
            p99_warning: Duration::from_secs(1),
            deadlock_rate: 0.01,
            serialization_failure_rate: 0.05,
            long_transaction: Duration::from_secs(30),
            pool_busy: 0.80,
        }
    }
}

/// What the rules look at: one interval's counts, and the state now.
#[derive(Debug, Clone, Default)]
pub struct AlertInput {
    /// All functions, over the interval.
    pub interval: FunctionMetrics,
    /// Per function, over the interval.
    pub functions: Vec<FunctionMetrics>,
    /// The transactions running now.
    pub active: Vec<ActiveTransaction>,
    /// The pool now.
    pub pool: PoolStatus,
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

/// The rules, their memory of what they raised, and the history.
#[derive(Debug)]
pub struct AlertEngine {
    thresholds: AlertThresholds,
    dedup_window: Duration,
    capacity: usize,
    last_raised: HashMap<(AlertRule, Option<String>), u64>,
    history: VecDeque<Alert>,
}

impl AlertEngine {
    /// An engine with these thresholds, a deduplication window and a history
    /// of at most `capacity` alerts.
    pub fn new(thresholds: AlertThresholds, dedup_window: Duration, capacity: usize) -> Self {
        AlertEngine {
            thresholds,
            dedup_window,
            capacity,
            last_raised: HashMap::new(),
            history: VecDeque::new(),
        }
    }

    /// The thresholds.
    pub fn thresholds(&self) -> &AlertThresholds {
        &self.thresholds
    }

    /// Evaluates every rule at `now_ms` and returns the alerts raised: those
    /// not already raised (same rule, same function) within the window.
    pub fn evaluate(&mut self, input: &AlertInput, now_ms: u64) -> Vec<Alert> {
        let candidates = self.candidates(input, now_ms);
        let window = u64::try_from(self.dedup_window.as_millis()).unwrap_or(u64::MAX);
        let mut raised = Vec::new();
        for alert in candidates {
            let key = (alert.rule, alert.function.clone());
            if self
                .last_raised
                .get(&key)
                .is_some_and(|last| now_ms.saturating_sub(*last) < window)
            {
                continue;
            }
            self.last_raised.insert(key, now_ms);
            if self.history.len() == self.capacity {
                self.history.pop_front();
            }
            self.history.push_back(alert.clone());
            raised.push(alert);
        }
        raised
    }

    /// The alerts kept, oldest first, that pass `filter`.
    pub fn history(&self, filter: &AlertFilter) -> Vec<Alert> {
        self.history
            .iter()
            .filter(|alert| filter.matches(alert))
            .cloned()
            .collect()
    }

    fn candidates(&self, input: &AlertInput, at_ms: u64) -> Vec<Alert> {
        let limits = &self.thresholds;
        let interval = &input.interval;
        let mut alerts = Vec::new();
        let mut alert =
            |level, rule, function: Option<String>, message: String, value: f64, threshold: f64| {
                alerts.push(Alert {
                    level,
                    rule,
                    function,
                    message,
                    value,
                    threshold,
                    at_ms,
                });
            };

        let ended = interval.committed + interval.failed;
        if let Some(rate) = interval.success_rate.filter(|_| ended >= limits.min_calls) {
            let (level, threshold) = if rate < limits.success_rate_critical {
                (Some(AlertLevel::Critical), limits.success_rate_critical)
            } else if rate < limits.success_rate_warning {
                (Some(AlertLevel::Warning), limits.success_rate_warning)
            } else {
                (None, limits.success_rate_warning)
            };
            if let Some(level) = level {
                alert(
                    level,
                    AlertRule::LowSuccessRate,
                    None,
                    format!("only {:.1}% of {ended} calls succeeded", rate * 100.0),
                    rate,
                    threshold,
                );
            }
        }

        let p99_limit = limits.p99_warning.as_secs_f64() * 1000.0;
        if let Some(p99) = interval
            .duration
            .p99_ms
            .filter(|p99| *p99 > p99_limit && interval.duration.count >= 10)
        {
            alert(
                AlertLevel::Warning,
                AlertRule::HighLatency,
                None,
                format!("p99 transaction time is {p99:.0} ms (limit {p99_limit:.0} ms)"),
                p99,
                p99_limit,
            );
        }

        let started = interval.started.max(1) as f64;
        let busiest = |pick: fn(&FunctionMetrics) -> u64| {
            input
                .functions
                .iter()
                .filter(|f| pick(f) > 0)
                .max_by_key(|f| pick(f))
                .map(|f| f.function.clone())
        };
        let deadlock_rate = interval.deadlocks as f64 / started;
        if interval.deadlocks > 0 && deadlock_rate > limits.deadlock_rate {
            let function = busiest(|f| f.deadlocks);
            alert(
                AlertLevel::Warning,
                AlertRule::Deadlocks,
                None,
                format!(
                    "{} deadlock(s), {:.1}% of transactions{}",
                    interval.deadlocks,
                    deadlock_rate * 100.0,
                    function
                        .map(|f| format!(", most in `{f}`"))
                        .unwrap_or_default()
                ),
                deadlock_rate,
                limits.deadlock_rate,
            );
        }
        let serialization_rate = interval.serialization_failures as f64 / started;
        if interval.serialization_failures > 0
            && serialization_rate > limits.serialization_failure_rate
        {
            let function = busiest(|f| f.serialization_failures);
            alert(
                AlertLevel::Warning,
                AlertRule::SerializationFailures,
                None,
                format!(
                    "{} serialization failure(s), {:.1}% of transactions{}",
                    interval.serialization_failures,
                    serialization_rate * 100.0,
                    function
                        .map(|f| format!(", most in `{f}`"))
                        .unwrap_or_default()
                ),
                serialization_rate,
                limits.serialization_failure_rate,
            );
        }

        for (rule, level, pick, what) in [
            (
                AlertRule::Timeouts,
                AlertLevel::Warning,
                (|f: &FunctionMetrics| f.timeouts) as Read,
                "timed out",
            ),
            (
                AlertRule::RetriesExhausted,
                AlertLevel::Error,
                |f: &FunctionMetrics| f.retries_exhausted,
                "gave up after every retry",
            ),
            (
                AlertRule::AmbiguousCommits,
                AlertLevel::Error,
                |f: &FunctionMetrics| f.ambiguous_commits,
                "ended with a COMMIT of unknown outcome",
            ),
            (
                AlertRule::HookFailures,
                AlertLevel::Warning,
                |f: &FunctionMetrics| f.hook_failures,
                "had hooks fail",
            ),
        ] {
            for function in input.functions.iter().filter(|f| pick(f) > 0) {
                let count = pick(function);
                alert(
                    level,
                    rule,
                    Some(function.function.clone()),
                    format!("`{}` {what} {count} time(s)", function.function),
                    count as f64,
                    0.0,
                );
            }
        }

        let long = limits.long_transaction.as_secs_f64() * 1000.0;
        for transaction in input.active.iter().filter(|t| t.age_ms > long) {
            alert(
                AlertLevel::Warning,
                AlertRule::LongTransaction,
                Some(transaction.function.clone()),
                format!(
                    "transaction {} of `{}` has run for {:.1} s",
                    transaction.id,
                    transaction.function,
                    transaction.age_ms / 1000.0
                ),
                transaction.age_ms,
                long,
            );
        }

        let pool = input.pool;
        if pool.max > 0 {
            let in_use = pool.size.saturating_sub(pool.idle);
            let share = f64::from(in_use) / f64::from(pool.max);
            if pool.saturated() {
                alert(
                    AlertLevel::Warning,
                    AlertRule::PoolSaturated,
                    None,
                    format!("all {} pooled connections are in use", pool.max),
                    share,
                    1.0,
                );
            } else if share > limits.pool_busy {
                alert(
                    AlertLevel::Info,
                    AlertRule::PoolBusy,
                    None,
                    format!("{in_use} of {} pooled connections are in use", pool.max),
                    share,
                    limits.pool_busy,
                );
            }
        }
        alerts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval(started: u64, committed: u64, failed: u64) -> FunctionMetrics {
        let mut metrics = FunctionMetrics {
            function: "all".to_owned(),
            started,
            committed,
            failed,
            ..FunctionMetrics::default()
        };
        metrics.derive();
        metrics
    }

    const MINUTE: u64 = 60_000;

    #[test]
    fn an_alert_is_raised_once_per_window_and_again_after_it() {
        let mut engine =
            AlertEngine::new(AlertThresholds::default(), Duration::from_secs(300), 1000);
        let mut input = AlertInput {
            interval: interval(100, 100, 0),
            ..AlertInput::default()
        };
        input.interval.deadlocks = 5;
        let at = |minutes: u64| 1_000_000 + minutes * MINUTE;
        assert_eq!(engine.evaluate(&input, at(0)).len(), 1);
        assert!(
            engine.evaluate(&input, at(1)).is_empty(),
            "within the window"
        );
        assert!(
            engine.evaluate(&input, at(4)).is_empty(),
            "still within the window"
        );
        let again = engine.evaluate(&input, at(6));
        assert_eq!(again.len(), 1, "the window has passed");
        assert_eq!(again[0].level, AlertLevel::Warning);
        assert_eq!(engine.history(&AlertFilter::new()).len(), 2);
    }

    #[test]
    fn the_success_rate_rule_has_two_levels_and_needs_enough_calls() {
        let mut engine = AlertEngine::new(AlertThresholds::default(), Duration::ZERO, 10);
        let few = AlertInput {
            interval: interval(10, 5, 5),
            ..AlertInput::default()
        };
        assert!(
            engine.evaluate(&few, 0).is_empty(),
            "ten calls are too few to judge"
        );
        let poor = AlertInput {
            interval: interval(100, 90, 10),
            ..AlertInput::default()
        };
        assert_eq!(engine.evaluate(&poor, 1)[0].level, AlertLevel::Warning);
        let bad = AlertInput {
            interval: interval(100, 50, 50),
            ..AlertInput::default()
        };
        assert_eq!(engine.evaluate(&bad, 2)[0].level, AlertLevel::Critical);
    }

    #[test]
    fn a_transaction_older_than_the_limit_is_reported() {
        let mut engine = AlertEngine::new(AlertThresholds::default(), Duration::from_secs(300), 10);
        let active = |age_ms: f64| ActiveTransaction {
            id: 7,
            function: "app::report".to_owned(),
            depth: 1,
            isolation: None,
            state: "active".to_owned(),
            attempt: 1,
            age_ms,
        };
        let young = AlertInput {
            active: vec![active(29_000.0)],
            ..AlertInput::default()
        };
        assert!(engine.evaluate(&young, 0).is_empty());
        let old = AlertInput {
            active: vec![active(31_000.0)],
            ..AlertInput::default()
        };
        let raised = engine.evaluate(&old, 1_000);
        assert_eq!(raised.len(), 1);
        assert_eq!(
            (raised[0].rule, raised[0].function.as_deref()),
            (AlertRule::LongTransaction, Some("app::report"))
        );
    }

    #[test]
    fn the_pool_rules_distinguish_busy_from_saturated() {
        let mut engine = AlertEngine::new(AlertThresholds::default(), Duration::ZERO, 10);
        let busy = AlertInput {
            pool: PoolStatus {
                size: 10,
                idle: 1,
                max: 10,
            },
            ..AlertInput::default()
        };
        assert_eq!(engine.evaluate(&busy, 0)[0].level, AlertLevel::Info);
        let full = AlertInput {
            pool: PoolStatus {
                size: 10,
                idle: 0,
                max: 10,
            },
            ..AlertInput::default()
        };
        assert_eq!(engine.evaluate(&full, 1)[0].rule, AlertRule::PoolSaturated);
    }

    #[test]
    fn history_is_bounded_and_filterable_by_level_and_time() {
        let mut engine = AlertEngine::new(AlertThresholds::default(), Duration::ZERO, 3);
        let busy = AlertInput {
            pool: PoolStatus {
                size: 10,
                idle: 1,
                max: 10,
            },
            ..AlertInput::default()
        };
        let full = AlertInput {
            pool: PoolStatus {
                size: 10,
                idle: 0,
                max: 10,
            },
            ..AlertInput::default()
        };
        for minute in 0..5 {
            let input = if minute % 2 == 0 { &busy } else { &full };
            engine.evaluate(input, minute * MINUTE);
        }
        let all = engine.history(&AlertFilter::new());
        assert_eq!(
            all.iter().map(|a| a.at_ms / MINUTE).collect::<Vec<_>>(),
            [2, 3, 4],
            "the oldest were dropped"
        );
        let warnings = engine.history(&AlertFilter::new().at_least(AlertLevel::Warning));
        assert_eq!(warnings.len(), 1);
        let recent = engine.history(&AlertFilter::new().since_ms(4 * MINUTE));
        assert_eq!(recent.len(), 1);
    }
}
