//! How often a failed transaction runs again and how long it waits in
//! between: the retry policy, a call's overrides of it, and the jittered
//! backoff.
//!
//! Whether a failure is one a new attempt can fix is decided elsewhere (the
//! dialect classifies, the call's attempts ask); this module only holds the
//! rules and computes the waits.

use std::time::Duration;

use crate::failure::Failure;

/// Decides, given the built-in classification, whether to retry.
pub type RetryPredicate = fn(&Failure<'_>) -> bool;

/// How often a transaction is retried and how long it waits in between.
///
/// The wait before retry *n* is centred on `min(max_backoff, backoff ×
/// multiplier^(n-1))` and drawn uniformly from half to one and a half times
/// it (never above `max_backoff`): the spread keeps transactions that
/// collided from colliding again in lockstep, and the centre keeps the
/// backoff as long as asked, giving the transaction that won time to
/// finish. (Measured against "full jitter", from zero to the delay, on the
/// contended benchmark: fewer retries and a lower p99.)
///
/// ```
/// use std::time::Duration;
/// use covet_txn::RetryPolicy;
/// const POLICY: RetryPolicy = RetryPolicy::new()
///     .retries(5)
///     .backoff(Duration::from_millis(2))
///     .max_backoff(Duration::from_millis(100));
/// assert_eq!(POLICY.max_retries(), 5);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    retries: u32,
    backoff: Duration,
    max_backoff: Duration,
    multiplier: f64,
    predicate: Option<RetryPredicate>,
}

impl RetryPolicy {
    /// 3 retries, waits growing from 5 ms by ×2 up to 500 ms, the built-in
    /// classification.
    pub const fn new() -> Self {
        RetryPolicy {
            retries: 3,
            backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(500),
            multiplier: 2.0,
            predicate: None,
        }
    }

    /// Retries after the first attempt (so `retries + 1` attempts at most).
    pub const fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// The wait before the first retry, before jitter.
    pub const fn backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// The longest wait, before jitter.
    pub const fn max_backoff(mut self, max_backoff: Duration) -> Self {
        self.max_backoff = max_backoff;
        self
    }

    /// How much each wait grows over the previous one (at least 1).
    pub const fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier < 1.0 { 1.0 } else { multiplier };
        self
    }

    /// Replaces the built-in decision: the predicate sees each failure with
    /// its classification and says whether to retry.
    pub const fn retry_if(mut self, predicate: RetryPredicate) -> Self {
        self.predicate = Some(predicate);
        self
    }

    /// The number of retries.
    pub const fn max_retries(&self) -> u32 {
        self.retries
    }

    /// Whether to retry this failure, which was attempt `attempt`.
    pub(crate) fn should_retry(&self, failure: &Failure<'_>) -> bool {
        match self.predicate {
            Some(predicate) => predicate(failure),
            None => failure.retryable_by_default(),
        }
    }

    /// The wait before retry number `retry` (from 1), jittered.
    pub(crate) fn delay(&self, retry: u32) -> Duration {
        let exponent = i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX);
        let grown = self.backoff.as_secs_f64() * self.multiplier.powi(exponent);
        let cap = self.max_backoff.as_secs_f64();
        let nominal = grown.min(cap).max(0.0);
        // Rounding can carry a cap of `Duration::MAX` past it.
        Duration::try_from_secs_f64((nominal * (0.5 + fastrand::f64())).min(cap))
            .unwrap_or(self.max_backoff)
    }

    /// This policy with the fields a call set explicitly.
    pub(crate) fn overridden_by(mut self, call: &RetryOverrides) -> Self {
        if let Some(backoff) = call.backoff {
            self.backoff = backoff;
        }
        if let Some(max_backoff) = call.max_backoff {
            self.max_backoff = max_backoff;
        }
        if let Some(multiplier) = call.multiplier {
            self = self.multiplier(multiplier);
        }
        if let Some(predicate) = call.predicate {
            self.predicate = Some(predicate);
        }
        self.retries = match call.retries {
            RetryCount::Off => 0,
            RetryCount::ManagerDefault => self.retries,
            RetryCount::Exactly(retries) => retries,
        };
        self
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::new()
    }
}

/// How many retries a call asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetryCount {
    Off,
    ManagerDefault,
    Exactly(u32),
}

/// What a call set of the retry policy; the rest comes from the manager's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryOverrides {
    pub(crate) retries: RetryCount,
    pub(crate) backoff: Option<Duration>,
    pub(crate) max_backoff: Option<Duration>,
    pub(crate) multiplier: Option<f64>,
    pub(crate) predicate: Option<RetryPredicate>,
}

impl RetryOverrides {
    pub(crate) const NONE: RetryOverrides = RetryOverrides {
        retries: RetryCount::Off,
        backoff: None,
        max_backoff: None,
        multiplier: None,
        predicate: None,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unbounded_backoff_waits_at_most_its_cap_without_panicking() {
        let policy = RetryPolicy::new()
            .backoff(Duration::MAX)
            .max_backoff(Duration::MAX);
        for retry in [1, 2, 40] {
            let wait = policy.delay(retry);
            assert!(wait > Duration::from_secs(86_400 * 365), "{wait:?}");
        }
    }

    #[test]
    fn delays_grow_to_the_cap_and_spread_around_the_nominal_delay() {
        let policy = RetryPolicy::new()
            .backoff(Duration::from_millis(10))
            .max_backoff(Duration::from_millis(80));
        let cap = Duration::from_millis(80);
        for (retry, nominal) in [(1, 10), (2, 20), (3, 40), (4, 80), (9, 80)] {
            let nominal = Duration::from_millis(nominal);
            let delays: Vec<Duration> = (0..400).map(|_| policy.delay(retry)).collect();
            let highest = (nominal * 3 / 2).min(cap);
            assert!(
                delays
                    .iter()
                    .all(|delay| *delay >= nominal / 2 && *delay <= highest)
            );
            let spread = delays.iter().max().copied().unwrap_or_default()
                - delays.iter().min().copied().unwrap_or_default();
            assert!(spread > nominal / 4, "retry {retry}: {spread:?}");
        }
    }

    #[test]
    fn a_call_overrides_only_what_it_sets() {
        let manager = RetryPolicy::new()
            .retries(7)
            .backoff(Duration::from_millis(9));
        let call = RetryOverrides {
            retries: RetryCount::ManagerDefault,
            max_backoff: Some(Duration::from_millis(50)),
            ..RetryOverrides::NONE
        };
        let merged = manager.overridden_by(&call);
        assert_eq!(merged.max_retries(), 7);
        assert_eq!(merged.backoff, Duration::from_millis(9));
        assert_eq!(merged.max_backoff, Duration::from_millis(50));
        let off = manager.overridden_by(&RetryOverrides::NONE);
        assert_eq!(off.max_retries(), 0);
    }
}
