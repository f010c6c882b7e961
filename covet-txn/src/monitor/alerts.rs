//! Raising alerts: the rules' candidates pass only if the same rule has not
//! raised one for the same function within the deduplication window; the
//! raised ones are kept in a bounded history. Both survive a restart when a
//! metrics store gives them back ([`AlertEngine::restore`]).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use super::alert::{Alert, AlertFilter, AlertRule};
use super::rules::{self, AlertInput, AlertThresholds};

/// What deduplication remembers: a rule, and the function it was about.
pub(crate) type DedupKey = (AlertRule, Option<String>);

/// The rules, their memory of what they raised, and the history.
#[derive(Debug)]
pub struct AlertEngine {
    thresholds: AlertThresholds,
    dedup_window: Duration,
    capacity: usize,
    last_raised: HashMap<DedupKey, u64>,
    history: VecDeque<Alert>,
}

impl AlertEngine {
    /// An engine with these thresholds, a deduplication window and a history
    /// of at most `capacity` alerts.
    ///
    /// ```
    /// use std::time::Duration;
    /// use covet_txn::monitor::{AlertEngine, AlertFilter, AlertInput, AlertThresholds};
    ///
    /// let mut engine = AlertEngine::new(AlertThresholds::default(), Duration::from_secs(300), 100);
    /// let raised = engine.evaluate(&AlertInput::default(), 1_000);
    /// assert!(raised.is_empty(), "nothing happened");
    /// assert!(engine.history(&AlertFilter::new()).is_empty());
    /// ```
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

    /// The deduplication window.
    pub fn dedup_window(&self) -> Duration {
        self.dedup_window
    }

    /// Evaluates every rule at `now_ms` and returns the alerts raised: those
    /// not already raised (same rule, same function) within the window.
    pub fn evaluate(&mut self, input: &AlertInput, now_ms: u64) -> Vec<Alert> {
        rules::candidates(&self.thresholds, input, now_ms)
            .into_iter()
            .filter_map(|alert| self.raise(alert))
            .collect()
    }

    /// Raises `alert` unless the same rule raised one for the same function
    /// within the window before its time; returns it if raised.
    pub fn raise(&mut self, alert: Alert) -> Option<Alert> {
        let window = u64::try_from(self.dedup_window.as_millis()).unwrap_or(u64::MAX);
        let key = (alert.rule, alert.function.clone());
        if self
            .last_raised
            .get(&key)
            .is_some_and(|last| alert.at_ms.saturating_sub(*last) < window)
        {
            return None;
        }
        self.last_raised.insert(key, alert.at_ms);
        if self.history.len() == self.capacity {
            self.history.pop_front();
        }
        self.history.push_back(alert.clone());
        Some(alert)
    }

    /// Takes back what an earlier run raised: `alerts` join the history in
    /// time order (the newest kept when there are too many), and
    /// `last_raised` (when each rule last raised an alert about each
    /// function) joins the deduplication memory, so an alert raised before
    /// a restart is not raised again within its window.
    pub(crate) fn restore(&mut self, alerts: Vec<Alert>, last_raised: Vec<(DedupKey, u64)>) {
        for (key, at_ms) in last_raised {
            let last = self.last_raised.entry(key).or_insert(at_ms);
            *last = (*last).max(at_ms);
        }
        let mut merged: Vec<Alert> = alerts.into_iter().chain(self.history.drain(..)).collect();
        // Stable: alerts of one moment keep the order they were raised in.
        merged.sort_by_key(|alert| alert.at_ms);
        let excess = merged.len().saturating_sub(self.capacity);
        self.history = merged.into_iter().skip(excess).collect();
    }

    /// The alerts kept, oldest first, that pass `filter`.
    pub fn history(&self, filter: &AlertFilter) -> Vec<Alert> {
        self.history
            .iter()
            .filter(|alert| filter.matches(alert))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::alert::AlertLevel;
    use crate::observe::counters::FunctionMetrics;
    use crate::observe::metrics::PoolStatus;

    const MINUTE: u64 = 60_000;

    fn deadlocking() -> AlertInput {
        let mut interval = FunctionMetrics {
            function: "all".to_owned(),
            started: 100,
            committed: 100,
            deadlocks: 5,
            ..FunctionMetrics::default()
        };
        interval.derive();
        AlertInput {
            interval,
            ..AlertInput::default()
        }
    }

    #[test]
    fn an_alert_is_raised_once_per_window_and_again_after_it() {
        let mut engine =
            AlertEngine::new(AlertThresholds::default(), Duration::from_secs(300), 1000);
        let input = deadlocking();
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
    fn a_restored_window_holds_back_the_same_alert_after_a_restart() {
        let mut before = AlertEngine::new(AlertThresholds::default(), Duration::from_secs(300), 10);
        let raised = before.evaluate(&deadlocking(), 10 * MINUTE);
        assert_eq!(raised.len(), 1);

        let mut after = AlertEngine::new(AlertThresholds::default(), Duration::from_secs(300), 10);
        let key = (raised[0].rule, raised[0].function.clone());
        after.restore(raised.clone(), vec![(key, raised[0].at_ms)]);
        assert!(
            after.evaluate(&deadlocking(), 12 * MINUTE).is_empty(),
            "raised 2 minutes before the restart"
        );
        assert_eq!(after.evaluate(&deadlocking(), 16 * MINUTE).len(), 1);
        let history = after.history(&AlertFilter::new());
        assert_eq!(
            history.iter().map(|a| a.at_ms / MINUTE).collect::<Vec<_>>(),
            [10, 16],
            "the restored alert comes first"
        );
    }

    #[test]
    fn history_is_bounded_and_filterable_by_level_and_time() {
        let mut engine = AlertEngine::new(AlertThresholds::default(), Duration::ZERO, 3);
        let pool = |idle| AlertInput {
            pool: PoolStatus {
                size: 10,
                idle,
                max: 10,
            },
            ..AlertInput::default()
        };
        let (busy, full) = (pool(1), pool(0));
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
