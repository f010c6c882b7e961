//! Entering a call's scope, one of two ways: opening a session of its own
//! (the call begins a transaction, or runs in autocommit on a connection of
//! its own), or inside the session running in its task (a savepoint, or a
//! join). The two are kept apart so that a nested call's future carries none
//! of the space that waiting for a pooled connection takes: a call that opens
//! a session is boxed once, body and all, and a nested call stays small.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use super::plan::Plan;
use super::settle::{self, Settled};
use super::{BodyOutcome, Call, Scope};
use crate::backend::{SERVER_TIMEOUT_GRACE, SERVER_TIMEOUT_LIMIT};
use crate::context::{Frame, FrameKind};
use crate::dialect::{SavepointAction, SavepointName};
use crate::engine::OpenRequest;
use crate::error::Error;
use crate::session::SessionHandle;

/// A call's plan, by the way it enters its scope.
pub(crate) enum Way {
    Own(Own),
    Within(Within),
}

/// The plans that open a session of their own.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Own {
    /// Begin on a connection of its own, while the task holds `holding`
    /// others of the pool.
    Begin { holding: u32 },
    /// Begin on the running autocommit session's connection.
    BeginOnAutocommit,
    /// Autocommit on a connection of its own.
    Autocommit { holding: u32 },
}

/// The plans that run inside the running session.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Within {
    Savepoint,
    Join,
}

impl From<Plan> for Way {
    fn from(plan: Plan) -> Way {
        match plan {
            Plan::Begin { holding } => Way::Own(Own::Begin { holding }),
            Plan::BeginOnAutocommit => Way::Own(Own::BeginOnAutocommit),
            Plan::Autocommit { holding } => Way::Own(Own::Autocommit { holding }),
            Plan::Savepoint => Way::Within(Within::Savepoint),
            Plan::Join => Way::Within(Within::Join),
        }
    }
}

/// One way into a scope and out of it.
pub(crate) trait Entry: Copy {
    /// Opens the session, creates the savepoint, or joins.
    fn enter<E: From<Error>>(
        self,
        call: &Call<E>,
        attempt: u32,
    ) -> impl Future<Output = Result<Scope, Error>>;

    /// Settles the scope once its body has ended with `outcome`.
    fn settle<T, E: From<Error>>(
        self,
        call: &Call<E>,
        scope: &Scope,
        outcome: BodyOutcome<T, E>,
        attempt: u32,
    ) -> impl Future<Output = Settled<T, E>>;
}

impl Entry for Own {
    async fn enter<E: From<Error>>(self, call: &Call<E>, attempt: u32) -> Result<Scope, Error> {
        let (session, kind, depth) = match self {
            Own::Begin { holding } => (
                open(call, true, None, holding, attempt).await?,
                FrameKind::Root,
                1,
            ),
            Own::BeginOnAutocommit => {
                let lender = call.running_frame()?.session.clone();
                (
                    open(call, true, Some(lender), 0, attempt).await?,
                    FrameKind::Root,
                    1,
                )
            }
            Own::Autocommit { holding } => (
                open(call, false, None, holding, attempt).await?,
                FrameKind::Autocommit,
                0,
            ),
        };
        let test = call.options.options.test;
        Ok(scope(call, session, kind, depth, test, None))
    }

    fn settle<T, E: From<Error>>(
        self,
        call: &Call<E>,
        scope: &Scope,
        outcome: BodyOutcome<T, E>,
        attempt: u32,
    ) -> impl Future<Output = Settled<T, E>> {
        settle::settle_own(call, scope, outcome, attempt)
    }
}

impl Entry for Within {
    async fn enter<E: From<Error>>(self, call: &Call<E>, _attempt: u32) -> Result<Scope, Error> {
        let parent = call.running_frame()?;
        let (kind, depth, claim) = match self {
            Within::Savepoint => {
                let claim = parent.claim_child()?;
                let depth = parent.depth + 1;
                parent
                    .session
                    .savepoint(SavepointAction::Create, SavepointName::Scope(depth))
                    .await?;
                call.observer.savepoint_created();
                (FrameKind::Savepoint, depth, Some(claim))
            }
            Within::Join => (FrameKind::Joined, parent.depth, None),
        };
        let session = parent.session.clone();
        Ok(scope(call, session, kind, depth, parent.test, claim))
    }

    fn settle<T, E: From<Error>>(
        self,
        call: &Call<E>,
        scope: &Scope,
        outcome: BodyOutcome<T, E>,
        _attempt: u32,
    ) -> impl Future<Output = Settled<T, E>> {
        settle::settle_within(call, scope, outcome)
    }
}

/// The scope's frame, with the function's declared hooks waiting on its
/// session.
fn scope<E>(
    call: &Call<E>,
    session: SessionHandle,
    kind: FrameKind,
    depth: u32,
    test: bool,
    claim: Option<crate::context::ChildClaim>,
) -> Scope {
    let options = &call.options.options;
    let core = session.core();
    if core.transactional {
        core.hooks.declare(depth, options.hooks);
    }
    let frame = Arc::new(Frame {
        engine: call.engine.clone(),
        session,
        kind,
        depth,
        name: call.name,
        propagation: options.propagation,
        deadline: call.deadline,
        test,
        rollback_requested: AtomicBool::new(false),
        parent: call.head.clone(),
    });
    Scope {
        frame,
        _claim: claim,
    }
}

/// Opens a session on the call's manager, under the call's deadline.
async fn open<E>(
    call: &Call<E>,
    transactional: bool,
    lent_from: Option<SessionHandle>,
    holding: u32,
    attempt: u32,
) -> Result<SessionHandle, Error>
where
    E: From<Error>,
{
    let server_timeout = call
        .deadline
        .filter(|_| transactional)
        .map(|deadline| deadline.saturating_duration_since(Instant::now()) + SERVER_TIMEOUT_GRACE)
        .filter(|timeout| *timeout <= SERVER_TIMEOUT_LIMIT);
    let request = OpenRequest {
        name: call.name,
        options: call.options.options,
        transactional,
        lent_from,
        holding,
        attempt,
        server_timeout,
        observer: transactional.then(|| call.observer.clone()),
        branch: None,
    };
    // Built where it is awaited: the opening future is as large as its
    // largest state, and a future bound to a variable first is copied
    // whole into the await.
    match call.deadline {
        Some(deadline) => tokio::time::timeout_at(deadline.into(), call.engine.open(request))
            .await
            .unwrap_or_else(|_| Err(call.timeout_error(attempt))),
        None => call.engine.open(request).await,
    }
}
