//! One two-phase call: its attempts, each opening a branch on every
//! participant, running the body over them, preparing them all (phase one,
//! under the call's deadline), recording the decision, and committing them
//! all (phase two, in a task of its own that nothing cancels).

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use futures_util::FutureExt;
use tracing::Instrument;

use super::branches::Branches;
use super::finish::{decide_and_commit, roll_back_all};
use super::stats::TwoPhaseOutcome;
use super::{Coordinator, TwoPhaseOptions, ids};
use crate::backend::find_database_error;
use crate::call::Inspect;
use crate::call::settle::refusal;
use crate::context::{self, Frame, FrameKind};
use crate::dialect::BranchId;
use crate::engine::OpenRequest;
use crate::error::Error;
use crate::event::{Phase, RollbackCause, TxEvent, TxOutcome};
use crate::failure::{Failure, FailureKind};
use crate::hooks::run::PhaseRun;
use crate::observe::Observer;
use crate::options::Propagation;
use crate::request::TxOptions;
use crate::session::CommitError;

/// How phase one ended, short of every branch prepared.
enum Stopped<E> {
    /// The body or a step failed; `kind` is the retryable failure in it.
    Failed(E, RollbackCause, Option<FailureKind>),
    Panicked(Box<dyn Any + Send>),
    TimedOut,
}

/// The attempts of one two-phase call: the closure API's loop and the
/// code `#[transactional(two_phase = ..)]` generates build a fresh body for
/// each.
pub(crate) struct Attempts {
    coordinator: Arc<Coordinator>,
    options: TwoPhaseOptions,
    deadline: Option<Instant>,
    attempt: u32,
}

impl Attempts {
    pub(crate) fn new(coordinator: Arc<Coordinator>, options: TwoPhaseOptions) -> Self {
        let deadline = options
            .timeout
            .and_then(|timeout| Instant::now().checked_add(timeout));
        Attempts {
            coordinator,
            options,
            deadline,
            attempt: 1,
        }
    }

    /// Runs the current attempt.
    async fn run<T, E, Fut>(&self, inspect: Inspect<E>, body: Fut) -> Attempted<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
        E: From<Error>,
    {
        run_attempt(
            &self.coordinator,
            &self.options,
            self.deadline,
            self.attempt,
            inspect,
            body,
        )
        .await
    }

    /// Runs the only attempt of a call without retries.
    pub(crate) async fn only<T, E, Fut>(&mut self, inspect: Inspect<E>, body: Fut) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
        E: From<Error>,
    {
        let outcome = self.run(inspect, body).await;
        match outcome {
            Attempted::Done(result) => result,
            Attempted::Retryable(error, _) => Err(error),
        }
    }

    /// Runs one attempt; `None`: it failed in a way a new attempt can fix,
    /// the backoff has passed, and the caller builds the body again.
    pub(crate) async fn attempt<T, E, Fut>(
        &mut self,
        inspect: Inspect<E>,
        body: Fut,
    ) -> Option<Result<T, E>>
    where
        Fut: Future<Output = Result<T, E>>,
        E: From<Error>,
    {
        let attempt = self.attempt;
        let outcome = self.run(inspect, body).await;
        let (error, kind) = match outcome {
            Attempted::Done(result) => return Some(result),
            Attempted::Retryable(error, kind) => (error, kind),
        };
        // Decided in a block: a borrow of the error held across the wait
        // would make the call's future `Send` only for `Sync` error types.
        let retry = {
            let failure = inspect(&error).map(|source| Failure {
                error: source,
                kind,
                database: find_database_error(source),
                attempt,
            });
            attempt <= self.options.retry.max_retries()
                && failure.is_some_and(|failure| self.options.retry.should_retry(&failure))
        };
        if !retry {
            return Some(Err(error));
        }
        let wait = self.options.retry.delay(attempt);
        if self
            .deadline
            .is_some_and(|deadline| Instant::now() + wait >= deadline)
        {
            return Some(Err(Error::Timeout {
                timeout: self.options.timeout.unwrap_or_default(),
                attempts: attempt,
            }
            .into()));
        }
        tracing::debug!(attempt, ?wait, "two-phase call retrying");
        tokio::time::sleep(wait).await;
        self.attempt += 1;
        None
    }
}

enum Attempted<T, E> {
    Done(Result<T, E>),
    Retryable(E, Option<FailureKind>),
}

async fn run_attempt<T, E, Fut>(
    coordinator: &Arc<Coordinator>,
    options: &TwoPhaseOptions,
    deadline: Option<Instant>,
    attempt: u32,
    inspect: Inspect<E>,
    body: Fut,
) -> Attempted<T, E>
where
    Fut: Future<Output = Result<T, E>>,
    E: From<Error>,
{
    let global = ids::new_global(&coordinator.name);
    let mut branches = Branches {
        coordinator: Arc::clone(coordinator),
        global: global.clone(),
        frames: Vec::with_capacity(coordinator.participants.len()),
        observers: Vec::with_capacity(coordinator.participants.len()),
        armed: true,
    };
    let phase_one = phase_one(options, deadline, attempt, &mut branches, inspect, body).instrument(
        tracing::info_span!(
            "two_phase.phase_one",
            covet.coordinator = %coordinator.name,
            covet.global_id = %global,
            covet.attempt = attempt,
        ),
    );
    let ended = match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline.into(), phase_one)
            .await
            .unwrap_or(Err(Stopped::TimedOut)),
        None => phase_one.await,
    };
    let value = match ended {
        Ok(value) => value,
        Err(stopped) => {
            let (cause, result) = match stopped {
                Stopped::Failed(error, cause, kind) => (cause, Attempted::Retryable(error, kind)),
                Stopped::Panicked(panic) => {
                    roll_back_all(&mut branches, RollbackCause::Panic).await;
                    std::panic::resume_unwind(panic);
                }
                Stopped::TimedOut => (
                    RollbackCause::Timeout,
                    Attempted::Done(Err(Error::Timeout {
                        timeout: options.timeout.unwrap_or_default(),
                        attempts: attempt,
                    }
                    .into())),
                ),
            };
            roll_back_all(&mut branches, cause).await;
            coordinator.counters.count(TwoPhaseOutcome::RolledBack);
            return result;
        }
    };
    let value = match value {
        Some(value) => value,
        None => {
            roll_back_all(&mut branches, RollbackCause::Requested).await;
            coordinator.counters.count(TwoPhaseOutcome::RolledBack);
            return Attempted::Done(Err(Error::TransactionAborted(
                "a scope of the two-phase call asked to roll back",
            )
            .into()));
        }
    };
    Attempted::Done(
        decide_and_commit(coordinator, &global, branches)
            .await
            .map(|()| value)
            .map_err(E::from),
    )
}

/// Opens every branch, runs the body over them, runs the before_commit
/// hooks and prepares every branch. `Ok(None)`: a scope asked to roll back.
async fn phase_one<T, E, Fut>(
    options: &TwoPhaseOptions,
    deadline: Option<Instant>,
    attempt: u32,
    branches: &mut Branches,
    inspect: Inspect<E>,
    body: Fut,
) -> Result<Option<T>, Stopped<E>>
where
    Fut: Future<Output = Result<T, E>>,
    E: From<Error>,
{
    let coordinator = Arc::clone(&branches.coordinator);
    let global = branches.global.clone();
    let failed = |error: Error| {
        let kind = error.own_failure_kind();
        let cause = RollbackCause::Error {
            message: error.to_string(),
            kind,
        };
        Stopped::Failed(E::from(error), cause, kind)
    };
    let head = context::head();
    for participant in &coordinator.participants {
        if head
            .as_ref()
            .is_some_and(|head| Frame::innermost_of(head, participant.engine.id()).is_some())
        {
            return Err(failed(Error::InvalidOption(format!(
                "a two-phase call cannot run inside a transaction of its participant `{}`: \
                 call it where no transaction of that manager is open",
                participant.name
            ))));
        }
    }
    let mut parent = head;
    for participant in &coordinator.participants {
        let observer = Observer::new(participant.engine.metrics(), options.name);
        let server_timeout = deadline.map(|deadline| {
            deadline.saturating_duration_since(Instant::now())
                + crate::backend::SERVER_TIMEOUT_GRACE
        });
        let mut request = TxOptions::new().name(options.name);
        if let Some(isolation) = options.isolation {
            request = request.isolation(isolation);
        }
        let opened = participant
            .engine
            .open(OpenRequest {
                name: options.name,
                options: request,
                transactional: true,
                lent_from: None,
                holding: 0,
                attempt,
                server_timeout: server_timeout
                    .filter(|timeout| *timeout <= crate::backend::SERVER_TIMEOUT_LIMIT),
                observer: Some(observer.clone()),
                branch: Some(BranchId::new(global.to_owned(), participant.name.clone())),
            })
            .await;
        let session = match opened {
            Ok(session) => session,
            Err(error) => {
                let kind = participant.engine.classify(&error);
                let cause = RollbackCause::Error {
                    message: error.to_string(),
                    kind,
                };
                return Err(Stopped::Failed(E::from(error), cause, kind));
            }
        };
        let frame = Arc::new(Frame {
            engine: participant.engine.clone(),
            session,
            kind: FrameKind::Root,
            depth: 1,
            name: options.name,
            propagation: Propagation::Required,
            deadline,
            test: false,
            rollback_requested: AtomicBool::new(false),
            parent: parent.clone(),
        });
        parent = Some(Arc::clone(&frame));
        branches.frames.push(frame);
        branches.observers.push(observer);
    }
    let innermost = branches.frames.last().map(Arc::clone).ok_or_else(|| {
        failed(Error::InvalidOption(
            "a two-phase call has no participant".to_owned(),
        ))
    })?;
    let returned = context::enter(innermost, AssertUnwindSafe(body).catch_unwind()).await;
    let value = match returned {
        Err(panic) => return Err(Stopped::Panicked(panic)),
        Ok(Err(error)) => {
            let source = inspect(&error);
            let kind = source.and_then(|source| {
                branches
                    .frames
                    .iter()
                    .find_map(|frame| frame.engine.classify(source))
            });
            let cause = RollbackCause::Error {
                message: source.map_or_else(
                    || "the function returned an error".to_owned(),
                    ToString::to_string,
                ),
                kind,
            };
            return Err(Stopped::Failed(error, cause, kind));
        }
        Ok(Ok(value)) => value,
    };
    if branches
        .frames
        .iter()
        .any(|frame| frame.rollback_requested())
    {
        return Ok(None);
    }
    for (frame, observer) in branches.frames.iter().zip(&branches.observers) {
        if let Some((error, cause)) = refusal(frame.session.core().machine.verdict()) {
            return Err(Stopped::Failed(E::from(error), cause, None));
        }
        let before = PhaseRun {
            hooks: &frame.session.core().hooks,
            manager: Some(frame.engine.hooks()),
            observer: Some(observer),
            event: TxEvent::new(&frame.info(), TxOutcome::Committed, None),
        };
        if let Err(failure) =
            context::enter(Arc::clone(frame), before.run(Phase::BeforeCommit, true)).await
        {
            let error = Error::from(failure);
            let kind = frame.engine.classify(&error);
            let cause = RollbackCause::HookFailed(error.to_string());
            return Err(Stopped::Failed(E::from(error), cause, kind));
        }
        if frame.rollback_requested() {
            return Ok(None);
        }
    }
    for (index, frame) in branches.frames.iter().enumerate() {
        let prepared = frame.session.prepare().await;
        let error = match prepared {
            Ok(()) => {
                coordinator.step("prepared", index);
                continue;
            }
            Err(CommitError::Refused(verdict)) => refusal(verdict).map_or(
                Error::TransactionAborted("it was refused at PREPARE"),
                |(error, _)| error,
            ),
            Err(CommitError::Failed(error)) => error,
        };
        let kind = frame.engine.classify(&error);
        let cause = RollbackCause::CommitFailed(error.to_string());
        return Err(Stopped::Failed(E::from(error), cause, kind));
    }
    Ok(Some(value))
}
