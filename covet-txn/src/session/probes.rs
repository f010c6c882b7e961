//! The session settings a dialect reads before BEGIN, read once per manager:
//! the connections of one pool share their settings (the pool's connect
//! options and `after_connect` apply to each), so a second read would only
//! cost a round trip. A transaction that asks for a setting then sends what
//! a careful hand would: the switch with its BEGIN, the switch back after.

use std::sync::{Arc, Mutex};

use crate::backend::Driver;

/// A probe query and its answer.
type Answer = (&'static str, Arc<[bool]>);

/// What each probe query answered, by query.
#[derive(Debug, Default)]
pub(crate) struct ProbeCache(Mutex<Vec<Answer>>);

impl ProbeCache {
    /// The answer to `sql`, read on `conn` the first time it is asked.
    pub(crate) async fn read<DB: Driver>(
        &self,
        conn: &mut DB::Connection,
        sql: &'static str,
    ) -> Result<Arc<[bool]>, sqlx::Error> {
        if let Some(answer) = self.known(sql) {
            return Ok(answer);
        }
        let answer: Arc<[bool]> = DB::probe(conn, sql).await?.into();
        let mut known = self.lock();
        if !known.iter().any(|(query, _)| *query == sql) {
            known.push((sql, Arc::clone(&answer)));
        }
        Ok(answer)
    }

    fn known(&self, sql: &'static str) -> Option<Arc<[bool]>> {
        self.lock()
            .iter()
            .find(|(query, _)| *query == sql)
            .map(|(_, answer)| Arc::clone(answer))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Answer>> {
        // A list of answers holds no invariant a panic could break.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
