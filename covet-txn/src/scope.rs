//! Running one transactional call: choosing what the call does from its
//! propagation and what is already running (begin, savepoint, join,
//! autocommit), running the body inside its frame under its deadline,
//! settling the outcome (commit, release, roll back) after a return, an
//! error, a panic, a timeout or a cancellation, and running the whole
//! transaction again when a retryable failure allows it.

use std::error::Error as StdError;
use std::future::Future;
use std::panic::{AssertUnwindSafe, resume_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt;

use crate::backend::{SERVER_TIMEOUT_GRACE, SERVER_TIMEOUT_LIMIT, SavepointAction, SavepointName};
use crate::context::{self, Frame, FrameKind};
use crate::error::{CommitOutcome, Error, LastFailure, Operation, RollbackOnlyCause};
use crate::hooks::{self, ManagerHooks, Phase, PhaseRun, RollbackCause, TxEvent, TxOutcome};
use crate::manager::{ErasedOpening, ManagerHandle};
use crate::metrics::{Count, Series};
use crate::options::Isolation;
use crate::options::{Propagation, TxOptions};
use crate::retry::{self, RetryPolicy};
use crate::transaction::ErasedSession;
use tracing::Instrument;

/// Finds the error (for the retry classification) inside a user's error
/// type; `#[transactional]` builds one for any error type.
pub(crate) type Inspect<E> = fn(&E) -> Option<&(dyn StdError + 'static)>;

/// A body, boxed: nested calls would otherwise store each level's future
/// inside the next several times over, and the size would grow
/// geometrically with the depth.
pub(crate) type Body<Fut> = Pin<Box<Fut>>;

/// What a call does, decided before anything is sent.
enum Plan {
    /// Open a session: a new transaction (`transactional`), or an autocommit
    /// session. `lent_from` is an autocommit session whose connection the new
    /// transaction borrows.
    Open {
        transactional: bool,
        lent_from: Option<Arc<dyn ErasedSession>>,
        /// Connections of the same pool this task holds while it waits for
        /// this one (`requires_new` inside a running transaction).
        holding: u32,
    },
    /// Run in a savepoint of the parent frame's transaction.
    Savepoint(Arc<Frame>),
    /// Run in the parent frame's session as it is.
    Join(Arc<Frame>),
}

/// One transactional call, planned.
pub(crate) struct Call {
    manager: ManagerHandle,
    options: TxOptions,
    name: &'static str,
    head: Option<Arc<Frame>>,
    plan: Plan,
    /// When the call must be over: its own timeout, or the enclosing scope's
    /// deadline if that comes first.
    deadline: Option<Instant>,
    /// The time the call had when it began, under that deadline: what a
    /// timeout reports.
    budget: Option<std::time::Duration>,
    /// Where the call is counted.
    series: Arc<Series>,
}

impl Call {
    fn prepare(manager: Option<ManagerHandle>, options: TxOptions) -> Result<Call, Error> {
        let head = context::head();
        let manager = match manager {
            Some(manager) => manager,
            None => ManagerHandle::resolve_default(head.as_ref())?,
        };
        let plan = plan(&manager, &options, head.as_ref())?;
        // A timeout too far away to be an instant (`Duration::MAX` for "no
        // limit") is no deadline at all.
        let own = options
            .timeout
            .and_then(|timeout| Instant::now().checked_add(timeout));
        let inherited = head.as_ref().and_then(|head| head.deadline);
        let deadline = match (own, inherited) {
            (Some(own), Some(inherited)) => Some(own.min(inherited)),
            (own, inherited) => own.or(inherited),
        };
        let budget = deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()));
        let name = options.name.unwrap_or("transaction");
        Ok(Call {
            series: manager.metrics().series(name),
            manager,
            options,
            name,
            head,
            plan,
            deadline,
            budget,
        })
    }

    /// Whether this call begins the transaction, and so may retry it.
    fn begins_transaction(&self) -> bool {
        matches!(
            self.plan,
            Plan::Open {
                transactional: true,
                ..
            }
        )
    }

    fn timeout_error(&self, attempts: u32) -> Error {
        self.series.add(Count::Timeouts);
        tracing::warn!(
            target: "covet_txn",
            transaction = self.name,
            attempts,
            timeout_ms = self.budget.unwrap_or_default().as_secs_f64() * 1000.0,
            "the transaction's deadline passed; it was rolled back"
        );
        Error::Timeout {
            timeout: self.budget.unwrap_or_default(),
            attempts,
        }
    }

    async fn run<T, E, Fut>(
        &self,
        inspect: Inspect<E>,
        body: Body<Fut>,
        attempt: u32,
    ) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
        E: From<Error>,
    {
        match &self.plan {
            Plan::Open {
                transactional,
                lent_from,
                holding,
            } => {
                let opening = ErasedOpening {
                    name: self.name,
                    options: self.options,
                    transactional: *transactional,
                    lent_from: lent_from.clone(),
                    holding: *holding,
                    attempt,
                    server_timeout: self
                        .deadline
                        .map(|deadline| {
                            deadline.saturating_duration_since(Instant::now())
                                + SERVER_TIMEOUT_GRACE
                        })
                        .filter(|timeout| *timeout <= SERVER_TIMEOUT_LIMIT),
                    series: transactional.then(|| Arc::clone(&self.series)),
                };
                if !*transactional {
                    return self.run_session(opening, inspect, body, attempt).await;
                }
                let span = tracing::info_span!(
                    target: "covet_txn",
                    "transaction",
                    otel.name = self.name,
                    db.system = self.manager.backend(),
                    db.operation.name = "transaction",
                    code.function = self.name,
                    covet.isolation = self.options.isolation.map_or("default", Isolation::name),
                    covet.read_only = self.options.read_only.unwrap_or(false),
                    covet.attempt = attempt,
                    covet.depth = 1,
                    covet.outcome = tracing::field::Empty,
                );
                let result = self
                    .run_session(opening, inspect, body, attempt)
                    .instrument(span.clone())
                    .await;
                span.record(
                    "covet.outcome",
                    if result.is_ok() {
                        "committed"
                    } else {
                        "rolled_back"
                    },
                );
                if let Err(error) = &result {
                    self.count_failure(inspect, error);
                }
                result
            }
            Plan::Savepoint(parent) => {
                let span = tracing::debug_span!(
                    target: "covet_txn",
                    "savepoint",
                    code.function = self.name,
                    covet.depth = parent.depth + 1,
                    covet.outcome = tracing::field::Empty,
                );
                let result = self
                    .run_savepoint(parent, inspect, body)
                    .instrument(span.clone())
                    .await;
                span.record(
                    "covet.outcome",
                    if result.is_ok() {
                        "released"
                    } else {
                        "rolled_back"
                    },
                );
                result
            }
            Plan::Join(parent) => self.run_joined(parent, inspect, body).await,
        }
    }

    /// Counts the kind of a failed attempt (a deadlock, a serialization
    /// failure, ...), if it is one.
    fn count_failure<E>(&self, inspect: Inspect<E>, error: &E) {
        if let Some(kind) = retryable(inspect, error) {
            self.series.add(Count::Failure(kind));
        }
    }

    /// A frame for this call's scope, inside the task's innermost frame
    /// (which may belong to another manager: every manager's frames stay
    /// reachable).
    fn frame(&self, session: &Arc<dyn ErasedSession>, kind: FrameKind, depth: u32) -> Arc<Frame> {
        Arc::new(Frame {
            manager: self.manager.clone(),
            session: Arc::clone(session),
            kind,
            depth,
            name: self.name,
            propagation: self.options.propagation,
            deadline: self.deadline,
            parent: self.head.clone(),
        })
    }

    /// Runs the body in its frame, under the call's deadline if the
    /// enclosing scope does not already impose it. `None`: the deadline
    /// passed and the body was dropped.
    async fn run_body<T, E, Fut>(
        &self,
        frame: Arc<Frame>,
        body: Body<Fut>,
    ) -> Option<std::thread::Result<Result<T, E>>>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let inherited = frame.parent.as_ref().and_then(|parent| parent.deadline);
        let scoped = context::enter(frame, AssertUnwindSafe(body).catch_unwind());
        match self.deadline {
            // An enclosing scope with the same deadline already enforces it.
            Some(deadline) if inherited.is_none_or(|inherited| deadline < inherited) => {
                tokio::time::timeout_at(deadline.into(), scoped).await.ok()
            }
            _ => Some(scoped.await),
        }
    }

    /// Opens a session (a transaction or an autocommit session), runs the
    /// body in it and ends it.
    async fn run_session<T, E, Fut>(
        &self,
        opening: ErasedOpening,
        inspect: Inspect<E>,
        body: Body<Fut>,
        attempt: u32,
    ) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
        E: From<Error>,
    {
        let transactional = opening.transactional;
        let opened = match self.deadline {
            Some(deadline) => tokio::time::timeout_at(deadline.into(), self.manager.open(opening))
                .await
                .unwrap_or_else(|_| Err(self.timeout_error(attempt))),
            None => self.manager.open(opening).await,
        };
        let session = match opened {
            Ok(session) => session,
            Err(error) => return Err(error.into()),
        };
        let (kind, depth) = if transactional {
            (FrameKind::Root, 1)
        } else {
            (FrameKind::Autocommit, 0)
        };
        let frame = self.frame(&session, kind, depth);
        let hooks = transactional.then(|| self.manager.hooks());
        if transactional {
            session.core().hooks.declare(depth, self.options.hooks);
        }
        let guard = CancelGuard {
            session: &session,
            reason: "the transactional call was cancelled before it finished",
            rollback_hooks: hooks.map(|manager| (&frame, manager)),
            armed: true,
        };
        let Some(outcome) = self.run_body(Arc::clone(&frame), body).await else {
            session.abort("the transaction's deadline passed");
            guard.disarm();
            if let Some(manager) = hooks {
                let ending = Ending {
                    session: &session,
                    frame: &frame,
                    manager,
                    series: &self.series,
                };
                ending.after_rollback(RollbackCause::Timeout).await;
            }
            return Err(self.timeout_error(attempt).into());
        };
        let Some(manager) = hooks else {
            // An autocommit session: nothing to commit or roll back.
            guard.disarm();
            end_quietly(session.as_ref(), self.name, &self.series).await;
            return match outcome {
                Ok(result) => result,
                Err(panic) => resume_unwind(panic),
            };
        };
        let ending = Ending {
            session: &session,
            frame: &frame,
            manager,
            series: &self.series,
        };
        let core = session.core();
        let settled = match outcome {
            Ok(Ok(value)) => {
                let refusal = match (core.aborted(), core.doomed(), core.rollback_only()) {
                    // A nested scope was cut off (its deadline, a dropped
                    // future): the connection is gone, COMMIT cannot happen.
                    (Some(reason), _, _) => Some((
                        Error::TransactionAborted(reason),
                        RollbackCause::Aborted(reason),
                    )),
                    (None, Some(kind), _) => {
                        Some((Error::Doomed(kind), RollbackCause::Doomed(kind)))
                    }
                    (None, None, Some(cause)) => Some((
                        Error::RollbackOnly(cause),
                        RollbackCause::RollbackOnly(cause),
                    )),
                    (None, None, None) => None,
                };
                match refusal {
                    Some((error, cause)) => {
                        ending.roll_back(cause).await;
                        Err(error.into())
                    }
                    None => ending.commit(value).await.map_err(E::from),
                }
            }
            Ok(Err(error)) => {
                // Described before awaiting: a borrow of the error held
                // across an await would make the call's future `Send` only
                // for `Sync` error types.
                let cause = ending.describe(|| cause_of(inspect, &error));
                ending.roll_back_described(cause).await;
                Err(error)
            }
            Err(panic) => {
                ending.roll_back(RollbackCause::Panic).await;
                guard.disarm();
                resume_unwind(panic);
            }
        };
        guard.disarm();
        settled
    }

    /// Runs the body in a savepoint of `parent`'s transaction.
    async fn run_savepoint<T, E, Fut>(
        &self,
        parent: &Arc<Frame>,
        inspect: Inspect<E>,
        body: Body<Fut>,
    ) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
        E: From<Error>,
    {
        let claim = match parent.claim_child() {
            Ok(claim) => claim,
            Err(error) => return Err(error.into()),
        };
        let session = Arc::clone(&parent.session);
        let depth = parent.depth + 1;
        let savepoint = SavepointName::Scope(depth);
        let guard = CancelGuard {
            session: &session,
            reason: "a nested transactional scope was cancelled before it finished, leaving the \
                     transaction in an unknown state",
            rollback_hooks: None,
            armed: true,
        };
        if let Err(error) = session.savepoint(SavepointAction::Create, savepoint).await {
            guard.disarm();
            return Err(error.into());
        }
        self.series.add(Count::SavepointsCreated);
        let frame = self.frame(&session, FrameKind::Savepoint, depth);
        session.core().hooks.declare(depth, self.options.hooks);
        let Some(outcome) = self.run_body(Arc::clone(&frame), body).await else {
            session.abort("a nested scope's deadline passed while it ran");
            guard.disarm();
            return Err(self.timeout_error(1).into());
        };
        let scope = ScopeEnding {
            session: session.as_ref(),
            frame: &frame,
            savepoint,
            series: &self.series,
        };
        let settled = match outcome {
            Ok(Ok(value)) => match session.savepoint(SavepointAction::Release, savepoint).await {
                Ok(()) => {
                    session.core().hooks.release_scope(depth);
                    Ok(value)
                }
                // On PostgreSQL a statement error the body swallowed fails
                // the RELEASE; ROLLBACK TO undoes the scope and clears the
                // error, so the caller may carry on without this scope's
                // work (or, if even that fails, cannot commit).
                Err(error) => {
                    match retry::classify(&error) {
                        Some(kind) => session.core().doom(kind),
                        None => {
                            let cause = scope.describe(|| RollbackCause::Error {
                                message: error.to_string(),
                                kind: None,
                            });
                            scope.roll_back(cause).await
                        }
                    }
                    Err(error.into())
                }
            },
            Ok(Err(error)) => {
                match retryable(inspect, &error) {
                    // After a deadlock MySQL has already rolled the whole
                    // transaction back, and only a new attempt can fix a
                    // serialization failure: leave it to the outermost call.
                    Some(kind) => session.core().doom(kind),
                    None => {
                        let cause = scope.describe(|| cause_of(inspect, &error));
                        scope.roll_back(cause).await
                    }
                }
                Err(error)
            }
            Err(panic) => {
                scope
                    .roll_back(scope.describe(|| RollbackCause::Panic))
                    .await;
                guard.disarm();
                drop(claim);
                resume_unwind(panic);
            }
        };
        guard.disarm();
        drop(claim);
        settled
    }

    /// Runs the body in `parent`'s session as it is (`required`,
    /// `mandatory`, `supports`). A failure marks a transaction rollback-only.
    async fn run_joined<T, E, Fut>(
        &self,
        parent: &Arc<Frame>,
        inspect: Inspect<E>,
        body: Body<Fut>,
    ) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
        E: From<Error>,
    {
        let session = Arc::clone(&parent.session);
        let guard = CancelGuard {
            session: &session,
            reason: "a joined transactional scope was cancelled before it finished, leaving the \
                     transaction in an unknown state",
            rollback_hooks: None,
            armed: true,
        };
        let frame = self.frame(&session, FrameKind::Joined, parent.depth);
        let core = session.core();
        if core.transactional {
            core.hooks.declare(parent.depth, self.options.hooks);
        }
        let Some(outcome) = self.run_body(frame, body).await else {
            session.abort("a joined scope's deadline passed while it ran");
            guard.disarm();
            return Err(self.timeout_error(1).into());
        };
        guard.disarm();
        if core.transactional {
            let failed = RollbackOnlyCause::JoinedScopeFailed { scope: self.name };
            match &outcome {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => match retryable(inspect, error) {
                    Some(kind) => core.doom(kind),
                    None => core.mark_rollback_only(failed),
                },
                Err(_) => core.mark_rollback_only(failed),
            }
        }
        match outcome {
            Ok(result) => result,
            Err(panic) => resume_unwind(panic),
        }
    }
}

/// The end of a transaction that began in this call: hooks around COMMIT
/// and ROLLBACK.
struct Ending<'a> {
    session: &'a Arc<dyn ErasedSession>,
    frame: &'a Arc<Frame>,
    manager: &'a ManagerHooks,
    series: &'a Arc<Series>,
}

impl Ending<'_> {
    fn has_hooks(&self) -> bool {
        !self.session.core().hooks.is_empty() || !self.manager.is_empty()
    }

    fn phase(&self, outcome: TxOutcome, cause: Option<RollbackCause>) -> PhaseRun<'_> {
        PhaseRun {
            hooks: &self.session.core().hooks,
            manager: Some(self.manager),
            series: Some(self.series),
            event: TxEvent::new(&self.frame.info(), outcome, cause),
        }
    }

    /// before_commit hooks, COMMIT, on_commit hooks.
    async fn commit<T>(&self, value: T) -> Result<T, Error> {
        if self.has_hooks() {
            let before = self.phase(TxOutcome::Committed, None);
            let ran = context::enter(
                Arc::clone(self.frame),
                before.run(Phase::BeforeCommit, true),
            )
            .await;
            if let Err(failure) = ran {
                self.roll_back(RollbackCause::HookFailed(failure.error.to_string()))
                    .await;
                return Err(failure.into());
            }
        }
        self.session.core().seal_fate();
        let ended = self.session.end(true).await;
        if matches!(ended, Err(Error::AmbiguousCommit { .. })) {
            self.series.add(Count::AmbiguousCommits);
        }
        match ended {
            Ok(()) => {}
            Err(Error::AmbiguousCommit {
                outcome: CommitOutcome::Committed,
                transaction_id,
            }) => {
                tracing::warn!(
                    target: "covet_txn",
                    transaction = self.frame.name,
                    transaction_id,
                    "the connection failed during COMMIT; the server confirms the transaction committed"
                );
            }
            Err(
                error @ Error::AmbiguousCommit {
                    outcome: CommitOutcome::Unknown,
                    ..
                },
            ) => {
                // Neither committed nor rolled back, as far as anyone knows:
                // hooks run exactly once or not at all.
                self.session.core().hooks.clear();
                return Err(error);
            }
            Err(error) => {
                self.after_rollback(RollbackCause::CommitFailed(error.to_string()))
                    .await;
                return Err(error);
            }
        }
        if self.has_hooks() {
            self.after_end(
                Phase::AfterCommit,
                TxEvent::new(&self.frame.info(), TxOutcome::Committed, None),
            )
            .await;
        }
        Ok(value)
    }

    /// before_rollback hooks, ROLLBACK, on_rollback hooks.
    async fn roll_back(&self, cause: RollbackCause) {
        self.roll_back_described(self.has_hooks().then_some(cause))
            .await;
    }

    /// The cause of a rollback, described only if a hook will read it.
    fn describe(&self, cause: impl FnOnce() -> RollbackCause) -> Option<RollbackCause> {
        self.has_hooks().then(cause)
    }

    /// Like `roll_back`, with the cause from `describe`.
    async fn roll_back_described(&self, cause: Option<RollbackCause>) {
        if let Some(cause) = &cause {
            let before = self.phase(TxOutcome::RolledBack, Some(cause.clone()));
            let _ = context::enter(
                Arc::clone(self.frame),
                before.run(Phase::BeforeRollback, false),
            )
            .await;
        }
        let failed = end_quietly(self.session.as_ref(), self.frame.name, self.series).await;
        if let Some(cause) = cause {
            self.after_rollback_failed(cause, failed).await;
        }
    }

    /// on_rollback hooks, after the transaction is gone.
    async fn after_rollback(&self, cause: RollbackCause) {
        self.after_rollback_failed(cause, None).await;
    }

    /// on_rollback hooks, after a rollback that may have failed.
    async fn after_rollback_failed(&self, cause: RollbackCause, failed: Option<Arc<Error>>) {
        self.session.core().seal_fate();
        if self.has_hooks() {
            let mut event = TxEvent::new(&self.frame.info(), TxOutcome::RolledBack, Some(cause));
            event.rollback_error = failed;
            self.after_end(Phase::AfterRollback, event).await;
        }
    }

    /// The hooks of a phase after the end, run to completion even if the
    /// call's future is dropped meanwhile.
    fn after_end(&self, phase: Phase, event: TxEvent) -> hooks::RunToCompletion {
        hooks::after_end(
            phase,
            Arc::clone(self.session),
            self.manager.clone(),
            Some(Arc::clone(self.series)),
            event,
        )
    }
}

/// The end of a savepoint scope that failed.
struct ScopeEnding<'a> {
    session: &'a dyn ErasedSession,
    frame: &'a Arc<Frame>,
    savepoint: SavepointName<'static>,
    series: &'a Arc<Series>,
}

impl ScopeEnding<'_> {
    /// The cause of the scope's rollback, described only if a hook will
    /// read it.
    fn describe(&self, cause: impl FnOnce() -> RollbackCause) -> Option<RollbackCause> {
        (!self.session.core().hooks.is_empty()).then(cause)
    }

    /// The scope's before_rollback hooks, ROLLBACK TO SAVEPOINT, its
    /// on_rollback hooks; its other hooks are discarded. `cause` comes from
    /// `describe`.
    async fn roll_back(&self, cause: Option<RollbackCause>) {
        self.series.add(Count::SavepointsRolledBack);
        let mut run = cause.map(|cause| PhaseRun {
            hooks: &self.session.core().hooks,
            manager: None,
            series: Some(self.series),
            event: TxEvent::new(&self.frame.info(), TxOutcome::RolledBack, Some(cause)),
        });
        if let Some(run) = &run {
            context::enter(
                Arc::clone(self.frame),
                run.run_scope_before_rollback(self.frame.depth),
            )
            .await;
        }
        let failed =
            roll_back_savepoint(self.session, self.savepoint, self.frame.name, self.series).await;
        if let Some(run) = &mut run {
            run.event.rollback_error = failed;
            run.run_scope_after_rollback(self.frame.depth).await;
        }
    }
}

/// Why the body's error rolled the transaction back, for hooks.
fn cause_of<E>(inspect: Inspect<E>, error: &E) -> RollbackCause {
    match inspect(error) {
        Some(source) => RollbackCause::Error {
            message: source.to_string(),
            kind: retry::classify(source),
        },
        None => RollbackCause::Error {
            message: "the function returned an error".to_owned(),
            kind: None,
        },
    }
}

/// The retryable failure inside a user's error, if any.
fn retryable<E>(inspect: Inspect<E>, error: &E) -> Option<retry::FailureKind> {
    inspect(error).and_then(retry::classify)
}

/// Runs `body` as one transactional call on `manager` (the default if
/// `None`), without retrying.
pub(crate) async fn run<T, E, Fut>(
    manager: Option<ManagerHandle>,
    options: TxOptions,
    inspect: Inspect<E>,
    body: Body<Fut>,
) -> Result<T, E>
where
    Fut: Future<Output = Result<T, E>>,
    E: From<Error>,
{
    match Call::prepare(manager, options) {
        Ok(call) => {
            let result = call.run(inspect, body, 1).await;
            if result.is_err() && call.begins_transaction() {
                call.series.add(Count::Failed);
            }
            result
        }
        Err(error) => Err(error.into()),
    }
}

/// The attempts of a retrying call. The caller builds a fresh body for each
/// attempt and calls [`Attempts::attempt`] until it returns a result.
pub(crate) struct Attempts {
    manager: Option<ManagerHandle>,
    options: TxOptions,
    call: Option<(Call, RetryPolicy)>,
    attempts: u32,
}

impl Attempts {
    pub(crate) fn new(manager: Option<ManagerHandle>, options: TxOptions) -> Self {
        Attempts {
            manager,
            options,
            call: None,
            attempts: 0,
        }
    }

    /// Runs one attempt. `None`: it failed in a way a retry may fix, and the
    /// wait before the next attempt is over.
    pub(crate) async fn attempt<T, E, Fut>(
        &mut self,
        inspect: Inspect<E>,
        body: Body<Fut>,
    ) -> Option<Result<T, E>>
    where
        Fut: Future<Output = Result<T, E>>,
        E: From<Error>,
    {
        if self.call.is_none() {
            let prepared = Call::prepare(self.manager.take(), self.options);
            match prepared {
                Ok(call) => {
                    let policy = call
                        .manager
                        .retry_policy()
                        .overridden_by(&self.options.retry);
                    self.call = Some((call, policy));
                }
                Err(error) => return Some(Err(error.into())),
            }
        }
        let (call, policy) = self.call.as_ref()?;
        self.attempts += 1;
        let attempt = self.attempts;
        if !call.begins_transaction() {
            // Inside a running transaction only the outermost call retries:
            // a retryable error goes up to it.
            return Some(call.run(inspect, body, attempt).await);
        }
        let error = match call.run(inspect, body, attempt).await {
            Ok(value) => return Some(Ok(value)),
            Err(error) => error,
        };
        let wait = match decide(call, policy, inspect, error, attempt) {
            Decision::Retry(wait) => wait,
            Decision::GiveUp(error) => {
                call.series.add(Count::Failed);
                return Some(Err(error));
            }
        };
        tokio::time::sleep(wait).await;
        None
    }
}

/// What to do after a failed attempt.
enum Decision<E> {
    /// Run again after this wait.
    Retry(std::time::Duration),
    /// Return this error.
    GiveUp(E),
}

/// Decides, without awaiting anything (the error is borrowed throughout, and
/// a borrowed `dyn Error` must not live across an await point of a future
/// that is to be `Send`).
fn decide<E: From<Error>>(
    call: &Call,
    policy: &RetryPolicy,
    inspect: Inspect<E>,
    error: E,
    attempt: u32,
) -> Decision<E> {
    let Some(source) = inspect(&error) else {
        return Decision::GiveUp(error);
    };
    let failure = retry::failure(source, attempt);
    if retry::never_retried(source) || !policy.should_retry(&failure) {
        return Decision::GiveUp(error);
    }
    if attempt > policy.max_retries() {
        call.series.add(Count::RetriesExhausted);
        let last = LastFailure::new(&failure);
        return Decision::GiveUp(
            Error::RetriesExhausted {
                attempts: attempt,
                last,
            }
            .into(),
        );
    }
    let wait = policy.delay(attempt);
    if call.deadline.is_some_and(|deadline| {
        Instant::now()
            .checked_add(wait)
            .is_none_or(|resumed| resumed >= deadline)
    }) {
        return Decision::GiveUp(call.timeout_error(attempt).into());
    }
    tracing::info!(
        target: "covet_txn",
        transaction = call.name,
        attempt,
        cause = failure.kind().map_or("predicate", |kind| kind.name()),
        wait_ms = wait.as_secs_f64() * 1000.0,
        "retrying the transaction"
    );
    call.series.add(Count::Retries);
    Decision::Retry(wait)
}

fn plan(
    manager: &ManagerHandle,
    options: &TxOptions,
    head: Option<&Arc<Frame>>,
) -> Result<Plan, Error> {
    let running = head.and_then(|head| Frame::innermost_of(head, manager.id()));
    let propagation = options.propagation;
    let Some(running) = running else {
        return match propagation {
            Propagation::Nested | Propagation::Required | Propagation::RequiresNew => {
                Ok(Plan::Open {
                    transactional: true,
                    lent_from: None,
                    holding: 0,
                })
            }
            Propagation::Mandatory => Err(Error::NoTransaction),
            Propagation::Never | Propagation::Supports => Ok(Plan::Open {
                transactional: false,
                lent_from: None,
                holding: 0,
            }),
        };
    };
    if propagation == Propagation::RequiresNew {
        let held = head.map_or(0, |head| head.connections_held(manager.id()));
        let max = manager.max_connections();
        if held >= max {
            return Err(Error::PoolExhaustedByNesting { held, max });
        }
        return Ok(Plan::Open {
            transactional: true,
            lent_from: None,
            holding: held,
        });
    }
    if !running.session.core().transactional {
        return match propagation {
            Propagation::Mandatory => Err(Error::NoTransaction),
            Propagation::Never | Propagation::Supports => Ok(Plan::Join(running)),
            _ => Ok(Plan::Open {
                transactional: true,
                lent_from: Some(Arc::clone(&running.session)),
                holding: 0,
            }),
        };
    }
    match propagation {
        Propagation::Never => Err(Error::TransactionActive(propagation)),
        Propagation::Nested => {
            check_compatible(running.session.as_ref(), options)?;
            Ok(Plan::Savepoint(running))
        }
        _ => {
            check_compatible(running.session.as_ref(), options)?;
            Ok(Plan::Join(running))
        }
    }
}

/// A call inside a running transaction may not ask for another isolation
/// level or access mode: the server fixed both at BEGIN.
fn check_compatible(session: &dyn ErasedSession, options: &TxOptions) -> Result<(), Error> {
    let core = session.core();
    if let Some(requested) = options.isolation
        && core.isolation != Some(requested)
    {
        return Err(Error::IsolationMismatch {
            running: core.isolation,
            requested,
        });
    }
    if let Some(read_only) = options.read_only
        && read_only != core.read_only
    {
        return Err(Error::AccessModeMismatch {
            requested_read_only: read_only,
        });
    }
    Ok(())
}

/// Aborts the session if the scope's future is dropped before it settles,
/// and for a transaction that began in the scope, runs its on_rollback hooks
/// on the runtime, if one is left to run them.
struct CancelGuard<'a> {
    session: &'a Arc<dyn ErasedSession>,
    reason: &'static str,
    rollback_hooks: Option<(&'a Arc<Frame>, &'a ManagerHooks)>,
    armed: bool,
}

impl CancelGuard<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.session.abort(self.reason);
        let Some((frame, manager)) = self.rollback_hooks else {
            return;
        };
        let core = self.session.core();
        // Cut off once COMMIT was sent, the transaction may have committed;
        // cut off during on_commit or on_rollback hooks, those finish on
        // their own. Either way no on_rollback hook is owed here.
        if core.fate_sealed() || (core.hooks.is_empty() && manager.is_empty()) {
            return;
        }
        core.seal_fate();
        let event = TxEvent::new(
            &frame.info(),
            TxOutcome::RolledBack,
            Some(RollbackCause::Cancelled),
        );
        // Dropped at once: outside a runtime it does nothing, inside one it
        // runs the hooks in a task of their own.
        drop(hooks::after_end(
            Phase::AfterRollback,
            Arc::clone(self.session),
            manager.clone(),
            None,
            event,
        ));
    }
}

/// Rolls back after the body failed. A failure to roll back must not hide
/// the body's own error; the connection is abandoned either way. A ROLLBACK
/// that failed is counted and returned, for the on_rollback hooks.
async fn end_quietly(
    session: &dyn ErasedSession,
    name: &'static str,
    series: &Series,
) -> Option<Arc<Error>> {
    let error = session.end(false).await.err()?;
    tracing::warn!(
        target: "covet_txn",
        transaction = name,
        %error,
        "rollback failed; the connection was closed, so the server rolls back"
    );
    let statement_failed = matches!(
        error,
        Error::Database {
            operation: Operation::Rollback,
            ..
        }
    );
    statement_failed.then(|| {
        series.add(Count::RollbackFailures);
        Arc::new(error)
    })
}

/// Undoes a failed nested scope. If even that fails, the transaction can no
/// longer be trusted to commit: a failure that a new attempt can fix (the
/// connection lost, a deadlock) dooms it, so that the outermost call retries;
/// any other marks it rollback-only.
async fn roll_back_savepoint(
    session: &dyn ErasedSession,
    savepoint: SavepointName<'_>,
    scope: &'static str,
    series: &Series,
) -> Option<Arc<Error>> {
    let error = session
        .savepoint(SavepointAction::RollbackAndRelease, savepoint)
        .await
        .err()?;
    series.add(Count::RollbackFailures);
    let core = session.core();
    match retry::classify(&error) {
        Some(kind) => core.doom(kind),
        None => core.mark_rollback_only(RollbackOnlyCause::SavepointRollbackFailed { scope }),
    }
    tracing::warn!(
        target: "covet_txn",
        transaction = core.name,
        scope,
        %error,
        "rolling back to a savepoint failed; the transaction cannot commit"
    );
    Some(Arc::new(error))
}
