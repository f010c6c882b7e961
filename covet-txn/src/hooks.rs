//! Side effects tied to the fate of a transaction: the four phases, the
//! three ways to declare a hook (per call from the body, listed on the
//! function, manager-wide), and running them exactly once or not at all.
//!
//! Hooks registered in a scope carry the scope's depth. A savepoint that is
//! released hands its hooks to the enclosing scope; one that is rolled back
//! runs its rollback hooks and discards the rest. Only the outermost COMMIT
//! or ROLLBACK runs what is left. A failing after-the-fact hook is logged and
//! never changes the call's result.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use crate::context;
use crate::error::{Error, RollbackOnlyCause};
use crate::metrics::{Count, Series};
use crate::retry::FailureKind;
use crate::transaction::{ErasedSession, TxId, TxInfo};

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Inside the transaction, just before COMMIT; may use the connection. An
    /// error rolls the transaction back and is returned to the caller.
    BeforeCommit,
    /// After the outermost COMMIT succeeded, outside the transaction.
    AfterCommit,
    /// Inside the transaction, just before ROLLBACK (or ROLLBACK TO
    /// SAVEPOINT).
    BeforeRollback,
    /// After the rollback, outside the rolled-back scope.
    AfterRollback,
}

impl Phase {
    /// The phase's name, as logs and metrics write it.
    pub const fn name(self) -> &'static str {
        match self {
            Phase::BeforeCommit => "before_commit",
            Phase::AfterCommit => "on_commit",
            Phase::BeforeRollback => "before_rollback",
            Phase::AfterRollback => "on_rollback",
        }
    }

    pub(crate) fn is_rollback(self) -> bool {
        matches!(self, Phase::BeforeRollback | Phase::AfterRollback)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the transaction (or savepoint scope) ended, as hooks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxOutcome {
    /// It committed (or, for `before_commit`, is about to).
    Committed,
    /// It rolled back (or, for `before_rollback`, is about to).
    RolledBack,
}

/// Why a transaction rolled back.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RollbackCause {
    /// The function returned an error.
    Error {
        /// The error's message.
        message: String,
        /// Its retryable kind, if it is one.
        kind: Option<FailureKind>,
    },
    /// The function panicked.
    Panic,
    /// The deadline passed.
    Timeout,
    /// The call's future was dropped.
    Cancelled,
    /// The transaction was marked rollback-only.
    RollbackOnly(RollbackOnlyCause),
    /// A nested scope was cut off (its deadline, a dropped future), which
    /// aborted the transaction.
    Aborted(&'static str),
    /// A nested scope hit a failure only a retry can fix.
    Doomed(FailureKind),
    /// A `before_commit` hook failed.
    HookFailed(String),
    /// COMMIT itself failed.
    CommitFailed(String),
}

impl fmt::Display for RollbackCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RollbackCause::Error { message, .. } => {
                write!(f, "the function returned an error: {message}")
            }
            RollbackCause::Panic => f.write_str("the function panicked"),
            RollbackCause::Timeout => f.write_str("the deadline passed"),
            RollbackCause::Cancelled => f.write_str("the call was cancelled"),
            RollbackCause::RollbackOnly(cause) => write!(f, "{cause}"),
            RollbackCause::Aborted(reason) => write!(f, "the transaction was aborted: {reason}"),
            RollbackCause::Doomed(kind) => write!(f, "a nested scope hit a {kind}"),
            RollbackCause::HookFailed(message) => {
                write!(f, "a before_commit hook failed: {message}")
            }
            RollbackCause::CommitFailed(message) => write!(f, "COMMIT failed: {message}"),
        }
    }
}

/// What a hook learns about the transaction.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TxEvent {
    /// The transaction's id.
    pub id: TxId,
    /// The name of the scope the event is about (the function's path).
    pub name: &'static str,
    /// The backend's OpenTelemetry `db.system` name.
    pub backend: &'static str,
    /// 1 for the transaction, more for a savepoint scope.
    pub depth: u32,
    /// Which attempt of a retrying call, from 1.
    pub attempt: u32,
    /// Committed, or rolled back.
    pub outcome: TxOutcome,
    /// Why it rolled back, for rollback phases.
    pub cause: Option<RollbackCause>,
    /// When the transaction began.
    pub started_at: Instant,
    /// How long it had run when the event was made.
    pub duration: Duration,
    /// For `on_rollback`: the ROLLBACK (or ROLLBACK TO SAVEPOINT) itself
    /// failed with this error. The connection was then closed, so the server
    /// rolled back.
    pub rollback_error: Option<Arc<Error>>,
}

impl TxEvent {
    pub(crate) fn new(info: &TxInfo, outcome: TxOutcome, cause: Option<RollbackCause>) -> Self {
        TxEvent {
            id: info.id,
            name: info.name,
            backend: info.backend,
            depth: info.depth,
            attempt: info.attempt,
            outcome,
            cause,
            started_at: info.started_at,
            duration: info.started_at.elapsed(),
            rollback_error: None,
        }
    }
}

/// A hook's error, kept whole: a `before_commit` failure becomes the
/// `source()` of [`Error::HookFailed`], where the retry classification
/// finds a database failure inside it.
pub type HookError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a hook may return: nothing, or a `Result` whose error is logged and,
/// for `before_commit`, returned to the caller inside [`Error::HookFailed`].
/// Any thread-safe error type works, as do `anyhow::Error`, `String` and
/// `&'static str`.
#[diagnostic::on_unimplemented(
    message = "a hook must return `()` or `Result<(), E>` with `E` an error type that is `Send + Sync` (or `String`, `&str`, `anyhow::Error`), not `{Self}`",
    label = "this hook's return type"
)]
pub trait HookOutput {
    /// The outcome as the runtime records it.
    fn into_hook_result(self) -> Result<(), HookError>;
}

impl HookOutput for () {
    fn into_hook_result(self) -> Result<(), HookError> {
        Ok(())
    }
}

impl<E: Into<HookError>> HookOutput for Result<(), E> {
    fn into_hook_result(self) -> Result<(), HookError> {
        self.map_err(Into::into)
    }
}

/// A hook's future, boxed, with its outcome made uniform.
#[doc(hidden)]
pub type HookFuture = BoxFuture<'static, Result<(), HookError>>;

/// A hook that runs with the event: a declared handler or a manager's.
pub(crate) type EventHook = Arc<dyn Fn(TxEvent) -> HookFuture + Send + Sync>;

/// A handler declared with `#[on_commit]` and friends, listed on a function.
#[doc(hidden)]
#[derive(Clone, Copy)]
pub struct DeclaredHook {
    pub(crate) phase: Phase,
    pub(crate) name: &'static str,
    pub(crate) run: fn(TxEvent) -> HookFuture,
}

impl DeclaredHook {
    /// What the `#[on_commit]`-style attributes generate.
    pub const fn new(phase: Phase, name: &'static str, run: fn(TxEvent) -> HookFuture) -> Self {
        DeclaredHook { phase, name, run }
    }
}

impl fmt::Debug for DeclaredHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeclaredHook")
            .field("phase", &self.phase)
            .field("name", &self.name)
            .finish()
    }
}

enum Runnable {
    /// Registered from the body: runs once, without the event.
    Once(Box<dyn FnOnce() -> HookFuture + Send>),
    /// Listed on the function: runs with the event.
    Declared(DeclaredHook),
}

struct Registered {
    /// The depth of the scope that registered it.
    depth: u32,
    phase: Phase,
    name: &'static str,
    run: Runnable,
}

/// The hooks registered in one transaction, with the depth of the scope
/// that registered each.
#[derive(Default)]
pub(crate) struct HookList(Mutex<Vec<Registered>>);

impl fmt::Debug for HookList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookList")
            .field("registered", &self.lock().len())
            .finish()
    }
}

impl HookList {
    fn lock(&self) -> MutexGuard<'_, Vec<Registered>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push(&self, registered: Registered) {
        self.lock().push(registered);
    }

    /// Registers the handlers a function lists, for its scope at `depth`.
    pub(crate) fn declare(&self, depth: u32, hooks: &'static [DeclaredHook]) {
        if hooks.is_empty() {
            return;
        }
        self.lock().extend(hooks.iter().map(|hook| Registered {
            depth,
            phase: hook.phase,
            name: hook.name,
            run: Runnable::Declared(*hook),
        }));
    }

    /// A savepoint at `depth` was released: its hooks now belong to the
    /// enclosing scope.
    pub(crate) fn release_scope(&self, depth: u32) {
        for registered in self
            .lock()
            .iter_mut()
            .filter(|registered| registered.depth >= depth)
        {
            registered.depth = depth - 1;
        }
    }

    /// Takes the hooks of `phase` registered at `depth` or deeper.
    fn take(&self, phase: Phase, depth: u32) -> Vec<Registered> {
        let mut list = self.lock();
        if list.is_empty() {
            return Vec::new();
        }
        let (taken, kept) = std::mem::take(&mut *list)
            .into_iter()
            .partition(|registered| registered.depth >= depth && registered.phase == phase);
        *list = kept;
        taken
    }

    /// Drops the hooks of the scope at `depth` and deeper: it rolled back.
    fn discard_scope(&self, depth: u32) {
        self.lock().retain(|registered| registered.depth < depth);
    }

    /// Drops every hook: the transaction's fate cannot be known.
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }

    /// Whether any hook is registered.
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// The hooks that run for every transaction of a manager.
#[derive(Default, Clone)]
pub(crate) struct ManagerHooks(Vec<(Phase, EventHook)>);

impl ManagerHooks {
    pub(crate) fn add(&mut self, phase: Phase, hook: EventHook) {
        self.0.push((phase, hook));
    }

    fn of(&self, phase: Phase) -> impl Iterator<Item = &EventHook> {
        self.0
            .iter()
            .filter(move |(hook_phase, _)| *hook_phase == phase)
            .map(|(_, hook)| hook)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Runs the phase that follows a transaction's end (`AfterCommit`,
/// `AfterRollback`) over all its hooks. If the caller's future is dropped
/// part-way, the hooks not yet run go on in a task of their own: each runs
/// exactly once, however the caller's future ends.
pub(crate) fn after_end(
    phase: Phase,
    session: Arc<dyn ErasedSession>,
    manager: ManagerHooks,
    series: Option<Arc<Series>>,
    event: TxEvent,
) -> RunToCompletion {
    RunToCompletion(Some(Box::pin(async move {
        let run = PhaseRun {
            hooks: &session.core().hooks,
            manager: Some(&manager),
            series: series.as_ref(),
            event,
        };
        // Failures are logged and counted; they change nothing after the end.
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

/// Where a phase's hooks come from when it runs.
pub(crate) struct PhaseRun<'a> {
    pub(crate) hooks: &'a HookList,
    pub(crate) manager: Option<&'a ManagerHooks>,
    /// Where hook failures are counted.
    pub(crate) series: Option<&'a Arc<Series>>,
    pub(crate) event: TxEvent,
}

impl PhaseRun<'_> {
    /// Runs the phase's hooks for the whole transaction, in order: those
    /// registered by scopes (including hooks a hook registers meanwhile),
    /// then the manager's. Stops at the first failure when `stop_on_failure`
    /// (before_commit), else logs it and goes on.
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
        tracing::warn!(
            target: "covet_txn::hooks",
            phase = phase.name(),
            hook,
            transaction = self.event.name,
            transaction_id = self.event.id.get(),
            %error,
            "a transaction hook failed"
        );
        if let Some(series) = self.series {
            series.add(Count::HookFailure(phase));
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
            phase: Phase::BeforeCommit,
            hook: failure.hook,
            source: failure.error,
        }
    }
}

/// Runs a hook, turning a panic into a failure.
async fn run_guarded(future: HookFuture) -> Result<(), HookError> {
    match AssertUnwindSafe(future).catch_unwind().await {
        Ok(outcome) => outcome,
        Err(panic) => Err(HookPanicked(panic_message(panic.as_ref()).to_owned()).into()),
    }
}

/// A hook that panicked, as an error.
#[derive(Debug)]
struct HookPanicked(String);

impl fmt::Display for HookPanicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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

/// Registers a hook with the innermost running transaction, or, outside any
/// transaction, keeps it to run now (commit phases) or drops it (rollback
/// phases: nothing will roll back).
fn register<F, Fut>(phase: Phase, hook: F) -> Registration
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output: HookOutput> + Send + 'static,
{
    let boxed: Box<dyn FnOnce() -> HookFuture + Send> =
        Box::new(move || Box::pin(hook().map(HookOutput::into_hook_result)));
    let frame = context::head().filter(|frame| frame.session.core().transactional);
    match frame {
        Some(frame) => {
            frame.session.core().hooks.push(Registered {
                depth: frame.depth,
                phase,
                name: frame.name,
                run: Runnable::Once(boxed),
            });
            Registration(None)
        }
        None if phase.is_rollback() => Registration(None),
        None => Registration(Some(boxed())),
    }
}

/// What registering a hook returns: await it. Inside a transaction it is
/// ready at once (the hook waits for its phase); outside any, awaiting it runs
/// a commit hook now.
#[must_use = "await the registration: outside a transaction that is what runs the hook"]
pub struct Registration(Option<HookFuture>);

impl Future for Registration {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(future) = self.0.as_mut() else {
            return Poll::Ready(());
        };
        match future.as_mut().poll(cx) {
            Poll::Ready(outcome) => {
                self.0 = None;
                if let Err(error) = outcome {
                    tracing::warn!(
                        target: "covet_txn::hooks",
                        %error,
                        "a commit hook run outside any transaction failed"
                    );
                }
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Runs `hook` after the current transaction commits: after the outermost
/// COMMIT succeeded and the connection is back in the pool, so a
/// transactional call inside it gets a transaction of its own. Registered in
/// a savepoint that rolls back, or in an attempt that is retried, it never
/// runs. A failure is logged and never turns the committed call into an
/// error.
///
/// Outside any transaction the hook runs now, when the registration is
/// awaited (Django's rule).
///
/// ```no_run
/// # async fn demo(order_id: i64) {
/// covet_txn::on_commit(move || async move {
///     println!("order {order_id} committed: send the receipt");
/// })
/// .await;
/// # }
/// ```
pub fn on_commit<F, Fut>(hook: F) -> Registration
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output: HookOutput> + Send + 'static,
{
    register(Phase::AfterCommit, hook)
}

/// Runs `hook` inside the current transaction, just before COMMIT; it may
/// use [`conn`](crate::conn). If it fails (or panics) the transaction rolls
/// back and the caller gets [`Error::HookFailed`]. Outside any transaction it
/// runs now.
pub fn before_commit<F, Fut>(hook: F) -> Registration
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output: HookOutput> + Send + 'static,
{
    register(Phase::BeforeCommit, hook)
}

/// Runs `hook` after the current scope rolls back: the whole transaction,
/// or the savepoint of the scope that registered it. A failure is logged and
/// never hides the rollback's own error. Outside any transaction it is
/// dropped: nothing will roll back.
pub fn on_rollback<F, Fut>(hook: F) -> Registration
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output: HookOutput> + Send + 'static,
{
    register(Phase::AfterRollback, hook)
}

/// Runs `hook` inside the current scope just before it rolls back. Outside
/// any transaction it is dropped.
pub fn before_rollback<F, Fut>(hook: F) -> Registration
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output: HookOutput> + Send + 'static,
{
    register(Phase::BeforeRollback, hook)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered(depth: u32, phase: Phase, name: &'static str) -> Registered {
        Registered {
            depth,
            phase,
            name,
            run: Runnable::Once(Box::new(|| Box::pin(async { Ok(()) }))),
        }
    }

    fn names(list: Vec<Registered>) -> Vec<&'static str> {
        list.into_iter().map(|registered| registered.name).collect()
    }

    #[test]
    fn a_released_savepoint_hands_its_hooks_to_the_enclosing_scope() {
        let list = HookList::default();
        list.push(registered(1, Phase::AfterCommit, "outer"));
        list.push(registered(2, Phase::AfterCommit, "released"));
        list.release_scope(2);
        list.push(registered(2, Phase::AfterCommit, "sibling"));
        list.push(registered(2, Phase::AfterRollback, "sibling rollback"));
        // The sibling savepoint rolls back: only its own hooks go.
        assert_eq!(
            names(list.take(Phase::AfterRollback, 2)),
            ["sibling rollback"]
        );
        list.discard_scope(2);
        assert_eq!(
            names(list.take(Phase::AfterCommit, 0)),
            ["outer", "released"]
        );
    }
}
