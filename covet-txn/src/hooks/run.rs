//! Running a phase's hooks: in registration order, then the manager's; a
//! panic is a failure; a failure before COMMIT stops the transaction and
//! any other is logged and counted; and the hooks that follow a
//! transaction's end finish even if the caller's future is dropped, each
//! exactly once.

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use super::list::{HookList, ManagerHooks, Registered, Runnable};
use crate::error::Error;
use crate::event::{HookError, HookFuture, Phase, TxEvent};
use crate::observe::Observer;

/// Whatever holds a transaction's hooks, kept alive while its after-end
/// hooks run.
pub(crate) trait HookHolder: Send + Sync + 'static {
    fn hook_list(&self) -> &HookList;
}

/// Where a phase's hooks come from when it runs.
pub(crate) struct PhaseRun<'a> {
    pub(crate) hooks: &'a HookList,
    pub(crate) manager: Option<&'a ManagerHooks>,
    /// Where hook failures are reported.
    pub(crate) observer: Option<&'a Observer>,
    pub(crate) event: TxEvent,
}

impl PhaseRun<'_> {
    /// Runs the phase's hooks for the whole transaction, in order: those
    /// registered by scopes (including hooks a hook registers meanwhile),
    /// then the manager's. Stops at the first failure when `stop_on_failure`
    /// (before_commit), else reports it and goes on.
    pub(crate) async fn run(&self, phase: Phase, stop_on_failure: bool) -> Result<(), HookFailure> {
        loop {
            let batch = self.hooks.take(phase, 0);
            if batch.is_empty() {
                break;
            }
            self.run_batch(phase, batch, stop_on_failure).await?;
        }
        if let Some(manager) = self.manager {
            for hook in manager.of(phase) {
                let outcome = run_guarded(hook(self.event.clone())).await;
                self.settle(phase, "manager hook", outcome, stop_on_failure)?;
            }
        }
        Ok(())
    }

    /// Runs the `before_rollback` hooks of the savepoint scope at `depth`
    /// (and deeper), which is about to roll back.
    pub(crate) async fn run_scope_before_rollback(&self, depth: u32) {
        let batch = self.hooks.take(Phase::BeforeRollback, depth);
        let _ = self.run_batch(Phase::BeforeRollback, batch, false).await;
    }

    /// Runs the `on_rollback` hooks of the savepoint scope at `depth` (and
    /// deeper), which rolled back, and discards the rest of its hooks.
    pub(crate) async fn run_scope_after_rollback(&self, depth: u32) {
        let batch = self.hooks.take(Phase::AfterRollback, depth);
        self.hooks.discard_scope(depth);
        let _ = self.run_batch(Phase::AfterRollback, batch, false).await;
    }

    async fn run_batch(
        &self,
        phase: Phase,
        batch: Vec<Registered>,
        stop_on_failure: bool,
    ) -> Result<(), HookFailure> {
        for registered in batch {
            let future = match registered.run {
                Runnable::Once(hook) => hook(),
                Runnable::Declared(hook) => (hook.run)(self.event.clone()),
            };
            let outcome = run_guarded(future).await;
            self.settle(phase, registered.name, outcome, stop_on_failure)?;
        }
        Ok(())
    }

    fn settle(
        &self,
        phase: Phase,
        hook: &'static str,
        outcome: Result<(), HookError>,
        stop_on_failure: bool,
    ) -> Result<(), HookFailure> {
        let Err(error) = outcome else {
            return Ok(());
        };
        if let Some(observer) = self.observer {
            observer.hook_failed(phase, hook, self.event.id, &error);
        }
        if stop_on_failure {
            Err(HookFailure { hook, error })
        } else {
            Ok(())
        }
    }
}

/// A hook that failed where failure stops the transaction.
#[derive(Debug)]
pub(crate) struct HookFailure {
    pub(crate) hook: &'static str,
    pub(crate) error: HookError,
}

impl From<HookFailure> for Error {
    fn from(failure: HookFailure) -> Self {
        Error::HookFailed {
            hook: failure.hook,
            source: failure.error,
        }
    }
}

/// Runs the phase that follows a transaction's end (`AfterCommit`,
/// `AfterRollback`) over all its hooks. If the caller's future is dropped
/// part-way, the hooks not yet run go on in a task of their own: each runs
/// exactly once, however the caller's future ends.
pub(crate) fn after_end(
    phase: Phase,
    holder: Arc<dyn HookHolder>,
    manager: Arc<ManagerHooks>,
    observer: Option<Observer>,
    event: TxEvent,
) -> RunToCompletion {
    RunToCompletion(Some(Box::pin(async move {
        let run = PhaseRun {
            hooks: holder.hook_list(),
            manager: Some(&manager),
            observer: observer.as_ref(),
            event,
        };
        // Failures are reported; they change nothing after the end.
        let _ = run.run(phase, false).await;
    })))
}

/// A future that, dropped before it finished, finishes in a spawned task.
pub(crate) struct RunToCompletion(Option<BoxFuture<'static, ()>>);

impl Future for RunToCompletion {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(running) = self.0.as_mut() {
            if running.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.0 = None;
        }
        Poll::Ready(())
    }
}

impl Drop for RunToCompletion {
    fn drop(&mut self) {
        if let Some(rest) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(rest);
        }
    }
}

/// Runs a hook, turning a panic into a failure.
pub(crate) async fn run_guarded(future: HookFuture) -> Result<(), HookError> {
    match AssertUnwindSafe(future).catch_unwind().await {
        Ok(outcome) => outcome,
        Err(panic) => Err(HookPanicked(panic_message(panic.as_ref()).to_owned()).into()),
    }
}

/// A hook that panicked, as an error.
#[derive(Debug)]
struct HookPanicked(String);

impl std::fmt::Display for HookPanicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "panicked: {}", self.0)
    }
}

impl std::error::Error for HookPanicked {}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a non-string payload")
}
