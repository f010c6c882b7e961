//! The attempts of a call: run it once, or, with `retry`, again after a
//! failure a new attempt can fix, with backoff, until it succeeds, the
//! retries run out, or the deadline comes.
//!
//! Only the call that begins a transaction retries; inside a running
//! transaction a retryable error goes up to the outermost call.

use std::future::Future;
use std::pin::pin;
use std::time::Instant;

use futures_util::FutureExt;
use futures_util::future::{Either, ready};

use super::Call;
use super::enter::{Entry, Own, Way};
use crate::backend;
use crate::boxed;
use crate::engine::EngineHandle;
use crate::error::{self, Error, Operation};
use crate::failure::{Failure, FailureKind, LastFailure};
use crate::observe::RetryWait;
use crate::request::CallOptions;
use crate::retry::RetryPolicy;
use crate::session::PrimaryEpoch;

use super::Inspect;

/// Runs `body` as one call on `manager` (the default if `None`), without
/// retrying. Planned when called (in the caller's task): a call that opens a
/// session of its own is boxed once, body and all; a nested call boxes only
/// its body, so that the caller's future holds a pointer either way.
pub(crate) fn run_once<T, E, Fut>(
    manager: Option<EngineHandle>,
    options: CallOptions<E>,
    inspect: Inspect<E>,
    body: Fut,
) -> impl Future<Output = Result<T, E>>
where
    Fut: Future<Output = Result<T, E>>,
    E: From<Error>,
{
    let call = match Call::prepare(manager, options, inspect) {
        Ok(call) => call,
        Err(error) => return Either::Right(Either::Right(ready(Err(error.into())))),
    };
    match call.way() {
        Way::Own(own) => Either::Left(boxed::pinned(|| finish_own(call, own, body))),
        Way::Within(within) => Either::Right(Either::Left(finish(call, within, Box::pin(body)))),
    }
}

/// Admits the call, runs it and tells its function how it ended.
async fn finish_own<T, E, Fut>(call: Call<E>, own: Own, body: Fut) -> Result<T, E>
where
    Fut: Future<Output = Result<T, E>>,
    E: From<Error>,
{
    if let Err(error) = call.admit(1).await {
        call.observer().call_failed();
        return Err(error.into());
    }
    let epoch = call.engine().primary_epoch();
    let result = call.run(own, pin!(body.fuse()), 1).await;
    call.end_turns(result.as_ref().err());
    if let Some(epoch) = failed_in_the_end(&call, epoch, &result) {
        // For the next call; this one's error says what happened to it.
        let _ = call.engine().rediscover(&epoch).await;
    }
    result
}

async fn finish<W: Entry, T, E, Fut>(call: Call<E>, way: W, body: Fut) -> Result<T, E>
where
    Fut: Future<Output = Result<T, E>>,
    E: From<Error>,
{
    let epoch = call.engine().primary_epoch();
    let result = call.run(way, pin!(body.fuse()), 1).await;
    if let Some(epoch) = failed_in_the_end(&call, epoch, &result) {
        let _ = call.engine().rediscover(&epoch).await;
    }
    result
}

/// Counts a call that returned an error that did not commit, and returns
/// the epoch to find the primary again from when its host may be gone.
/// Decided without awaiting: a borrow of the error held across an await
/// would make the call's future `Send` only for `Sync` error types.
fn failed_in_the_end<T, E: From<Error>>(
    call: &Call<E>,
    epoch: Option<PrimaryEpoch>,
    result: &Result<T, E>,
) -> Option<PrimaryEpoch> {
    match result {
        Err(error) if call.begins_transaction() && !call.commits_on(error) => {
            call.observer().call_failed();
            moved(call, epoch, error)
        }
        _ => None,
    }
}

/// The attempts of a retrying call. The caller builds a fresh body for each
/// attempt and calls [`Attempts::attempt`] until it returns a result.
pub(crate) struct Attempts<E> {
    manager: Option<EngineHandle>,
    options: CallOptions<E>,
    call: Option<(Call<E>, RetryPolicy)>,
    attempts: u32,
}

impl<E: From<Error>> Attempts<E> {
    pub(crate) fn new(manager: Option<EngineHandle>, options: CallOptions<E>) -> Self {
        Attempts {
            manager,
            options,
            call: None,
            attempts: 0,
        }
    }

    /// Runs one attempt, with `inspect` finding the error inside `E`.
    /// `None`: it failed in a way a retry may fix, and the wait before the
    /// next attempt is over. Boxed as `run_once` boxes a call.
    pub(crate) fn attempt<T, Fut>(
        &mut self,
        inspect: Inspect<E>,
        body: Fut,
    ) -> impl Future<Output = Option<Result<T, E>>>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let planned = match self.call.take() {
            Some(planned) => planned,
            None => match Call::prepare(self.manager.take(), self.options, inspect) {
                Ok(call) => {
                    let policy = call
                        .engine()
                        .retry_policy()
                        .overridden_by(&self.options.options.retry);
                    (call, policy)
                }
                Err(error) => return Either::Right(Either::Right(ready(Some(Err(error.into()))))),
            },
        };
        let (call, policy) = &*self.call.insert(planned);
        self.attempts += 1;
        let attempt = self.attempts;
        match call.way() {
            Way::Own(own) => Either::Left(boxed::pinned(|| {
                attempt_own(call, policy, own, body, attempt)
            })),
            // Inside a running transaction only the outermost call retries: a
            // retryable error goes up to it.
            Way::Within(within) => Either::Right(Either::Left(async move {
                Some(
                    call.run(within, Box::pin(body.fuse()).as_mut(), attempt)
                        .await,
                )
            })),
        }
    }
}

/// One attempt of a call that opens its own session, admitted first, and
/// the wait after it if it is to be retried: its backoff, or nothing when
/// the retry will wait for its function's next turn instead.
async fn attempt_own<T, E, Fut>(
    call: &Call<E>,
    policy: &RetryPolicy,
    own: Own,
    body: Fut,
    attempt: u32,
) -> Option<Result<T, E>>
where
    Fut: Future<Output = Result<T, E>>,
    E: From<Error>,
{
    if let Err(error) = call.admit(attempt).await {
        call.observer().call_failed();
        return Some(Err(error.into()));
    }
    let epoch = call.engine().primary_epoch();
    let result = call.run(own, pin!(body.fuse()), attempt).await;
    // A retry that would wait for its function's next turn waits for it,
    // ahead of first attempts, instead of sleeping; with a turn free at
    // once there is no queue to go ahead of, and skipping the backoff would
    // only make it compete again at once.
    let in_lane = call.end_turns(result.as_ref().err());
    let error = match result {
        Ok(value) => return Some(Ok(value)),
        Err(error) => error,
    };
    if !call.begins_transaction() {
        return Some(Err(error));
    }
    let moved = moved(call, epoch, &error);
    let wait = match decide(call, policy, error, attempt, in_lane) {
        Decision::Retry(wait) => {
            if let Some(epoch) = moved
                && let Err(error) = call.engine().rediscover(&epoch).await
            {
                return Some(Err(error.into()));
            }
            wait
        }
        Decision::GiveUp(error) => {
            if let Some(epoch) = moved {
                // The call's own error says what happened to it.
                let _ = call.engine().rediscover(&epoch).await;
            }
            if !call.commits_on(&error) {
                call.observer().call_failed();
            }
            return Some(Err(error));
        }
    };
    if let RetryWait::Backoff(backoff) = wait {
        tokio::time::sleep(backoff).await;
    }
    None
}

/// What to do after a failed attempt.
enum Decision<E> {
    /// Run again after this wait.
    Retry(RetryWait),
    /// Return this error.
    GiveUp(E),
}

/// Decides, without awaiting anything (the error is borrowed throughout, and
/// a borrowed `dyn Error` must not live across an await point of a future
/// that is to be `Send`). A retry `in_lane` waits for its function's next
/// turn, ahead of first attempts, instead of sleeping a backoff.
fn decide<E: From<Error>>(
    call: &Call<E>,
    policy: &RetryPolicy,
    error: E,
    attempt: u32,
    in_lane: bool,
) -> Decision<E> {
    if call.commits_on(&error) {
        return Decision::GiveUp(error);
    }
    let Some(source) = (call.inspect())(&error) else {
        return Decision::GiveUp(error);
    };
    let failure = Failure {
        error: source,
        kind: call.classify(source),
        database: backend::find_database_error(source),
        attempt,
    };
    if error::never_retried(source) || !policy.should_retry(&failure) {
        return Decision::GiveUp(error);
    }
    if attempt > policy.max_retries() {
        call.observer().retries_exhausted();
        let last = LastFailure::new(&failure);
        return Decision::GiveUp(
            Error::RetriesExhausted {
                attempts: attempt,
                last,
            }
            .into(),
        );
    }
    let wait = if in_lane {
        RetryWait::InLane
    } else {
        RetryWait::Backoff(policy.delay(attempt))
    };
    // A wait for a turn counts against the deadline while it lasts.
    if let (RetryWait::Backoff(backoff), Some(deadline)) = (wait, call.deadline())
        && Instant::now()
            .checked_add(backoff)
            .is_none_or(|resumed| resumed >= deadline)
    {
        return Decision::GiveUp(call.timeout_error(attempt).into());
    }
    call.observer().retrying(
        attempt,
        failure.kind().map_or("predicate", |kind| kind.name()),
        wait,
    );
    Decision::Retry(wait)
}

/// The epoch to rediscover the primary from, when the manager follows a
/// failover and `error` says its host may be gone: the next attempt, or the
/// next call, goes to whichever host accepts writes now.
fn moved<E>(call: &Call<E>, epoch: Option<PrimaryEpoch>, error: &E) -> Option<PrimaryEpoch> {
    epoch.filter(|_| (call.inspect())(error).is_some_and(|source| lost(call, source)))
}

/// The connection was lost, or none could be had: the host may be gone; or
/// the host refused a read-write transaction's write: it is not the primary
/// any more.
fn lost<E>(call: &Call<E>, error: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        call.classify(error),
        Some(FailureKind::ConnectionLost | FailureKind::NotPrimary)
    ) || crate::failure::chain(error).any(|error| {
        matches!(
            error.downcast_ref::<Error>(),
            Some(Error::Database {
                operation: Operation::Acquire,
                ..
            })
        )
    })
}
