//! Side effects tied to the fate of a transaction, registered from a body:
//! [`on_commit`] and the other phases, and what registering returns.
//!
//! Hooks registered in a scope carry the scope's depth (`list`). A savepoint
//! that is released hands its hooks to the enclosing scope; one that is
//! rolled back runs its rollback hooks and discards the rest. Only the
//! outermost COMMIT or ROLLBACK runs what is left (`run`).

pub(crate) mod list;
pub(crate) mod run;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use self::list::{Registered, Runnable};
use crate::context;
use crate::event::{HookFuture, HookOutput, Phase, boxed_hook};

/// Registers a hook with the innermost running transaction, or, outside any
/// transaction, keeps it to run now (commit phases) or drops it (rollback
/// phases: nothing will roll back).
fn register<F, Fut>(phase: Phase, hook: F) -> Registration
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output: HookOutput> + Send + 'static,
{
    let boxed: Box<dyn FnOnce() -> HookFuture + Send> = Box::new(move || boxed_hook(hook()));
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
/// ```
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
/// back and the caller gets [`Error::HookFailed`](crate::Error::HookFailed),
/// whose `source()` is the hook's error; a database failure a new attempt
/// can fix is retried like one in the body. Outside any transaction it runs
/// now.
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
