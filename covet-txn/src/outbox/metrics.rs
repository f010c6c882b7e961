//! The outbox's counts in this process: messages enqueued (counted when
//! their transaction commits), delivered, failed and dead-lettered, per
//! topic, and the lag (the age of the oldest undelivered message, as the
//! last relay to look saw it), with their Prometheus exposition.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

pub use crate::observe::outbox::{OutboxMetrics, TopicCounts};

impl OutboxMetrics {
    /// The counts and the lag in Prometheus' text format:
    /// `covet_txn_outbox_enqueued_total`, `..._delivered_total`,
    /// `..._failed_total`, `..._dead_lettered_total` (labels `table`,
    /// `topic`) and `covet_txn_outbox_lag_seconds` (label `table`).
    pub fn prometheus_text(&self) -> String {
        let mut text = String::new();
        let families: [CounterFamily; 4] = [
            ("enqueued", "messages whose transaction committed", |c| {
                c.enqueued
            }),
            ("delivered", "messages a handler accepted", |c| c.delivered),
            ("failed", "handler failures", |c| c.failed),
            ("dead_lettered", "messages that ran out of attempts", |c| {
                c.dead_lettered
            }),
        ];
        let table = escape(&self.table);
        for (name, help, value) in families {
            let _ = writeln!(text, "# HELP covet_txn_outbox_{name}_total Outbox {help}.");
            let _ = writeln!(text, "# TYPE covet_txn_outbox_{name}_total counter");
            for (topic, counts) in &self.topics {
                let _ = writeln!(
                    text,
                    "covet_txn_outbox_{name}_total{{table=\"{table}\",topic=\"{}\"}} {}",
                    escape(topic),
                    value(counts)
                );
            }
        }
        if let Some(lag) = self.lag {
            let _ = writeln!(
                text,
                "# HELP covet_txn_outbox_lag_seconds Age of the oldest undelivered outbox message."
            );
            let _ = writeln!(text, "# TYPE covet_txn_outbox_lag_seconds gauge");
            let _ = writeln!(
                text,
                "covet_txn_outbox_lag_seconds{{table=\"{table}\"}} {}",
                lag.as_secs_f64()
            );
        }
        text
    }
}

/// A counter's name, its help text, and how to read it from a topic's counts.
type CounterFamily = (&'static str, &'static str, fn(&TopicCounts) -> u64);

/// A label value as Prometheus' text format writes it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The live counters behind [`OutboxMetrics`].
pub(crate) struct Counters {
    topics: Mutex<BTreeMap<String, TopicCounts>>,
    /// Milliseconds, or -1 before any relay looked.
    lag_ms: AtomicI64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            topics: Mutex::default(),
            lag_ms: AtomicI64::new(-1),
        }
    }
}

impl Counters {
    pub(crate) fn count(&self, topic: &str, change: impl FnOnce(&mut TopicCounts)) {
        let mut topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        match topics.get_mut(topic) {
            Some(counts) => change(counts),
            None => change(topics.entry(topic.to_owned()).or_default()),
        }
    }

    pub(crate) fn set_lag(&self, lag: Duration) {
        let millis = i64::try_from(lag.as_millis()).unwrap_or(i64::MAX);
        self.lag_ms.store(millis, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, table: &str) -> OutboxMetrics {
        let lag = self.lag_ms.load(Ordering::Relaxed);
        OutboxMetrics {
            table: table.to_owned(),
            topics: self
                .topics
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            lag: u64::try_from(lag).ok().map(Duration::from_millis),
        }
    }
}
