//! One transaction (or one autocommit session) and the connection it owns:
//! the state machine, who holds the connection at each moment, and how the
//! transaction ends.
//!
//! The connection lives in a slot. It leaves the slot only for one statement
//! at a time, inside a guard, and every guard that is dropped before its
//! statement is known to be finished hands the connection to the backend's
//! `abandon` instead of back to the pool. That is what keeps a cancelled
//! future from ever returning a connection to the pool inside a transaction.

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use sqlx::pool::PoolConnection;

use crate::backend::{Backend, InFlightCommit, Restore, SavepointAction, SavepointName};
use crate::error::{CommitOutcome, Error, Operation, RollbackOnlyCause};
use crate::hooks::HookList;
use crate::metrics::{Count, Metrics, Series};
use crate::options::{Isolation, Propagation, TxOptions};
use crate::retry::FailureKind;

/// A transaction's process-unique id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxId(u64);

impl TxId {
    fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        TxId(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for TxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tx-{}", self.0)
    }
}

/// Where a transaction is in its life.
///
/// `Active → Committing → Committed`, `Active → RollingBack → RolledBack`; a
/// transaction whose COMMIT or ROLLBACK failed, or that was abandoned, ends
/// `Failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TxState {
    /// Begun; statements may run.
    Active = 0,
    /// COMMIT is in flight.
    Committing = 1,
    /// COMMIT succeeded.
    Committed = 2,
    /// ROLLBACK is in flight.
    RollingBack = 3,
    /// ROLLBACK succeeded.
    RolledBack = 4,
    /// Ended badly: COMMIT or ROLLBACK failed, or the transaction was
    /// abandoned and its connection closed.
    Failed = 5,
}

impl TxState {
    fn from_u8(value: u8) -> TxState {
        match value {
            0 => TxState::Active,
            1 => TxState::Committing,
            2 => TxState::Committed,
            3 => TxState::RollingBack,
            4 => TxState::RolledBack,
            _ => TxState::Failed,
        }
    }

    /// The state's lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            TxState::Active => "active",
            TxState::Committing => "committing",
            TxState::Committed => "committed",
            TxState::RollingBack => "rolling_back",
            TxState::RolledBack => "rolled_back",
            TxState::Failed => "failed",
        }
    }
}

impl fmt::Display for TxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The backend-independent part of a session: identity, options, state.
#[derive(Debug)]
pub(crate) struct SessionCore {
    pub(crate) id: TxId,
    pub(crate) manager_id: u64,
    pub(crate) name: &'static str,
    pub(crate) backend: &'static str,
    pub(crate) isolation: Option<Isolation>,
    pub(crate) read_only: bool,
    /// `false` for the autocommit session of `supports`/`never` without a
    /// running transaction.
    pub(crate) transactional: bool,
    /// Whether the connection is borrowed from an autocommit session rather
    /// than taken from the pool.
    pub(crate) borrows_connection: bool,
    /// Which attempt of a retrying call this is, from 1.
    pub(crate) attempt: u32,
    pub(crate) started_at: Instant,
    state: AtomicU8,
    rollback_only: OnceLock<RollbackOnlyCause>,
    /// Set once COMMIT is about to be sent or the on_rollback hooks are
    /// about to run: from then on the outcome's own hooks are under way, and
    /// a cancellation must not run on_rollback hooks of its own.
    fate_sealed: AtomicBool,
    doomed: OnceLock<FailureKind>,
    aborted: OnceLock<&'static str>,
    /// The hooks registered in this transaction.
    pub(crate) hooks: HookList,
    /// The depth of the innermost savepoint scope running now (1: none).
    depth: AtomicU32,
    /// Where the transaction is counted, for transactions (not autocommit
    /// sessions).
    pub(crate) accounting: Option<Arc<Accounting>>,
}

/// Counting a transaction's end, once.
#[derive(Debug)]
pub(crate) struct Accounting {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) series: Arc<Series>,
    finished: AtomicBool,
}

impl Accounting {
    pub(crate) fn new(metrics: Arc<Metrics>, series: Arc<Series>) -> Self {
        Accounting {
            metrics,
            series,
            finished: AtomicBool::new(false),
        }
    }

    /// Counts the transaction's end and takes it off the active list, the
    /// first time only.
    fn finish(&self, id: TxId, started_at: Instant, ended: CommitOutcome) {
        if self.finished.swap(true, Ordering::AcqRel) {
            return;
        }
        match ended {
            CommitOutcome::Committed => self.series.add(Count::Committed),
            CommitOutcome::Aborted => self.series.add(Count::RolledBack),
            CommitOutcome::Unknown => {}
        }
        self.series.record_duration(started_at.elapsed());
        self.metrics.deactivate(id.get());
    }
}

impl SessionCore {
    pub(crate) fn state(&self) -> TxState {
        TxState::from_u8(self.state.load(Ordering::Acquire))
    }

    fn set_state(&self, state: TxState) {
        self.state.store(state as u8, Ordering::Release);
    }

    /// See `fate_sealed`.
    pub(crate) fn seal_fate(&self) {
        self.fate_sealed.store(true, Ordering::Release);
    }

    pub(crate) fn fate_sealed(&self) -> bool {
        self.fate_sealed.load(Ordering::Acquire)
    }

    /// Marks the transaction rollback-only; the first cause is kept.
    pub(crate) fn mark_rollback_only(&self, cause: RollbackOnlyCause) {
        let _ = self.rollback_only.set(cause);
    }

    pub(crate) fn rollback_only(&self) -> Option<RollbackOnlyCause> {
        self.rollback_only.get().copied()
    }

    pub(crate) fn is_rollback_only(&self) -> bool {
        self.rollback_only.get().is_some() || self.doomed.get().is_some()
    }

    pub(crate) fn aborted(&self) -> Option<&'static str> {
        self.aborted.get().copied()
    }

    /// Marks the transaction as one that only a retry can fix; it can no
    /// longer commit.
    pub(crate) fn doom(&self, kind: FailureKind) {
        let _ = self.doomed.set(kind);
    }

    pub(crate) fn doomed(&self) -> Option<FailureKind> {
        self.doomed.get().copied()
    }

    pub(crate) fn depth(&self) -> u32 {
        self.depth.load(Ordering::Acquire)
    }

    /// Goes one savepoint scope deeper from `depth`; `false` if the session
    /// is not at `depth` (another scope is open below it).
    pub(crate) fn enter_scope(&self, depth: u32) -> bool {
        self.depth
            .compare_exchange(depth, depth + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Back to `depth`, when the scope entered from it ends.
    pub(crate) fn leave_scope(&self, depth: u32) {
        self.depth.store(depth, Ordering::Release);
    }

    /// Counts the transaction's end, the first time only.
    fn finish(&self, ended: CommitOutcome) {
        if let Some(accounting) = &self.accounting {
            accounting.finish(self.id, self.started_at, ended);
        }
    }

    /// What the background recovery needs to record a COMMIT cut off in
    /// flight.
    fn cutoff(&self, token: Option<String>) -> CommitCutoff {
        CommitCutoff {
            accounting: self.accounting.clone(),
            name: self.name,
            id: self.id,
            started_at: self.started_at,
            token,
        }
    }
}

/// Who has the connection right now.
enum Slot<DB: Backend> {
    /// In the slot, ready for the next statement.
    Idle(PoolConnection<DB>),
    /// Lent to a guard for one statement (or to a `TxConn`).
    Borrowed,
    /// Gone: the session ended or was abandoned. A connection handed back now
    /// is abandoned too.
    Closed,
}

/// Where the session's connection came from, and so where it goes back to.
enum Origin<DB: Backend> {
    Pool,
    /// Borrowed from an autocommit session of the same manager; given back to
    /// it when this transaction ends.
    Lent(Arc<Session<DB>>),
}

/// A transaction or autocommit session on one connection.
pub(crate) struct Session<DB: Backend> {
    pub(crate) core: SessionCore,
    resolve_ambiguous_commit: bool,
    /// What puts back the session settings the BEGIN changed.
    restore: Restore,
    slot: Mutex<Slot<DB>>,
    origin: Origin<DB>,
    /// For asking, on a fresh connection, what became of a COMMIT that was
    /// cut off.
    pool: sqlx::Pool<DB>,
}

/// Where a new session's connection comes from.
pub(crate) enum Source<DB: Backend> {
    /// Taken from the pool now.
    Pool,
    /// Already taken from the pool.
    Acquired(PoolConnection<DB>),
    /// Borrowed from an autocommit session of the same manager.
    Lent(Arc<Session<DB>>),
}

/// What a new session is opened on.
pub(crate) struct Opening<DB: Backend> {
    pub(crate) manager_id: u64,
    pub(crate) name: &'static str,
    pub(crate) options: TxOptions,
    pub(crate) transactional: bool,
    pub(crate) source: Source<DB>,
    pub(crate) attempt: u32,
    /// Bound the server's statements by this time, if set.
    pub(crate) server_timeout: Option<Duration>,
    /// Where to count the transaction.
    pub(crate) accounting: Option<Arc<Accounting>>,
}

impl<DB: Backend> Session<DB> {
    /// Takes a connection (from `pool`, or as `source` says), begins the
    /// transaction if there is to be one, and returns the session.
    pub(crate) async fn open(
        pool: &sqlx::Pool<DB>,
        opening: Opening<DB>,
    ) -> Result<Arc<Session<DB>>, Error> {
        let Opening {
            manager_id,
            name,
            options,
            transactional,
            source,
            attempt,
            server_timeout,
            accounting,
        } = opening;
        let (conn, origin) = match source {
            Source::Lent(parent) => (parent.lend()?, Origin::Lent(parent)),
            Source::Acquired(conn) => (conn, Origin::Pool),
            Source::Pool => (
                pool.acquire()
                    .await
                    .map_err(|source| Error::database(Operation::Acquire, source))?,
                Origin::Pool,
            ),
        };
        let server_timeout = server_timeout.filter(|_| transactional);
        let mut held = Held::new(conn, None, &origin);
        if transactional {
            let (restore, begun) = DB::begin(held.conn(), &options.access(), server_timeout).await;
            held.restore = restore;
            if let Err(source) = begun {
                held.roll_back_and_release().await;
                return Err(Error::database(Operation::Begin, source));
            }
        }
        let restore = held.restore;
        let conn = held.disarm();
        Ok(Arc::new(Session {
            core: SessionCore {
                id: TxId::next(),
                manager_id,
                name,
                backend: DB::SYSTEM,
                isolation: options.isolation,
                read_only: options.read_only == Some(true),
                transactional,
                borrows_connection: matches!(origin, Origin::Lent(_)),
                attempt,
                started_at: Instant::now(),
                state: AtomicU8::new(TxState::Active as u8),
                rollback_only: OnceLock::new(),
                fate_sealed: AtomicBool::new(false),
                doomed: OnceLock::new(),
                aborted: OnceLock::new(),
                hooks: HookList::default(),
                depth: AtomicU32::new(u32::from(transactional)),
                accounting: accounting.filter(|_| transactional),
            },
            resolve_ambiguous_commit: options.resolve_ambiguous_commit,
            restore,
            slot: Mutex::new(Slot::Idle(conn)),
            origin,
            pool: pool.clone(),
        }))
    }

    fn slot(&self) -> MutexGuard<'_, Slot<DB>> {
        // The slot holds no invariant a panic could break half-way: recover it.
        self.slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the connection out of the slot for one use.
    pub(crate) fn lend(&self) -> Result<PoolConnection<DB>, Error> {
        let mut slot = self.slot();
        match std::mem::replace(&mut *slot, Slot::Borrowed) {
            Slot::Idle(conn) => Ok(conn),
            Slot::Borrowed => Err(Error::ConnectionBorrowed),
            Slot::Closed => {
                *slot = Slot::Closed;
                Err(Error::TransactionAborted(
                    self.core.aborted().unwrap_or("it has already ended"),
                ))
            }
        }
    }

    /// Puts a lent connection back, or abandons it if the session ended
    /// meanwhile.
    pub(crate) fn give_back(&self, conn: PoolConnection<DB>) {
        let mut slot = self.slot();
        match *slot {
            Slot::Borrowed => *slot = Slot::Idle(conn),
            Slot::Idle(_) | Slot::Closed => {
                drop(slot);
                self.abandon_connection(conn);
            }
        }
    }

    /// Ends the session's use of its connection at once: the connection is
    /// abandoned (now, or when its borrower hands it back) and every later use
    /// fails with `reason`.
    pub(crate) fn abort(&self, reason: &'static str) {
        let _ = self.core.aborted.set(reason);
        let state = self.core.state();
        // Cut off while COMMIT was in flight, it may well have committed:
        // whoever holds the COMMIT (its background recovery, or the
        // resolution of an ambiguous commit) counts how it ended.
        if state != TxState::Committing {
            self.core.finish(CommitOutcome::Aborted);
        }
        if !matches!(state, TxState::Committed | TxState::RolledBack) {
            self.core.set_state(TxState::Failed);
        }
        let previous = std::mem::replace(&mut *self.slot(), Slot::Closed);
        if let Slot::Idle(conn) = previous {
            self.abandon_connection(conn);
        }
    }

    fn abandon_connection(&self, conn: PoolConnection<DB>) {
        abandon(conn, self.restore, &self.origin, None);
    }

    /// Runs one savepoint statement inside the transaction.
    async fn run_savepoint(
        &self,
        action: SavepointAction,
        name: SavepointName<'_>,
    ) -> Result<(), Error> {
        let operation = match action {
            SavepointAction::Create => Operation::Savepoint,
            SavepointAction::Release => Operation::ReleaseSavepoint,
            SavepointAction::RollbackTo | SavepointAction::RollbackAndRelease => {
                Operation::RollbackToSavepoint
            }
        };
        let mut lease = Lease {
            session: self,
            conn: Some(self.lend()?),
        };
        let result = match name {
            SavepointName::Scope(depth) => DB::scope_savepoint(lease.conn(), action, depth).await,
            SavepointName::Named(name) => {
                DB::execute(lease.conn(), Cow::Owned(DB::savepoint_sql(action, name))).await
            }
        };
        lease.finish();
        result.map_err(|source| Error::database(operation, source))
    }

    /// Commits or rolls back (for a transaction) and gives the connection back
    /// to where it came from.
    pub(crate) async fn end(&self, commit: bool) -> Result<(), Error> {
        let conn = {
            let mut slot = self.slot();
            match std::mem::replace(&mut *slot, Slot::Closed) {
                Slot::Idle(conn) => conn,
                Slot::Borrowed => {
                    drop(slot);
                    let _ = self
                        .core
                        .aborted
                        .set("a `TxConn` guard outlived the transaction's body");
                    self.core.set_state(TxState::Failed);
                    self.core.finish(CommitOutcome::Aborted);
                    return Err(Error::ConnectionBorrowed);
                }
                Slot::Closed => {
                    self.core.set_state(TxState::Failed);
                    self.core.finish(CommitOutcome::Aborted);
                    return Err(Error::TransactionAborted(
                        self.core.aborted().unwrap_or("it has already ended"),
                    ));
                }
            }
        };
        if let Some(reason) = self.core.aborted() {
            self.abandon_connection(conn);
            self.core.finish(CommitOutcome::Aborted);
            return Err(Error::TransactionAborted(reason));
        }
        let mut held = Held::new(conn, self.restore, &self.origin);
        if !self.core.transactional {
            held.release();
            Ok(())
        } else if commit {
            self.commit(held).await
        } else {
            self.rollback(held).await
        }
    }

    async fn rollback(&self, mut held: Held<'_, DB>) -> Result<(), Error> {
        self.core.set_state(TxState::RollingBack);
        self.core.finish(CommitOutcome::Aborted);
        let restore = held.restore;
        match DB::rollback(held.conn(), restore).await {
            Ok(restored) => {
                self.core.set_state(TxState::RolledBack);
                if restored {
                    held.release();
                }
                Ok(())
            }
            Err(source) => {
                self.core.set_state(TxState::Failed);
                Err(Error::database(Operation::Rollback, source))
            }
        }
    }

    async fn commit(&self, mut held: Held<'_, DB>) -> Result<(), Error> {
        let token = if self.resolve_ambiguous_commit {
            match DB::commit_token(held.conn()).await {
                Ok(token) => token,
                // The transaction cannot commit (on PostgreSQL: a swallowed
                // error aborted it, and COMMIT would quietly roll back). No
                // COMMIT was sent, so the transaction is still open whatever
                // the backend does with a failed COMMIT.
                Err(source) => {
                    self.core.set_state(TxState::Failed);
                    self.core.finish(CommitOutcome::Aborted);
                    held.roll_back_and_release().await;
                    return Err(Error::database(Operation::Commit, source));
                }
            }
        } else {
            None
        };
        self.core.set_state(TxState::Committing);
        held.cutoff = Some(self.core.cutoff(token.clone()));
        let restore = held.restore;
        let committed = DB::commit(held.conn(), restore).await;
        held.cutoff = None;
        match committed {
            Ok(restored) => {
                self.core.finish(CommitOutcome::Committed);
                self.core.set_state(TxState::Committed);
                if restored {
                    held.release();
                }
                Ok(())
            }
            Err(source)
                if crate::backend::classify(&source) == Some(FailureKind::ConnectionLost) =>
            {
                // The connection is gone; `held` drops armed and abandons it.
                // The state stays `Committing` until the outcome is known;
                // cancelled meanwhile, it counts as unknown.
                drop(held);
                let unresolved = Unresolved(&self.core);
                let outcome = match &token {
                    Some(token) => DB::resolve_commit(&self.pool, token).await,
                    None => CommitOutcome::Unknown,
                };
                std::mem::forget(unresolved);
                self.core.set_state(if outcome == CommitOutcome::Committed {
                    TxState::Committed
                } else {
                    TxState::Failed
                });
                self.core.finish(outcome);
                Err(Error::AmbiguousCommit {
                    outcome,
                    transaction_id: token,
                })
            }
            Err(source) => {
                self.core.set_state(TxState::Failed);
                self.core.finish(CommitOutcome::Aborted);
                held.roll_back_after_failed_commit().await;
                Err(Error::database(Operation::Commit, source))
            }
        }
    }
}

/// A connection in the runtime's hands outside the slot: being begun or
/// ended. Dropped while armed (its future was cancelled, or a statement
/// failed in a way that leaves the connection's state unknown), it abandons
/// the connection.
struct Held<'s, DB: Backend> {
    conn: Option<PoolConnection<DB>>,
    restore: Restore,
    origin: &'s Origin<DB>,
    /// Set while COMMIT is in flight.
    cutoff: Option<CommitCutoff>,
}

impl<'s, DB: Backend> Held<'s, DB> {
    fn new(conn: PoolConnection<DB>, restore: Restore, origin: &'s Origin<DB>) -> Self {
        Held {
            conn: Some(conn),
            restore,
            origin,
            cutoff: None,
        }
    }

    fn conn(&mut self) -> &mut DB::Connection {
        self.conn
            .as_deref_mut()
            .expect("a held connection is present until released")
    }

    fn disarm(mut self) -> PoolConnection<DB> {
        self.conn
            .take()
            .expect("a held connection is present until released")
    }

    /// Ends whatever transaction may be open: after a failed BEGIN (the
    /// request can hold several statements, some of which may have run), or
    /// before a COMMIT that must not be sent. Keeps the connection only if
    /// ROLLBACK and the session restore succeed.
    async fn roll_back_and_release(&mut self) {
        let restore = self.restore;
        if matches!(DB::rollback(self.conn(), restore).await, Ok(true)) {
            self.release();
        }
    }

    /// After a COMMIT that failed with the server's answer, the transaction
    /// may still be open (SQLite keeps it on `SQLITE_BUSY`): roll back where
    /// the server has not already, and keep the connection only if that
    /// and the session restore work.
    async fn roll_back_after_failed_commit(&mut self) {
        let restore = self.restore;
        let clean = if DB::FAILED_COMMIT_ENDS_TRANSACTION {
            DB::restore(self.conn(), restore).await
        } else {
            matches!(DB::rollback(self.conn(), restore).await, Ok(true))
        };
        if clean {
            self.release();
        }
    }

    /// Gives the connection back, clean, to where it came from.
    fn release(&mut self) {
        if let Some(conn) = self.conn.take() {
            match self.origin {
                Origin::Pool => drop(conn),
                Origin::Lent(parent) => parent.give_back(conn),
            }
        }
    }
}

impl<DB: Backend> Drop for Held<'_, DB> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            abandon(conn, self.restore, self.origin, self.cutoff.take());
        }
    }
}

/// Counts a commit whose connection was lost as unknown if the resolution
/// of its outcome is cancelled.
struct Unresolved<'a>(&'a SessionCore);

impl Drop for Unresolved<'_> {
    fn drop(&mut self) {
        self.0.finish(CommitOutcome::Unknown);
    }
}

/// A COMMIT whose call's future was dropped while it was in flight.
struct CommitCutoff {
    accounting: Option<Arc<Accounting>>,
    name: &'static str,
    id: TxId,
    started_at: Instant,
    token: Option<String>,
}

impl CommitCutoff {
    /// Records what became of the COMMIT, once the server's answer was read
    /// (or could not be).
    fn settle(self, outcome: CommitOutcome) {
        if let Some(accounting) = &self.accounting {
            accounting.series.add(Count::CancelledCommit(outcome));
            accounting.finish(self.id, self.started_at, outcome);
        }
        tracing::info!(
            target: "covet_txn",
            transaction = self.name,
            transaction_id = self.id.get(),
            outcome = outcome.name(),
            "the call was cancelled while COMMIT was in flight; the server's answer was read \
             in the background"
        );
    }
}

/// How long the background recovery of an abandoned connection waits for
/// the server before closing the connection instead.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(5);

/// Abandons a connection whose future was dropped mid-statement (and, if it
/// was lent by an autocommit session, that session too: its connection is
/// gone). The connection keeps its pool slot while a background task reads
/// the server's answer to what was in flight and cleans it up; then it goes
/// back to the pool, or is closed if that fails or takes too long. Closing
/// at once would not undo a COMMIT the server already received: it would
/// only let the next borrower in before the commit shows.
fn abandon<DB: Backend>(
    conn: PoolConnection<DB>,
    restore: Restore,
    origin: &Origin<DB>,
    cutoff: Option<CommitCutoff>,
) {
    if let Origin::Lent(parent) = origin {
        parent.abort("a transaction begun on this session's connection was abandoned");
    }
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn(recover(conn, restore, cutoff))),
        Err(_) => {
            drop(conn.detach());
            settle(cutoff, CommitOutcome::Unknown);
        }
    }
}

async fn recover<DB: Backend>(
    mut conn: PoolConnection<DB>,
    restore: Restore,
    cutoff: Option<CommitCutoff>,
) {
    let in_flight = cutoff.as_ref().map(|cutoff| InFlightCommit {
        token: cutoff.token.clone(),
    });
    let recovered = tokio::time::timeout(
        RECOVERY_DEADLINE,
        DB::recover(&mut conn, restore, in_flight),
    )
    .await;
    match recovered {
        Ok(Ok(outcome)) => {
            settle(cutoff, outcome.unwrap_or(CommitOutcome::Unknown));
            // Back to the pool, clean.
            drop(conn);
        }
        Ok(Err(_)) | Err(_) => {
            drop(conn.detach());
            settle(cutoff, CommitOutcome::Unknown);
        }
    }
}

fn settle(cutoff: Option<CommitCutoff>, outcome: CommitOutcome) {
    if let Some(cutoff) = cutoff {
        cutoff.settle(outcome);
    }
}

/// The connection lent out of the slot for one statement the runtime runs.
/// Dropped before `finish` (the statement's future was cancelled), it aborts
/// the session: what the server did with the statement is unknown.
struct Lease<'s, DB: Backend> {
    session: &'s Session<DB>,
    conn: Option<PoolConnection<DB>>,
}

impl<DB: Backend> Lease<'_, DB> {
    fn conn(&mut self) -> &mut DB::Connection {
        self.conn
            .as_deref_mut()
            .expect("a leased connection is present until finished")
    }

    fn finish(mut self) {
        if let Some(conn) = self.conn.take() {
            self.session.give_back(conn);
        }
    }
}

impl<DB: Backend> Drop for Lease<'_, DB> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.session
                .abort("a statement of the transaction was cancelled while in flight");
            self.session.abandon_connection(conn);
        }
    }
}

/// The current transaction's connection, lent to the caller.
///
/// Get one with [`conn`](crate::conn); use `&mut *guard` wherever sqlx takes
/// an executor. While it is alive the transaction cannot run anything else
/// (a nested transactional call fails with [`Error::ConnectionBorrowed`]), so
/// keep it for a statement or a few, not across other transactional calls.
///
/// ```no_run
/// # async fn demo() -> Result<(), covet_txn::Error> {
/// use sqlx::Postgres;
/// let count: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts")
///     .fetch_one(&mut *covet_txn::conn::<Postgres>()?)
///     .await?;
/// # let _ = count; Ok(()) }
/// ```
pub struct TxConn<DB: Backend> {
    session: Arc<Session<DB>>,
    conn: Option<PoolConnection<DB>>,
}

impl<DB: Backend> TxConn<DB> {
    pub(crate) fn lend_from(session: Arc<Session<DB>>) -> Result<Self, Error> {
        let conn = session.lend()?;
        Ok(TxConn {
            session,
            conn: Some(conn),
        })
    }
}

impl<DB: Backend> Deref for TxConn<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        self.conn
            .as_deref()
            .expect("a TxConn holds its connection until dropped")
    }
}

impl<DB: Backend> DerefMut for TxConn<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        self.conn
            .as_deref_mut()
            .expect("a TxConn holds its connection until dropped")
    }
}

impl<DB: Backend> Drop for TxConn<DB> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.session.give_back(conn);
        }
    }
}

impl<DB: Backend> fmt::Debug for TxConn<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxConn")
            .field("transaction", &self.session.core.id)
            .field("backend", &DB::SYSTEM)
            .finish()
    }
}

/// A session with its backend type erased, as the scope runner and the
/// task-local context see it.
pub(crate) trait ErasedSession: Send + Sync + 'static {
    fn core(&self) -> &SessionCore;

    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;

    fn as_any(&self) -> &dyn Any;

    fn savepoint<'a>(
        &'a self,
        action: SavepointAction,
        name: SavepointName<'a>,
    ) -> BoxFuture<'a, Result<(), Error>>;

    fn end(&self, commit: bool) -> BoxFuture<'_, Result<(), Error>>;

    fn abort(&self, reason: &'static str);
}

impl<DB: Backend> ErasedSession for Session<DB> {
    fn core(&self) -> &SessionCore {
        &self.core
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn savepoint<'a>(
        &'a self,
        action: SavepointAction,
        name: SavepointName<'a>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(self.run_savepoint(action, name))
    }

    fn end(&self, commit: bool) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(Session::end(self, commit))
    }

    fn abort(&self, reason: &'static str) {
        Session::abort(self, reason);
    }
}

/// A snapshot of the running transaction, as seen from inside it.
///
/// ```no_run
/// # async fn demo() {
/// if let Some(info) = covet_txn::current() {
///     println!("{} `{}` at depth {} is {}", info.id, info.name, info.depth, info.state);
/// }
/// # }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TxInfo {
    /// The transaction's id; a savepoint scope shares its transaction's id.
    pub id: TxId,
    /// The name of the scope (the function's path under `#[transactional]`).
    pub name: &'static str,
    /// The name of the outermost scope, which began the transaction.
    pub transaction_name: &'static str,
    /// 1 for the outermost transaction, one more per savepoint scope.
    pub depth: u32,
    /// The isolation level asked for when the transaction began (`None`: the
    /// server's default).
    pub isolation: Option<Isolation>,
    /// Whether the transaction is read-only.
    pub read_only: bool,
    /// The propagation of the current scope.
    pub propagation: Propagation,
    /// The transaction's state.
    pub state: TxState,
    /// Whether a transaction is open at all: `false` in the autocommit
    /// session of `supports` or `never` when none was running.
    pub transactional: bool,
    /// Whether the transaction has been marked rollback-only.
    pub rollback_only: bool,
    /// The backend's OpenTelemetry `db.system` name.
    pub backend: &'static str,
    /// Which attempt of a retrying call this is, from 1.
    pub attempt: u32,
    /// When the transaction began.
    pub started_at: Instant,
    /// When the scope must be over, if it has a timeout.
    pub deadline: Option<Instant>,
}
