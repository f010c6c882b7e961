//! One writer at a time per database file, in this process: SQLite lets one
//! write transaction run at once, and a second one that begins meanwhile
//! sleeps and polls in its busy handler. Waiting here instead, first come,
//! first served, hands the file over as soon as the writer ends.
//!
//! The gate is process-wide, keyed by the file's path, so that two managers
//! on one file share it. A writer that waits longer than
//! [`LONGEST_WAIT`] goes on to the database without its turn, as it would
//! without the gate: a program whose write transaction waits on another one
//! in the same process then still gets the database's busy error instead of
//! hanging.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a writer waits for its turn before it goes on regardless.
pub(crate) const LONGEST_WAIT: Duration = Duration::from_secs(2);

/// The writer gate of one database file.
#[derive(Debug, Clone)]
#[doc(hidden)]
pub struct WriterGate(Arc<Semaphore>);

impl WriterGate {
    /// The gate of the file at `path`, shared by everything in the process
    /// that opens it.
    /// Only SQLite's driver makes gates.
    #[cfg(feature = "sqlite")]
    pub(crate) fn of(path: String) -> Self {
        use std::collections::HashMap;
        use std::sync::{LazyLock, Mutex};

        static FILES: LazyLock<Mutex<HashMap<String, Arc<Semaphore>>>> =
            LazyLock::new(Mutex::default);
        WriterGate(Arc::clone(
            super::limit::lock(&FILES)
                .entry(path)
                .or_insert_with(|| Arc::new(Semaphore::new(1))),
        ))
    }

    /// Waits for the file's one writer turn, at most [`LONGEST_WAIT`]
    /// (`None` when the wait ran out), and says whether it waited.
    pub(crate) async fn turn(&self) -> (Option<OwnedSemaphorePermit>, bool) {
        if let Ok(permit) = Arc::clone(&self.0).try_acquire_owned() {
            return (Some(permit), false);
        }
        let turn = tokio::time::timeout(LONGEST_WAIT, Arc::clone(&self.0).acquire_owned())
            .await
            .ok()
            .and_then(Result::ok);
        (turn, true)
    }
}
