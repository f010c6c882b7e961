//! A health score and recommendations, derived from the metrics.
//!
//! The score starts at 100 and loses points for what hurts users most:
//!
//! | penalty | points | measured as |
//! |---|---|---|
//! | failures | up to 50 | 50 × failed / (committed + failed) |
//! | contention | up to 20 | 20 × min(1, retries / started) |
//! | latency | up to 15 | 15 × min(1, (p99 − limit) / limit), when p99 exceeds the alert limit |
//! | incidents | up to 10 | 10 × min(1, 10 × (timeouts + retries exhausted + ambiguous commits) / calls) |
//! | pool | 5 | when every connection is in use |
//!
//! It is computed over the last sampling interval when there is one, so it
//! recovers when the trouble stops, and is 100 without traffic.

use serde::Serialize;

use super::rules::AlertThresholds;
use crate::observe::counters::FunctionMetrics;
use crate::observe::metrics::{ActiveTransaction, PoolStatus};

/// The health of a manager's transactions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    /// 0 (everything failing) to 100 (all well).
    pub score: u8,
    /// Points lost to failures.
    pub failure_penalty: f64,
    /// Points lost to retries.
    pub contention_penalty: f64,
    /// Points lost to slow transactions.
    pub latency_penalty: f64,
    /// Points lost to timeouts, exhausted retries and ambiguous commits.
    pub incident_penalty: f64,
    /// Points lost to a saturated pool.
    pub pool_penalty: f64,
    /// What to do about it, in plain words, most important first.
    pub recommendations: Vec<String>,
}

impl Health {
    /// Scores `recent` (an interval, or everything so far) and derives
    /// recommendations from the per-function totals.
    pub fn assess(
        recent: &FunctionMetrics,
        functions: &[FunctionMetrics],
        active: &[ActiveTransaction],
        pool: PoolStatus,
        limits: &AlertThresholds,
    ) -> Health {
        let calls = (recent.committed + recent.failed) as f64;
        let started = recent.started as f64;
        let failure_penalty = 50.0 * recent.failure_rate.unwrap_or(0.0);
        let contention_penalty = if started > 0.0 {
            20.0 * (recent.retries as f64 / started).min(1.0)
        } else {
            0.0
        };
        let limit_ms = limits.p99_warning.as_secs_f64() * 1000.0;
        let latency_penalty = recent.duration.p99_ms.map_or(0.0, |p99| {
            15.0 * ((p99 - limit_ms) / limit_ms).clamp(0.0, 1.0)
        });
        let incidents =
            (recent.timeouts + recent.retries_exhausted + recent.ambiguous_commits) as f64;
        let incident_penalty = if calls > 0.0 {
            10.0 * (10.0 * incidents / calls).min(1.0)
        } else {
            0.0
        };
        let pool_penalty = if pool.saturated() { 5.0 } else { 0.0 };
        let lost = failure_penalty
            + contention_penalty
            + latency_penalty
            + incident_penalty
            + pool_penalty;
        Health {
            score: (100.0 - lost).round().clamp(0.0, 100.0) as u8,
            failure_penalty,
            contention_penalty,
            latency_penalty,
            incident_penalty,
            pool_penalty,
            recommendations: recommend(functions, active, pool, limits),
        }
    }
}

fn recommend(
    functions: &[FunctionMetrics],
    active: &[ActiveTransaction],
    pool: PoolStatus,
    limits: &AlertThresholds,
) -> Vec<String> {
    let mut advice = Vec::new();
    let total = |pick: fn(&FunctionMetrics) -> u64| functions.iter().map(pick).sum::<u64>();
    let top = |pick: fn(&FunctionMetrics) -> u64| {
        functions
            .iter()
            .filter(|f| pick(f) > 0)
            .max_by_key(|f| pick(f))
    };

    let deadlocks = total(|f| f.deadlocks);
    if let Some(worst) = top(|f| f.deadlocks) {
        if deadlocks >= 3 && worst.deadlocks * 2 >= deadlocks {
            advice.push(format!(
                "Deadlocks are concentrated in `{}` ({} of {deadlocks}): access rows in a consistent order \
                 (for example by primary key), or lock them up front with SELECT ... FOR UPDATE.",
                worst.function, worst.deadlocks
            ));
        } else if deadlocks >= 3 {
            advice.push(format!(
                "{deadlocks} deadlocks across functions: access rows in a consistent order everywhere."
            ));
        }
    }

    let started = total(|f| f.started).max(1);
    let serialization = total(|f| f.serialization_failures);
    if let Some(worst) = top(|f| f.serialization_failures)
        && serialization as f64 / started as f64 > limits.serialization_failure_rate
    {
        advice.push(format!(
            "{:.0}% of transactions hit serialization failures (most in `{}`): keep transactions short, touch \
             fewer rows, or spread hot rows; retries absorb them now, at a cost in latency.",
            100.0 * serialization as f64 / started as f64,
            worst.function
        ));
    }

    for function in functions.iter().filter(|f| f.retries_exhausted > 0) {
        advice.push(format!(
            "`{}` gave up after every retry {} time(s): allow more `retry`, or lower the contention it meets.",
            function.function, function.retries_exhausted
        ));
    }

    let slow_ms = limits.p99_warning.as_secs_f64() * 1000.0;
    for function in functions
        .iter()
        .filter(|f| f.duration.p99_ms.is_some_and(|p99| p99 > slow_ms))
    {
        advice.push(format!(
            "`{}` runs long (p99 {:.0} ms): give it a `timeout`, and move slow work such as HTTP calls or emails \
             out of the transaction, into an on_commit hook.",
            function.function,
            function.duration.p99_ms.unwrap_or_default()
        ));
    }
    let long_ms = limits.long_transaction.as_secs_f64() * 1000.0;
    if let Some(oldest) = active.iter().find(|t| t.age_ms > long_ms) {
        advice.push(format!(
            "Transaction {} of `{}` has been open for {:.0} s: it holds its locks and a connection all that \
             time; give the function a `timeout`.",
            oldest.id,
            oldest.function,
            oldest.age_ms / 1000.0
        ));
    }

    for function in functions.iter().filter(|f| f.timeouts > 0) {
        advice.push(format!(
            "`{}` timed out {} time(s): find what it waits for (locks, slow statements), or give it more time.",
            function.function, function.timeouts
        ));
    }
    if total(|f| f.ambiguous_commits) > 0 {
        advice.push(
            "COMMITs were cut off by connection failures: check the network to the database, and turn on \
             `resolve_ambiguous_commit` on PostgreSQL to learn their outcome."
                .to_owned(),
        );
    }
    if pool.saturated() {
        advice.push(format!(
            "Every one of the pool's {} connections is in use: raise `max_connections`, or shorten transactions \
             so that they give connections back sooner.",
            pool.max
        ));
    }
    let hook_failures = total(|f| f.hook_failures);
    if hook_failures > 0 {
        advice.push(format!(
            "{hook_failures} hook(s) failed: check what they depend on (see the `covet_txn::hooks` log target)."
        ));
    }
    for function in functions.iter().filter(|f| {
        f.failure_rate
            .is_some_and(|rate| rate > 1.0 - limits.success_rate_warning)
            && f.committed + f.failed >= limits.min_calls
    }) {
        advice.push(format!(
            "`{}` fails {:.0}% of its calls: look at the errors it returns.",
            function.function,
            100.0 * function.failure_rate.unwrap_or_default()
        ));
    }
    advice
}

#[cfg(test)]
mod tests {
    use super::*;

    fn function(name: &str, started: u64, committed: u64, failed: u64) -> FunctionMetrics {
        let mut metrics = FunctionMetrics {
            function: name.to_owned(),
            started,
            committed,
            failed,
            ..FunctionMetrics::default()
        };
        metrics.derive();
        metrics
    }

    #[test]
    fn a_quiet_or_healthy_system_scores_100() {
        let limits = AlertThresholds::default();
        let quiet = Health::assess(
            &FunctionMetrics::default(),
            &[],
            &[],
            PoolStatus::default(),
            &limits,
        );
        assert_eq!((quiet.score, quiet.recommendations.len()), (100, 0));
        let healthy = function("all", 100, 100, 0);
        assert_eq!(
            Health::assess(&healthy, &[], &[], PoolStatus::default(), &limits).score,
            100
        );
    }

    #[test]
    fn failures_and_retries_cost_points_as_documented() {
        let limits = AlertThresholds::default();
        let mut recent = function("all", 100, 80, 20);
        recent.retries = 50;
        let health = Health::assess(&recent, &[], &[], PoolStatus::default(), &limits);
        assert!(
            (health.failure_penalty - 10.0).abs() < 1e-9,
            "{}",
            health.failure_penalty
        );
        assert!(
            (health.contention_penalty - 10.0).abs() < 1e-9,
            "{}",
            health.contention_penalty
        );
        assert_eq!(health.score, 80);
    }

    #[test]
    fn concentrated_deadlocks_point_at_their_function() {
        let mut transfer = function("bank::transfer", 100, 100, 0);
        transfer.deadlocks = 9;
        let mut audit = function("bank::audit", 100, 100, 0);
        audit.deadlocks = 1;
        let health = Health::assess(
            &function("all", 200, 200, 0),
            &[transfer, audit],
            &[],
            PoolStatus::default(),
            &AlertThresholds::default(),
        );
        assert!(
            health.recommendations[0].contains("concentrated in `bank::transfer` (9 of 10)"),
            "{:?}",
            health.recommendations
        );
        assert!(health.recommendations[0].contains("consistent order"));
    }
}
