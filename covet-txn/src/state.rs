//! Where a transaction is in its life: its id, its observable state, and the
//! one state machine whose transitions are the only way that state changes.
//!
//! The machine holds two things. The *phase* ([`TxState`]): active,
//! committing, committed, rolling back, rolled back, failed. And the
//! *verdict*: whether the transaction may still commit, or has been marked
//! rollback-only, doomed by a failure only a retry can fix, or aborted
//! because a scope was cut off. A verdict only ever gets stronger. Knows
//! nothing of connections, SQL or hooks.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::failure::FailureKind;

/// A transaction's process-unique id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxId(u64);

impl TxId {
    pub(crate) fn next() -> Self {
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
#[non_exhaustive]
pub enum TxState {
    /// Begun; statements may run.
    Active,
    /// COMMIT is in flight.
    Committing,
    /// COMMIT succeeded.
    Committed,
    /// Phase one of a two-phase commit succeeded: the work is kept,
    /// prepared, until the coordinator commits or rolls it back.
    Prepared,
    /// ROLLBACK is in flight.
    RollingBack,
    /// ROLLBACK succeeded.
    RolledBack,
    /// Ended badly: COMMIT or ROLLBACK failed, or the transaction was
    /// abandoned and its connection recovered or closed.
    Failed,
}

impl TxState {
    /// The state's lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            TxState::Active => "active",
            TxState::Committing => "committing",
            TxState::Committed => "committed",
            TxState::Prepared => "prepared",
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

/// Why a transaction was marked rollback-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RollbackOnlyCause {
    /// A scope joined to the transaction (`required`, `mandatory`,
    /// `supports`) failed: its work cannot be undone alone.
    JoinedScopeFailed {
        /// The scope that failed.
        scope: &'static str,
    },
    /// A nested scope failed and rolling back to its savepoint failed too,
    /// so the transaction holds work that should have been undone.
    SavepointRollbackFailed {
        /// The nested scope.
        scope: &'static str,
    },
    /// A scope joined to the transaction called
    /// [`set_rollback_only`](crate::set_rollback_only).
    Requested {
        /// The scope that asked.
        scope: &'static str,
    },
}

impl fmt::Display for RollbackOnlyCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RollbackOnlyCause::JoinedScopeFailed { scope } => write!(
                f,
                "the joined scope `{scope}` failed and marked it rollback-only; let that error \
                 propagate, or use the default `nested` propagation to recover from it with a \
                 savepoint"
            ),
            RollbackOnlyCause::SavepointRollbackFailed { scope } => write!(
                f,
                "the nested scope `{scope}` failed and rolling back to its savepoint failed too, \
                 so the transaction still holds that scope's work"
            ),
            RollbackOnlyCause::Requested { scope } => write!(
                f,
                "the joined scope `{scope}` called `set_rollback_only()`; call it in the scope \
                 that began the transaction to roll back without an error"
            ),
        }
    }
}

/// Whether a transaction may still commit, and if not, why not. Ordered by
/// strength: a verdict is only ever replaced by a stronger one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// It may commit.
    Open,
    /// It must roll back.
    RollbackOnly(RollbackOnlyCause),
    /// A failure only running it again can fix happened inside it.
    Doomed(FailureKind),
    /// A scope was cut off mid-way: its connection is gone.
    Aborted(&'static str),
}

impl Verdict {
    fn strength(self) -> u8 {
        match self {
            Verdict::Open => 0,
            Verdict::RollbackOnly(_) => 1,
            Verdict::Doomed(_) => 2,
            Verdict::Aborted(_) => 3,
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: TxState,
    verdict: Verdict,
    /// Set once COMMIT is about to be sent or the on_rollback hooks are
    /// about to run: from then on the outcome's own hooks are under way, and
    /// a cancellation owes no on_rollback hook of its own.
    sealed: bool,
}

/// One transaction's state machine.
#[derive(Debug)]
pub(crate) struct Machine(Mutex<Inner>);

impl Machine {
    /// A machine for a transaction that has begun.
    pub(crate) fn active() -> Self {
        Machine(Mutex::new(Inner {
            state: TxState::Active,
            verdict: Verdict::Open,
            sealed: false,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every transition leaves the machine whole: recover from a poison.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn state(&self) -> TxState {
        self.lock().state
    }

    pub(crate) fn verdict(&self) -> Verdict {
        self.lock().verdict
    }

    /// Whether the transaction can no longer commit.
    pub(crate) fn is_rollback_only(&self) -> bool {
        self.verdict() != Verdict::Open
    }

    pub(crate) fn sealed(&self) -> bool {
        self.lock().sealed
    }

    /// Strengthens the verdict; a weaker one changes nothing.
    fn judge(&self, verdict: Verdict) {
        let mut inner = self.lock();
        if verdict.strength() > inner.verdict.strength() {
            inner.verdict = verdict;
        }
    }

    pub(crate) fn mark_rollback_only(&self, cause: RollbackOnlyCause) {
        self.judge(Verdict::RollbackOnly(cause));
    }

    pub(crate) fn doom(&self, kind: FailureKind) {
        self.judge(Verdict::Doomed(kind));
    }

    /// The transaction's connection is gone: it cannot commit, and unless it
    /// had already ended it ends `Failed`. Returns the state it was in.
    pub(crate) fn abort(&self, reason: &'static str) -> TxState {
        let mut inner = self.lock();
        if Verdict::Aborted(reason).strength() > inner.verdict.strength() {
            inner.verdict = Verdict::Aborted(reason);
        }
        let was = inner.state;
        if !matches!(was, TxState::Committed | TxState::RolledBack) {
            inner.state = TxState::Failed;
        }
        was
    }

    /// The reason the transaction was aborted, if it was.
    pub(crate) fn aborted(&self) -> Option<&'static str> {
        match self.verdict() {
            Verdict::Aborted(reason) => Some(reason),
            _ => None,
        }
    }

    /// Active → Committing, sealing the transaction's fate; refused with the
    /// verdict when the transaction may not commit.
    pub(crate) fn begin_commit(&self) -> Result<(), Verdict> {
        let mut inner = self.lock();
        if inner.verdict != Verdict::Open {
            return Err(inner.verdict);
        }
        inner.state = TxState::Committing;
        inner.sealed = true;
        Ok(())
    }

    /// Active → RollingBack.
    pub(crate) fn begin_rollback(&self) {
        self.lock().state = TxState::RollingBack;
    }

    /// The end of COMMIT or ROLLBACK, or of a transaction that ended without
    /// either: `Committed`, `RolledBack` or `Failed`.
    pub(crate) fn end(&self, state: TxState) {
        self.lock().state = state;
    }

    /// The on_rollback hooks are about to run.
    pub(crate) fn seal(&self) {
        self.lock().sealed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_only_gets_stronger() {
        let machine = Machine::active();
        machine.doom(FailureKind::Deadlock);
        machine.mark_rollback_only(RollbackOnlyCause::Requested { scope: "s" });
        assert_eq!(machine.verdict(), Verdict::Doomed(FailureKind::Deadlock));
        machine.doom(FailureKind::Busy);
        assert_eq!(machine.verdict(), Verdict::Doomed(FailureKind::Deadlock));
        assert_eq!(machine.abort("cut off"), TxState::Active);
        assert_eq!(machine.verdict(), Verdict::Aborted("cut off"));
        assert_eq!(machine.state(), TxState::Failed);
    }

    #[test]
    fn a_transaction_that_may_not_commit_is_refused_and_stays_active() {
        let machine = Machine::active();
        machine.mark_rollback_only(RollbackOnlyCause::JoinedScopeFailed { scope: "s" });
        assert!(machine.begin_commit().is_err());
        assert_eq!(machine.state(), TxState::Active);
        assert!(!machine.sealed());
        let open = Machine::active();
        assert_eq!(open.begin_commit(), Ok(()));
        assert_eq!((open.state(), open.sealed()), (TxState::Committing, true));
    }

    #[test]
    fn an_ended_transaction_keeps_its_end_when_aborted() {
        let machine = Machine::active();
        machine.end(TxState::Committed);
        assert_eq!(machine.abort("late"), TxState::Committed);
        assert_eq!(machine.state(), TxState::Committed);
    }
}
