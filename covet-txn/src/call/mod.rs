//! Running one transactional call, one way: plan it (`plan`), enter its
//! scope (`enter`: open a session, create a savepoint, or join), run the
//! body in its frame under its deadline, and settle the outcome (`settle`),
//! with a guard for a future dropped half-way (`guard`); with `retry`, run
//! it again as `attempts` decides, each attempt admitted first (`admit`).
//!
//! This is the only module that puts the lower layers together; it holds no
//! SQL and counts nothing itself.

mod admit;
pub(crate) mod attempts;
mod enter;
mod guard;
pub(crate) mod plan;
pub(crate) mod settle;
mod turns;

use std::any::Any;
use std::error::Error as StdError;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{Either, Fuse, select};
use tracing::Instrument;

use self::enter::{Entry, Way};
use self::guard::CancelGuard;
use self::plan::{Plan, PoolUse, Request, Running, RunningTransaction};
use self::turns::Turns;
use crate::context::{self, ChildClaim, Frame};
use crate::defaults;
use crate::engine::EngineHandle;
use crate::error::Error;
use crate::failure::FailureKind;
use crate::observe::Observer;
use crate::request::CallOptions;

/// Finds the `std::error::Error` inside a function's error type, for the
/// retry classification; `#[transactional]` builds one for any error type.
pub(crate) type Inspect<E> = fn(&E) -> Option<&(dyn StdError + 'static)>;

/// One transactional call, planned.
pub(crate) struct Call<E> {
    engine: EngineHandle,
    options: CallOptions<E>,
    inspect: Inspect<E>,
    name: &'static str,
    head: Option<Arc<Frame>>,
    /// The innermost frame of the call's manager, which a savepoint or a
    /// joined scope runs in.
    running: Option<Arc<Frame>>,
    plan: Plan,
    /// When the call must be over: its own timeout, or the enclosing scope's
    /// deadline if that comes first.
    deadline: Option<Instant>,
    /// The time the call had when it began, under that deadline: what a
    /// timeout reports.
    budget: Option<Duration>,
    /// Whether the call's own deadline is the one to enforce (an enclosing
    /// scope with the same or an earlier deadline enforces it already).
    enforces_deadline: bool,
    observer: Observer,
    /// The running attempt's admission turns.
    turns: Turns,
}

/// A call's body, pinned where the attempt's future keeps it, so that the
/// layers an attempt passes it through move a pointer and not the body's
/// unstarted future (as large as its largest state: a few hundred bytes to
/// kilobytes, copied at every layer before). A deadline that cuts the body
/// off empties the slot, dropping the body where it lies before its scope
/// settles.
pub(crate) type Body<'a, Fut> = Pin<&'a mut Fuse<Fut>>;

/// How a body ended.
pub(crate) enum BodyOutcome<T, E> {
    Returned(Result<T, E>),
    Panicked(Box<dyn Any + Send>),
    TimedOut,
}

/// The scope a call runs its body in.
pub(crate) struct Scope {
    pub(crate) frame: Arc<Frame>,
    /// A savepoint scope's hold on its parent frame.
    _claim: Option<ChildClaim>,
}

impl<E> Call<E> {
    pub(crate) fn observer(&self) -> &Observer {
        &self.observer
    }

    pub(crate) fn engine(&self) -> &EngineHandle {
        &self.engine
    }

    pub(crate) fn inspect(&self) -> Inspect<E> {
        self.inspect
    }

    /// The running attempt's admission turns.
    pub(crate) fn turns(&self) -> &Turns {
        &self.turns
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The retryable failure inside `error`: the dialect's classification,
    /// or, for a read-write transaction on a manager with several primary
    /// hosts, a write refused by a primary demoted while still up. A
    /// `read_only` transaction's refused write stays the caller's error.
    pub(crate) fn classify(&self, error: &(dyn StdError + 'static)) -> Option<FailureKind> {
        self.engine.classify(error).or_else(|| {
            (self.options.options.read_only != Some(true) && self.engine.demoted(error))
                .then_some(FailureKind::NotPrimary)
        })
    }

    /// Whether the function's error commits instead of rolling back.
    pub(crate) fn commits_on(&self, error: &E) -> bool {
        self.options.commits_on(error)
    }
}

impl<E: From<Error>> Call<E> {
    /// Plans a call on `manager` (the default if `None`).
    pub(crate) fn prepare(
        manager: Option<EngineHandle>,
        options: CallOptions<E>,
        inspect: Inspect<E>,
    ) -> Result<Call<E>, Error> {
        let head = context::head();
        let engine = match manager {
            Some(engine) => engine,
            None => defaults::resolve(head.as_ref())?,
        };
        let running = head
            .as_ref()
            .and_then(|head| Frame::innermost_of(head, engine.id()));
        let request = &options.options;
        let name = request.name.unwrap_or("transaction");
        let planned = plan::plan(
            &Request {
                propagation: request.propagation,
                isolation: request.isolation,
                read_only: request.read_only,
                durable: request.durable,
                name,
            },
            describe(running.as_deref(), &engine),
            PoolUse {
                held: head
                    .as_ref()
                    .map_or(0, |head| head.connections_held(engine.id())),
                max: engine.max_connections(),
            },
        )?;
        // A timeout too far away to be an instant (`Duration::MAX` for "no
        // limit") is no deadline at all.
        let now = Instant::now();
        let own = request.timeout.and_then(|timeout| now.checked_add(timeout));
        let inherited = head.as_ref().and_then(|head| head.deadline);
        let deadline = match (own, inherited) {
            (Some(own), Some(inherited)) => Some(own.min(inherited)),
            (own, inherited) => own.or(inherited),
        };
        Ok(Call {
            observer: Observer::new(engine.metrics(), name),
            engine,
            options,
            inspect,
            name,
            head,
            running,
            plan: planned,
            deadline,
            budget: deadline.map(|deadline| deadline.saturating_duration_since(now)),
            turns: Turns::default(),
            enforces_deadline: deadline
                .is_some_and(|deadline| inherited.is_none_or(|inherited| deadline < inherited)),
        })
    }

    /// How the call enters its scope.
    pub(crate) fn way(&self) -> Way {
        Way::from(self.plan)
    }

    /// Whether this call begins a transaction, and so may retry it.
    pub(crate) fn begins_transaction(&self) -> bool {
        matches!(self.plan, Plan::Begin { .. } | Plan::BeginOnAutocommit)
    }

    pub(crate) fn timeout_error(&self, attempts: u32) -> Error {
        let budget = self.budget.unwrap_or_default();
        self.observer.timed_out(attempts, budget);
        Error::Timeout {
            timeout: budget,
            attempts,
        }
    }

    /// Runs one attempt: enters the scope `way`, runs the body in it and
    /// settles.
    pub(crate) async fn run<W: Entry, T, Fut>(
        &self,
        way: W,
        body: Body<'_, Fut>,
        attempt: u32,
    ) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let span = match self.plan {
            Plan::Begin { .. } | Plan::BeginOnAutocommit => self.observer.transaction_span(
                self.engine.system(),
                self.options.options.isolation,
                self.options.options.read_only.unwrap_or(false),
                attempt,
            ),
            Plan::Savepoint => self
                .observer
                .savepoint_span(self.running.as_ref().map_or(1, |frame| frame.depth) + 1),
            Plan::Autocommit { .. } | Plan::Join => tracing::Span::none(),
        };
        // A span no subscriber wants is still entered and left on every
        // poll, and with tracing's `log` feature (which sqlx turns on) each
        // of those asks `log` whether to print it: a call without a wanted
        // span polls its scope directly, with no instrumenting layer.
        let result = if span.is_disabled() {
            self.run_in_scope(way, body, attempt).await
        } else {
            self.run_in_scope(way, body, attempt)
                .instrument(span.clone())
                .await
        };
        if !span.is_none() {
            let outcome = match (&result, self.plan) {
                (Ok(_), Plan::Savepoint) => "released",
                (Ok(_), _) => "committed",
                (Err(_), _) => "rolled_back",
            };
            span.record("covet.outcome", outcome);
        }
        if let Err(error) = &result
            && self.begins_transaction()
            && let Some(kind) = (self.inspect)(error).and_then(|source| self.classify(source))
        {
            self.observer.failed_with(kind);
        }
        result
    }

    async fn run_in_scope<W: Entry, T, Fut>(
        &self,
        way: W,
        body: Body<'_, Fut>,
        attempt: u32,
    ) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let scope = match way.enter(self, attempt).await {
            Ok(scope) => scope,
            Err(error) => return Err(error.into()),
        };
        let guard = CancelGuard::new(&scope, self);
        let outcome = self.run_body(&scope.frame, body).await;
        let settled = way.settle(self, &scope, outcome, attempt).await;
        guard.disarm();
        drop(scope);
        settled.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    fn running_frame(&self) -> Result<&Arc<Frame>, Error> {
        self.running.as_ref().ok_or(Error::NoTransaction)
    }

    /// Runs the body in its frame, catching a panic, under the call's
    /// deadline if no enclosing scope already enforces it.
    async fn run_body<T, Fut>(
        &self,
        frame: &Arc<Frame>,
        mut body: Body<'_, Fut>,
    ) -> BodyOutcome<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let scoped = context::enter(
            Arc::clone(frame),
            AssertUnwindSafe(body.as_mut()).catch_unwind(),
        );
        let finished = match self.deadline.filter(|_| self.enforces_deadline) {
            // Without a deadline of its own, the body is polled directly: no
            // timer to race it against.
            None => Some(scoped.await),
            Some(deadline) => {
                let expiry = std::pin::pin!(tokio::time::sleep_until(deadline.into()));
                match select(std::pin::pin!(scoped), expiry).await {
                    Either::Left((finished, _)) => Some(finished),
                    Either::Right(_) => None,
                }
            }
        };
        let Some(finished) = finished else {
            // Whatever the body holds (a borrowed connection, a statement in
            // flight) goes before the scope settles.
            body.set(Fuse::terminated());
            return BodyOutcome::TimedOut;
        };
        match finished {
            Ok(result) => BodyOutcome::Returned(result),
            Err(panic) => BodyOutcome::Panicked(panic),
        }
    }
}

/// What planning knows of the frame a call would join or nest in.
fn describe(running: Option<&Frame>, engine: &EngineHandle) -> Running {
    match running {
        None => Running::Nothing,
        Some(frame) if !frame.session.core().transactional => Running::Autocommit,
        Some(frame) => {
            let core = frame.session.core();
            Running::Transaction(RunningTransaction {
                isolation: core.isolation,
                default_isolation: engine.default_isolation(),
                read_only: core.read_only,
                test: frame.test,
                name: frame.transaction_name(),
            })
        }
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;

    /// A call's future lives inside its caller's and is moved with it, so it
    /// must stay small: a call that opens a session is boxed whole, sqlx's
    /// wait for a pooled connection (kilobytes of state) is boxed where it is
    /// made, as a hand-written `pool.begin()` boxes it, and so is the rare
    /// resolution of an ambiguous COMMIT.
    #[tokio::test]
    async fn a_calls_future_stays_small() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:")
            .await
            .expect("opens");
        let manager = crate::TxManager::new(pool);
        let body = Box::pin(async { Ok::<(), Error>(()) });
        let call = attempts::run_once(
            Some(manager.handle()),
            crate::TxOptions::new().into(),
            |error: &Error| Some(error),
            body,
        );
        let size = std::mem::size_of_val(&call);
        assert!(size <= 6 * 1024, "a call's future is {size} bytes");
    }
}
