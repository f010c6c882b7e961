//! Settling a scope once its body has ended: commit or roll back a
//! transaction with its hooks around, release or roll back a savepoint,
//! mark a joined transaction, give back an autocommit connection. After a
//! return, an error (which `commit_on` may turn into a commit), a panic, a
//! deadline, or a scope that asked to roll back.
//!
//! This module owns the hook sequence; the session owns the statements and
//! the state machine. A panic is handed back, not resumed here, so that the
//! caller disarms its cancellation guard first.

use std::sync::Arc;

use super::turns::Turns;
use super::{BodyOutcome, Call, Scope};
use crate::context::{self, Frame, FrameKind};
use crate::dialect::{SavepointAction, SavepointName};
use crate::error::{Error, Operation};
use crate::event::{Phase, RollbackCause, TxEvent, TxOutcome};
use crate::failure::{CommitOutcome, FailureKind};
use crate::hooks::list::ManagerHooks;
use crate::hooks::run::{self, PhaseRun};
use crate::observe::Observer;
use crate::session::{CommitError, SessionHandle};
use crate::state::{RollbackOnlyCause, Verdict};

/// What a settled scope returns: the call's result, or a panic to resume.
pub(crate) type Settled<T, E> = std::thread::Result<Result<T, E>>;

/// Settles the scope of a call that opened its own session: commits or
/// rolls back its transaction, or gives back its autocommit connection.
pub(crate) async fn settle_own<T, E: From<Error>>(
    call: &Call<E>,
    scope: &Scope,
    outcome: BodyOutcome<T, E>,
    attempt: u32,
) -> Settled<T, E> {
    let frame = &scope.frame;
    match frame.kind {
        FrameKind::Autocommit => settle_autocommit(call, frame, outcome, attempt),
        _ => settle_transaction(call, frame, outcome, attempt).await,
    }
}

/// Settles the scope of a call that ran inside the running session:
/// releases or rolls back its savepoint, or marks the transaction it joined.
pub(crate) async fn settle_within<T, E: From<Error>>(
    call: &Call<E>,
    scope: &Scope,
    outcome: BodyOutcome<T, E>,
) -> Settled<T, E> {
    let frame = &scope.frame;
    match frame.kind {
        FrameKind::Joined => settle_joined(call, frame, outcome),
        _ => settle_savepoint(call, frame, outcome).await,
    }
}

/// The error and hook cause of a transaction that may not commit.
pub(crate) fn refusal(verdict: Verdict) -> Option<(Error, RollbackCause)> {
    match verdict {
        Verdict::Open => None,
        Verdict::RollbackOnly(cause) => Some((
            Error::RollbackOnly(cause),
            RollbackCause::RollbackOnly(cause),
        )),
        Verdict::Doomed(kind) => Some((Error::Doomed(kind), RollbackCause::Doomed(kind))),
        // A nested scope was cut off (its deadline, a dropped future): the
        // connection is gone, COMMIT cannot happen.
        Verdict::Aborted(reason) => Some((
            Error::TransactionAborted(reason),
            RollbackCause::Aborted(reason),
        )),
    }
}

/// Why the body's error rolled the transaction back, for hooks; `kind` is
/// the error's failure kind.
fn cause_of<E>(call: &Call<E>, error: &E, kind: Option<FailureKind>) -> RollbackCause {
    match (call.inspect())(error) {
        Some(source) => RollbackCause::Error {
            message: source.to_string(),
            kind,
        },
        None => RollbackCause::Error {
            message: "the function returned an error".to_owned(),
            kind: None,
        },
    }
}

async fn settle_transaction<T, E: From<Error>>(
    call: &Call<E>,
    frame: &Arc<Frame>,
    outcome: BodyOutcome<T, E>,
    attempt: u32,
) -> Settled<T, E> {
    let ending = Ending {
        frame,
        manager: frame.engine.hooks(),
        observer: call.observer(),
        turns: call.turns(),
    };
    let result = match outcome {
        BodyOutcome::TimedOut => {
            frame.session.abort("the transaction's deadline passed");
            ending.after_rollback(RollbackCause::Timeout, None).await;
            return Ok(Err(call.timeout_error(attempt).into()));
        }
        BodyOutcome::Panicked(panic) => {
            ending.roll_back(|| RollbackCause::Panic).await;
            return Err(panic);
        }
        BodyOutcome::Returned(Err(error)) if !call.commits_on(&error) => {
            // Described and classified before awaiting: a borrow of the
            // error held across an await would make the call's future
            // `Send` only for `Sync` error types.
            let failure =
                (call.inspect())(&error).and_then(|source| call.engine().classify(source));
            let cause = ending.describe(|| cause_of(call, &error, failure));
            ending.roll_back_described(cause, failure).await;
            return Ok(Err(error));
        }
        BodyOutcome::Returned(result) => result,
    };
    // A test transaction, or one whose scope asked for it, rolls back and
    // returns what the function returned: nobody is misled about a commit.
    if frame.test || frame.rollback_requested() {
        ending.roll_back(|| RollbackCause::Requested).await;
        return Ok(result);
    }
    if let Some((error, cause)) = refusal(frame.session.core().machine.verdict()) {
        ending.roll_back(|| cause).await;
        return Ok(Err(error.into()));
    }
    Ok(match ending.commit().await {
        Ok(()) => {
            if !frame.session.core().read_only {
                frame.engine.committed_write();
            }
            result
        }
        Err(error) => Err(error.into()),
    })
}

/// The end of a transaction that began in this call: hooks around COMMIT
/// and ROLLBACK.
struct Ending<'a> {
    frame: &'a Arc<Frame>,
    manager: &'a Arc<ManagerHooks>,
    observer: &'a Observer,
    /// The attempt's admission turns, some of which its COMMIT may give on.
    turns: &'a Turns,
}

impl Ending<'_> {
    fn session(&self) -> &SessionHandle {
        &self.frame.session
    }

    fn has_hooks(&self) -> bool {
        !self.session().core().hooks.is_empty() || !self.manager.is_empty()
    }

    /// The cause of a rollback, described only if a hook will read it.
    fn describe(&self, cause: impl FnOnce() -> RollbackCause) -> Option<RollbackCause> {
        self.has_hooks().then(cause)
    }

    fn phase(&self, outcome: TxOutcome, cause: Option<RollbackCause>) -> PhaseRun<'_> {
        PhaseRun {
            hooks: &self.session().core().hooks,
            manager: Some(self.manager),
            observer: Some(self.observer),
            event: TxEvent::new(&self.frame.info(), outcome, cause),
        }
    }

    /// before_commit hooks, COMMIT, on_commit hooks; or, if a hook asked to
    /// roll back, the rollback it asked for.
    async fn commit(&self) -> Result<(), Error> {
        if self.has_hooks() {
            let before = self.phase(TxOutcome::Committed, None);
            let ran = context::enter(
                Arc::clone(self.frame),
                before.run(Phase::BeforeCommit, true),
            )
            .await;
            if let Err(failure) = ran {
                let message = failure.error.to_string();
                self.roll_back(|| RollbackCause::HookFailed(message)).await;
                return Err(failure.into());
            }
            // A hook may have asked to roll back, as the function may.
            if self.frame.rollback_requested() {
                self.roll_back(|| RollbackCause::Requested).await;
                return Ok(());
            }
        }
        self.turns.commit_going_out();
        let committed = self.session().commit().await;
        self.turns.commit_answered();
        match committed {
            Ok(()) => {}
            Err(CommitError::Refused(verdict)) => {
                let (error, cause) = refusal(verdict).unwrap_or((
                    Error::TransactionAborted("it was refused at COMMIT"),
                    RollbackCause::Aborted("it was refused at COMMIT"),
                ));
                self.after_rollback(cause, None).await;
                return Err(error);
            }
            Err(CommitError::Failed(Error::AmbiguousCommit {
                outcome,
                transaction_id,
            })) => {
                self.observer
                    .ambiguous_commit(outcome, transaction_id.as_deref());
                match outcome {
                    CommitOutcome::Committed => {}
                    // Neither committed nor rolled back, as far as anyone
                    // knows: hooks run exactly once or not at all.
                    CommitOutcome::Unknown => {
                        self.session().core().hooks.clear();
                        return Err(Error::AmbiguousCommit {
                            outcome,
                            transaction_id,
                        });
                    }
                    CommitOutcome::Aborted => {
                        let error = Error::AmbiguousCommit {
                            outcome,
                            transaction_id,
                        };
                        self.after_rollback(RollbackCause::CommitFailed(error.to_string()), None)
                            .await;
                        return Err(error);
                    }
                }
            }
            Err(CommitError::Failed(error)) => {
                self.after_rollback(RollbackCause::CommitFailed(error.to_string()), None)
                    .await;
                return Err(error);
            }
        }
        if self.has_hooks() {
            let event = TxEvent::new(&self.frame.info(), TxOutcome::Committed, None);
            self.after_end(Phase::AfterCommit, event).await;
        }
        Ok(())
    }

    /// before_rollback hooks, ROLLBACK, on_rollback hooks.
    async fn roll_back(&self, cause: impl FnOnce() -> RollbackCause) {
        self.roll_back_described(self.describe(cause), None).await;
    }

    /// Like `roll_back`, with the cause from `describe`, after the body
    /// failed with `failure`.
    async fn roll_back_described(
        &self,
        cause: Option<RollbackCause>,
        failure: Option<FailureKind>,
    ) {
        if let Some(cause) = &cause {
            let before = self.phase(TxOutcome::RolledBack, Some(cause.clone()));
            let _ = context::enter(
                Arc::clone(self.frame),
                before.run(Phase::BeforeRollback, false),
            )
            .await;
        }
        let failed = roll_back_quietly(self.session(), self.observer, failure).await;
        if let Some(cause) = cause {
            self.after_rollback(cause, failed).await;
        }
    }

    /// on_rollback hooks, after the transaction is gone.
    async fn after_rollback(&self, cause: RollbackCause, failed: Option<Arc<Error>>) {
        self.session().core().machine.seal();
        if self.has_hooks() {
            let mut event = TxEvent::new(&self.frame.info(), TxOutcome::RolledBack, Some(cause));
            event.rollback_error = failed;
            self.after_end(Phase::AfterRollback, event).await;
        }
    }

    /// The hooks of a phase after the end, run to completion even if the
    /// call's future is dropped meanwhile.
    fn after_end(&self, phase: Phase, event: TxEvent) -> run::RunToCompletion {
        run::after_end(
            phase,
            self.session().hook_holder(),
            Arc::clone(self.manager),
            Some(self.observer.clone()),
            event,
        )
    }
}

/// Rolls back after the body failed. A failure to roll back must not hide
/// the body's own error; the connection is recovered or closed either way.
/// A ROLLBACK that failed is reported and returned, for the on_rollback
/// hooks. After a `failure` that has already ended the transaction on the
/// server, the session may not wait for the ROLLBACK's answer.
async fn roll_back_quietly(
    session: &SessionHandle,
    observer: &Observer,
    failure: Option<FailureKind>,
) -> Option<Arc<Error>> {
    let error = session.rollback(failure).await.err()?;
    let statement_failed = matches!(
        error,
        Error::Database {
            operation: Operation::Rollback,
            ..
        }
    );
    if !statement_failed {
        return None;
    }
    observer.rollback_failed(None, &error);
    Some(Arc::new(error))
}

async fn settle_savepoint<T, E: From<Error>>(
    call: &Call<E>,
    frame: &Arc<Frame>,
    outcome: BodyOutcome<T, E>,
) -> Settled<T, E> {
    let session = &frame.session;
    let scope = ScopeEnding {
        frame,
        observer: call.observer(),
    };
    let result = match outcome {
        BodyOutcome::TimedOut => {
            session.abort("a nested scope's deadline passed while it ran");
            return Ok(Err(call.timeout_error(1).into()));
        }
        BodyOutcome::Panicked(panic) => {
            scope
                .roll_back(scope.describe(|| RollbackCause::Panic))
                .await;
            return Err(panic);
        }
        BodyOutcome::Returned(Err(error)) if !call.commits_on(&error) => {
            match (call.inspect())(&error).and_then(|source| call.engine().classify(source)) {
                // After a deadlock MySQL has already rolled the whole
                // transaction back, and only a new attempt can fix a
                // serialization failure: leave it to the outermost call.
                Some(kind) => session.core().machine.doom(kind),
                None => {
                    let cause = scope.describe(|| cause_of(call, &error, None));
                    scope.roll_back(cause).await;
                }
            }
            return Ok(Err(error));
        }
        BodyOutcome::Returned(result) => result,
    };
    if frame.rollback_requested() {
        scope
            .roll_back(scope.describe(|| RollbackCause::Requested))
            .await;
        return Ok(result);
    }
    Ok(
        match session
            .savepoint(SavepointAction::Release, SavepointName::Scope(frame.depth))
            .await
        {
            Ok(()) => {
                session.core().hooks.release_scope(frame.depth);
                result
            }
            // On PostgreSQL a statement error the body swallowed fails the
            // RELEASE; ROLLBACK TO undoes the scope and clears the error, so the
            // caller may carry on without this scope's work (or, if even that
            // fails, cannot commit).
            Err(error) => {
                match call.engine().classify(&error) {
                    Some(kind) => session.core().machine.doom(kind),
                    None => {
                        let cause = scope.describe(|| RollbackCause::Error {
                            message: error.to_string(),
                            kind: None,
                        });
                        scope.roll_back(cause).await;
                    }
                }
                Err(error.into())
            }
        },
    )
}

/// The end of a savepoint scope that rolls back.
struct ScopeEnding<'a> {
    frame: &'a Arc<Frame>,
    observer: &'a Observer,
}

impl ScopeEnding<'_> {
    /// The cause of the scope's rollback, described only if a hook will
    /// read it.
    fn describe(&self, cause: impl FnOnce() -> RollbackCause) -> Option<RollbackCause> {
        (!self.frame.session.core().hooks.is_empty()).then(cause)
    }

    /// The scope's before_rollback hooks, ROLLBACK TO SAVEPOINT, its
    /// on_rollback hooks; its other hooks are discarded. `cause` comes from
    /// `describe`.
    async fn roll_back(&self, cause: Option<RollbackCause>) {
        self.observer.savepoint_rolled_back();
        let session = &self.frame.session;
        let mut run = cause.map(|cause| PhaseRun {
            hooks: &session.core().hooks,
            manager: None,
            observer: Some(self.observer),
            event: TxEvent::new(&self.frame.info(), TxOutcome::RolledBack, Some(cause)),
        });
        if let Some(run) = &run {
            context::enter(
                Arc::clone(self.frame),
                run.run_scope_before_rollback(self.frame.depth),
            )
            .await;
        }
        let failed = self.roll_back_savepoint().await;
        if let Some(run) = &mut run {
            run.event.rollback_error = failed;
            run.run_scope_after_rollback(self.frame.depth).await;
        }
    }

    /// Undoes the scope's savepoint. If even that fails, the transaction can
    /// no longer be trusted to commit: a failure that a new attempt can fix
    /// (the connection lost, a deadlock) dooms it, so that the outermost call
    /// retries; any other marks it rollback-only.
    async fn roll_back_savepoint(&self) -> Option<Arc<Error>> {
        let session = &self.frame.session;
        let error = session
            .savepoint(
                SavepointAction::RollbackAndRelease,
                SavepointName::Scope(self.frame.depth),
            )
            .await
            .err()?;
        let machine = &session.core().machine;
        match self.frame.engine.classify(&error) {
            Some(kind) => machine.doom(kind),
            None => machine.mark_rollback_only(RollbackOnlyCause::SavepointRollbackFailed {
                scope: self.frame.name,
            }),
        }
        self.observer.rollback_failed(Some(self.frame.name), &error);
        Some(Arc::new(error))
    }
}

/// A scope joined to its session (`required`, `mandatory`, `supports`)
/// has no statement of its own: a failure marks a transaction, whose work
/// it cannot undo alone, rollback-only.
fn settle_joined<T, E: From<Error>>(
    call: &Call<E>,
    frame: &Arc<Frame>,
    outcome: BodyOutcome<T, E>,
) -> Settled<T, E> {
    let core = frame.session.core();
    let failed = RollbackOnlyCause::JoinedScopeFailed { scope: frame.name };
    match outcome {
        BodyOutcome::TimedOut => {
            frame
                .session
                .abort("a joined scope's deadline passed while it ran");
            Ok(Err(call.timeout_error(1).into()))
        }
        BodyOutcome::Returned(Ok(value)) => Ok(Ok(value)),
        BodyOutcome::Returned(Err(error)) => {
            if core.transactional && !call.commits_on(&error) {
                match (call.inspect())(&error).and_then(|source| call.engine().classify(source)) {
                    Some(kind) => core.machine.doom(kind),
                    None => core.machine.mark_rollback_only(failed),
                }
            }
            Ok(Err(error))
        }
        BodyOutcome::Panicked(panic) => {
            if core.transactional {
                core.machine.mark_rollback_only(failed);
            }
            Err(panic)
        }
    }
}

/// An autocommit session has nothing to commit or roll back: its
/// connection goes back.
fn settle_autocommit<T, E: From<Error>>(
    call: &Call<E>,
    frame: &Arc<Frame>,
    outcome: BodyOutcome<T, E>,
    attempt: u32,
) -> Settled<T, E> {
    if let BodyOutcome::TimedOut = outcome {
        frame.session.abort("the call's deadline passed");
        return Ok(Err(call.timeout_error(attempt).into()));
    }
    if let Err(error) = frame.session.release() {
        tracing::warn!(
            target: "covet_txn",
            transaction = frame.name,
            %error,
            "the autocommit connection could not be given back; it was recovered or closed"
        );
    }
    match outcome {
        BodyOutcome::Returned(result) => Ok(result),
        BodyOutcome::Panicked(panic) => Err(panic),
        BodyOutcome::TimedOut => Ok(Err(call.timeout_error(attempt).into())),
    }
}
