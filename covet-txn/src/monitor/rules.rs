//! The alert rules: what one interval's counts and the state now call
//! for, as a pure function of its input and the time it is given, so that
//! every rule is tested with an injected clock. Which of these alerts are
//! raised (deduplication) is `alerts`' business.

use std::time::Duration;

use super::alert::{Alert, AlertLevel, AlertRule};
use crate::observe::counters::FunctionMetrics;
use crate::observe::metrics::{ActiveTransaction, PoolStatus};

/// Reads one counter of a function's metrics.
type Read = fn(&FunctionMetrics) -> u64;

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

/// Every alert the rules call for at `at_ms`, before deduplication.
pub(crate) fn candidates(limits: &AlertThresholds, input: &AlertInput, at_ms: u64) -> Vec<Alert> {
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
    if interval.serialization_failures > 0 && serialization_rate > limits.serialization_failure_rate
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

    fn levels(input: &AlertInput) -> Vec<(AlertRule, AlertLevel)> {
        candidates(&AlertThresholds::default(), input, 0)
            .iter()
            .map(|alert| (alert.rule, alert.level))
            .collect()
    }

    #[test]
    fn the_success_rate_rule_has_two_levels_and_needs_enough_calls() {
        let few = AlertInput {
            interval: interval(10, 5, 5),
            ..AlertInput::default()
        };
        assert!(levels(&few).is_empty(), "ten calls are too few to judge");
        let poor = AlertInput {
            interval: interval(100, 90, 10),
            ..AlertInput::default()
        };
        assert_eq!(
            levels(&poor),
            [(AlertRule::LowSuccessRate, AlertLevel::Warning)]
        );
        let bad = AlertInput {
            interval: interval(100, 50, 50),
            ..AlertInput::default()
        };
        assert_eq!(
            levels(&bad),
            [(AlertRule::LowSuccessRate, AlertLevel::Critical)]
        );
    }

    #[test]
    fn a_transaction_older_than_the_limit_is_reported() {
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
        assert!(levels(&young).is_empty());
        let old = AlertInput {
            active: vec![active(31_000.0)],
            ..AlertInput::default()
        };
        let raised = candidates(&AlertThresholds::default(), &old, 1_000);
        assert_eq!(raised.len(), 1);
        assert_eq!(
            (raised[0].rule, raised[0].function.as_deref()),
            (AlertRule::LongTransaction, Some("app::report"))
        );
    }

    #[test]
    fn the_pool_rules_distinguish_busy_from_saturated() {
        let pool = |idle| AlertInput {
            pool: PoolStatus {
                size: 10,
                idle,
                max: 10,
            },
            ..AlertInput::default()
        };
        assert_eq!(levels(&pool(1)), [(AlertRule::PoolBusy, AlertLevel::Info)]);
        assert_eq!(
            levels(&pool(0)),
            [(AlertRule::PoolSaturated, AlertLevel::Warning)]
        );
    }
}
