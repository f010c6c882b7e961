//! What every [`Outbox`](super::Outbox) value of one table shares inside a
//! process: the wake-up a commit sends to the relays waiting on the table,
//! the counters, and the table's statements per backend. Kept in a
//! process-wide registry by table name, so that an enqueue and a relay built
//! from two separate `Outbox` values still meet.

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tokio::sync::watch;

use super::metrics::Counters;
use crate::backend::outbox::{OutboxDriver, Statements};

/// One table's in-process state.
pub(crate) struct Shared {
    pub(crate) table: String,
    /// Bumped after each commit that enqueued; each relay holds a receiver,
    /// so a wake-up sent while a relay is busy is seen when it next waits.
    pub(crate) committed: watch::Sender<u64>,
    pub(crate) counters: Counters,
    statements: Mutex<Vec<(TypeId, Arc<Statements>)>>,
}

impl Shared {
    /// The shared state of `table`, created on first use.
    pub(crate) fn of(table: &str) -> Arc<Shared> {
        static TABLES: OnceLock<Mutex<HashMap<String, Arc<Shared>>>> = OnceLock::new();
        let mut tables = TABLES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(tables.entry(table.to_owned()).or_insert_with(|| {
            Arc::new(Shared {
                table: table.to_owned(),
                committed: watch::Sender::new(0),
                counters: Counters::default(),
                statements: Mutex::new(Vec::new()),
            })
        }))
    }

    /// The table's statements on backend `DB`, written once.
    pub(crate) fn statements<DB: OutboxDriver + 'static>(&self) -> Arc<Statements> {
        let mut cache = self
            .statements
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let backend = TypeId::of::<DB>();
        if let Some((_, statements)) = cache.iter().find(|(id, _)| *id == backend) {
            return Arc::clone(statements);
        }
        let statements = Arc::new(DB::outbox_statements(&self.table));
        cache.push((backend, Arc::clone(&statements)));
        statements
    }

    /// A transaction that enqueued `topic` committed.
    pub(crate) fn enqueue_committed(&self, topic: &str) {
        self.counters.count(topic, |counts| counts.enqueued += 1);
        self.committed.send_modify(|generation| *generation += 1);
    }
}

impl crate::observe::outbox::OutboxView for Shared {
    fn metrics(&self) -> crate::observe::outbox::OutboxMetrics {
        self.counters.snapshot(&self.table)
    }
}
