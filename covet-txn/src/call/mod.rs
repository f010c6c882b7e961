//! Running one transactional call, one way: plan it (`plan`), enter its
//! scope (open a session, create a savepoint, or join), run the body in its
//! frame under its deadline, and settle the outcome (`settle`); with
//! `retry`, run it again as `attempts` decides.
//!
//! This is the only module that puts the lower layers together; it holds no
//! SQL and counts nothing itself.

pub(crate) mod attempts;
pub(crate) mod plan;
mod settle;

use std::any::Any;
use std::error::Error as StdError;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{Either, select};
use tracing::Instrument;

use self::plan::{Plan, PoolUse, Request, Running, RunningTransaction};
use crate::backend::{SERVER_TIMEOUT_GRACE, SERVER_TIMEOUT_LIMIT};
use crate::context::{self, ChildClaim, Frame, FrameKind};
use crate::defaults;
use crate::dialect::{SavepointAction, SavepointName};
use crate::engine::{EngineHandle, OpenRequest};
use crate::error::Error;
use crate::event::{RollbackCause, TxEvent, TxOutcome};
use crate::hooks::run;
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
}

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

    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
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
            enforces_deadline: deadline
                .is_some_and(|deadline| inherited.is_none_or(|inherited| deadline < inherited)),
        })
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

    /// Runs one attempt: enters the scope, runs the body in it and settles.
    pub(crate) async fn run<T, Fut>(&self, body: Fut, attempt: u32) -> Result<T, E>
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
        let result = self
            .run_in_scope(body, attempt)
            .instrument(span.clone())
            .await;
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
            && let Some(kind) =
                (self.inspect)(error).and_then(|source| self.engine.classify(source))
        {
            self.observer.failed_with(kind);
        }
        result
    }

    async fn run_in_scope<T, Fut>(&self, body: Fut, attempt: u32) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let scope = match self.enter(attempt).await {
            Ok(scope) => scope,
            Err(error) => return Err(error.into()),
        };
        let guard = CancelGuard::new(&scope, self);
        let outcome = self.run_body(&scope.frame, body).await;
        let settled = settle::settle(self, &scope, outcome, attempt).await;
        guard.disarm();
        drop(scope);
        settled.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// Opens the call's session, creates its savepoint, or joins.
    async fn enter(&self, attempt: u32) -> Result<Scope, Error> {
        let options = &self.options.options;
        let (session, kind, depth, claim) = match self.plan {
            Plan::Begin { holding } => (
                self.open(true, None, holding, attempt).await?,
                FrameKind::Root,
                1,
                None,
            ),
            Plan::BeginOnAutocommit => {
                let lender = self.running_frame()?.session.clone();
                (
                    self.open(true, Some(lender), 0, attempt).await?,
                    FrameKind::Root,
                    1,
                    None,
                )
            }
            Plan::Autocommit { holding } => (
                self.open(false, None, holding, attempt).await?,
                FrameKind::Autocommit,
                0,
                None,
            ),
            Plan::Savepoint => {
                let parent = self.running_frame()?;
                let claim = parent.claim_child()?;
                let depth = parent.depth + 1;
                parent
                    .session
                    .savepoint(SavepointAction::Create, SavepointName::Scope(depth))
                    .await?;
                self.observer.savepoint_created();
                (
                    parent.session.clone(),
                    FrameKind::Savepoint,
                    depth,
                    Some(claim),
                )
            }
            Plan::Join => {
                let parent = self.running_frame()?;
                (
                    parent.session.clone(),
                    FrameKind::Joined,
                    parent.depth,
                    None,
                )
            }
        };
        let core = session.core();
        if core.transactional {
            core.hooks.declare(depth, options.hooks);
        }
        let test = match kind {
            FrameKind::Root | FrameKind::Autocommit => options.test,
            FrameKind::Savepoint | FrameKind::Joined => {
                self.running.as_ref().is_some_and(|frame| frame.test)
            }
        };
        let frame = Arc::new(Frame {
            engine: self.engine.clone(),
            session,
            kind,
            depth,
            name: self.name,
            propagation: options.propagation,
            deadline: self.deadline,
            test,
            rollback_requested: AtomicBool::new(false),
            parent: self.head.clone(),
        });
        Ok(Scope {
            frame,
            _claim: claim,
        })
    }

    fn running_frame(&self) -> Result<&Arc<Frame>, Error> {
        self.running.as_ref().ok_or(Error::NoTransaction)
    }

    /// Opens a session on the call's manager, under the call's deadline.
    async fn open(
        &self,
        transactional: bool,
        lent_from: Option<crate::session::SessionHandle>,
        holding: u32,
        attempt: u32,
    ) -> Result<crate::session::SessionHandle, Error> {
        let server_timeout = self
            .deadline
            .filter(|_| transactional)
            .map(|deadline| {
                deadline.saturating_duration_since(Instant::now()) + SERVER_TIMEOUT_GRACE
            })
            .filter(|timeout| *timeout <= SERVER_TIMEOUT_LIMIT);
        let opening = self.engine.open(OpenRequest {
            name: self.name,
            options: self.options.options,
            transactional,
            lent_from,
            holding,
            attempt,
            server_timeout,
            observer: transactional.then(|| self.observer.clone()),
        });
        match self.deadline {
            Some(deadline) => tokio::time::timeout_at(deadline.into(), opening)
                .await
                .unwrap_or_else(|_| Err(self.timeout_error(attempt))),
            None => opening.await,
        }
    }

    /// Runs the body in its frame, catching a panic, under the call's
    /// deadline if no enclosing scope already enforces it.
    async fn run_body<T, Fut>(&self, frame: &Arc<Frame>, body: Fut) -> BodyOutcome<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let scoped = std::pin::pin!(context::enter(
            Arc::clone(frame),
            AssertUnwindSafe(body).catch_unwind()
        ));
        let enforced = self.deadline.filter(|_| self.enforces_deadline);
        let expiry = std::pin::pin!(async move {
            match enforced {
                Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
                None => std::future::pending().await,
            }
        });
        match select(scoped, expiry).await {
            Either::Left((Ok(result), _)) => BodyOutcome::Returned(result),
            Either::Left((Err(panic), _)) => BodyOutcome::Panicked(panic),
            Either::Right(_) => BodyOutcome::TimedOut,
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

/// Aborts the session if the scope's future is dropped before it settles,
/// and for a transaction that began in the scope, runs its on_rollback hooks
/// on the runtime, if one is left to run them.
struct CancelGuard<'a> {
    frame: &'a Arc<Frame>,
    observer: &'a Observer,
    armed: bool,
}

impl<'a> CancelGuard<'a> {
    fn new<E>(scope: &'a Scope, call: &'a Call<E>) -> Self {
        CancelGuard {
            frame: &scope.frame,
            observer: &call.observer,
            armed: true,
        }
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let frame = self.frame;
        frame.session.abort(match frame.kind {
            FrameKind::Root | FrameKind::Autocommit => {
                "the transactional call was cancelled before it finished"
            }
            FrameKind::Savepoint => {
                "a nested transactional scope was cancelled before it finished, leaving the \
                 transaction in an unknown state"
            }
            FrameKind::Joined => {
                "a joined transactional scope was cancelled before it finished, leaving the \
                 transaction in an unknown state"
            }
        });
        if frame.kind != FrameKind::Root {
            return;
        }
        let core = frame.session.core();
        let manager = frame.engine.hooks();
        // Cut off once COMMIT was sent, the transaction may have committed;
        // cut off during on_commit or on_rollback hooks, those finish on
        // their own. Either way no on_rollback hook is owed here.
        if core.machine.sealed() || (core.hooks.is_empty() && manager.is_empty()) {
            return;
        }
        core.machine.seal();
        let event = TxEvent::new(
            &frame.info(),
            TxOutcome::RolledBack,
            Some(RollbackCause::Cancelled),
        );
        // Dropped at once: outside a runtime it does nothing, inside one it
        // runs the hooks in a task of their own.
        drop(run::after_end(
            crate::event::Phase::AfterRollback,
            frame.session.hook_holder(),
            Arc::clone(manager),
            Some(self.observer.clone()),
            event,
        ));
    }
}
