//! Read-your-writes: what a task (or the holder of a session token) must
//! see, as a position of the primary's log that a replica must have
//! replayed before it may serve the task's reads.
//!
//! A write's COMMIT is not followed by a query for its position: that would
//! be one more round trip on every write. The commit's instant is kept
//! instead, and the first sample of the primary's position taken after it
//! (the background probe takes one each round) stands for it: a replica
//! that has replayed past that sample has the write. Until that sample
//! exists, the task's reads go to the primary. An entry older than the lag
//! bound plus the time a probe's answer stays good is dropped: every
//! replica still allowed to serve reads has replayed it by then.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

/// A position in the primary's log that a later request's reads must see:
/// what [`TxManager::session_token`](crate::TxManager::session_token)
/// returns after a write, to hand to the client (a cookie, a header) and
/// give back to [`TxManager::read_after`](crate::TxManager::read_after) in
/// its next request, whichever process serves it. Its text form is a
/// decimal number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionToken(pub(crate) u64);

impl fmt::Display for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for SessionToken {
    type Err = std::num::ParseIntError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.trim().parse().map(SessionToken)
    }
}

/// Whose reads an entry constrains: the tokio task, or, outside any task
/// (the future a runtime's `block_on` runs), the thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Reader {
    Task(tokio::task::Id),
    Thread(ThreadId),
}

impl Reader {
    fn current() -> Reader {
        tokio::task::try_id()
            .map_or_else(|| Reader::Thread(std::thread::current().id()), Reader::Task)
    }
}

/// What one reader must see.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Need {
    since: Instant,
    /// The primary's position at or past the write; `None` until a sample
    /// taken after the commit exists.
    pub(crate) position: Option<u64>,
}

/// The readers that wrote recently, and what they must see.
#[derive(Default)]
pub(crate) struct Writes {
    entries: Mutex<HashMap<Reader, Need>>,
    /// The number of entries, read without the lock: a read-only call of a
    /// task that did not write takes no lock while nobody wrote lately.
    len: AtomicUsize,
}

impl Writes {
    /// The current reader committed a write just now.
    pub(crate) fn committed(&self) {
        self.insert(Need {
            since: Instant::now(),
            position: None,
        });
    }

    /// The current reader must see `token`'s position.
    pub(crate) fn read_after(&self, token: SessionToken) {
        self.insert(Need {
            since: Instant::now(),
            position: Some(token.0),
        });
    }

    fn insert(&self, need: Need) {
        let mut entries = self.lock();
        let reader = Reader::current();
        let need = match entries.get(&reader) {
            // A token further on than an unresolved write keeps both
            // constraints only by waiting for the write: the write wins.
            Some(old) if old.position.is_none() && need.position.is_some() => *old,
            _ => need,
        };
        entries.insert(reader, need);
        self.len.store(entries.len(), Ordering::Relaxed);
    }

    /// What the current reader must see, if anything.
    pub(crate) fn need(&self) -> Option<Need> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.lock().get(&Reader::current()).copied()
    }

    /// A sample of the primary's position, taken by a query that started at
    /// `started`: it covers every write committed before then. Entries too
    /// old to matter go.
    pub(crate) fn sampled(&self, started: Instant, position: u64, forget_after: Duration) {
        if self.len.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut entries = self.lock();
        entries.retain(|_, need| {
            if need.position.is_none() && need.since < started {
                need.position = Some(position);
            }
            need.since.elapsed() <= forget_after
        });
        self.len.store(entries.len(), Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Reader, Need>> {
        // The map holds plain data that no panic can leave half-written.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_waits_for_a_sample_taken_after_it() {
        let writes = Writes::default();
        let before = Instant::now();
        writes.committed();
        writes.sampled(before, 10, Duration::from_secs(60));
        assert_eq!(writes.need().and_then(|need| need.position), None);
        writes.sampled(Instant::now(), 20, Duration::from_secs(60));
        assert_eq!(writes.need().and_then(|need| need.position), Some(20));
    }

    #[test]
    fn old_entries_are_forgotten() {
        let writes = Writes::default();
        writes.read_after(SessionToken(5));
        assert!(writes.need().is_some());
        writes.sampled(Instant::now(), 6, Duration::ZERO);
        assert!(writes.need().is_none());
    }

    #[test]
    fn tokens_round_trip_as_text() {
        let token: SessionToken = "12345".parse().expect("a number");
        assert_eq!(token.to_string(), "12345");
        assert!("x".parse::<SessionToken>().is_err());
    }
}
