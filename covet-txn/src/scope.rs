//! Running one transactional call: choosing what the call does from its
//! propagation and what is already running (begin, savepoint, join,
//! autocommit), running the body inside its frame, and settling the outcome
//! (commit, release, roll back) after a return, an error, a panic or a
//! cancellation.

use std::future::Future;
use std::panic::{AssertUnwindSafe, resume_unwind};
use std::pin::Pin;
use std::sync::Arc;

use futures_util::FutureExt;

use crate::backend::SavepointAction;
use crate::context::{self, Frame, FrameKind};
use crate::error::Error;
use crate::manager::{ErasedOpening, ManagerHandle};
use crate::options::{Propagation, TxOptions};
use crate::transaction::ErasedSession;

/// What a call does, decided before anything is sent.
enum Plan {
    /// Open a session: a new transaction (`transactional`), or an autocommit
    /// session. `lent_from` is an autocommit session whose connection the new
    /// transaction borrows.
    Open {
        transactional: bool,
        lent_from: Option<Arc<dyn ErasedSession>>,
    },
    /// Run in a savepoint of the parent frame's transaction.
    Savepoint(Arc<Frame>),
    /// Run in the parent frame's session as it is.
    Join(Arc<Frame>),
}

/// Runs `body` as one transactional call on `manager` (the default if `None`).
///
/// Callers box the body: nested calls would otherwise store each level's
/// future inside the next several times over, and the size would grow
/// geometrically with the depth.
pub(crate) async fn run<T, E, Fut>(
    manager: Option<ManagerHandle>,
    options: TxOptions,
    body: Pin<Box<Fut>>,
) -> Result<T, E>
where
    Fut: Future<Output = Result<T, E>>,
    E: From<Error>,
{
    let head = context::head();
    let prepared = manager
        .map_or_else(|| ManagerHandle::resolve_default(head.as_ref()), Ok)
        .and_then(|manager| {
            let plan = plan(&manager, &options, head.as_ref())?;
            Ok((manager, plan))
        });
    let (manager, plan) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => return Err(error.into()),
    };
    let name = options.name.unwrap_or("transaction");
    match plan {
        Plan::Open {
            transactional,
            lent_from,
        } => {
            let opening = ErasedOpening {
                name,
                options,
                transactional,
                lent_from,
            };
            run_session(manager, opening, head, body).await
        }
        Plan::Savepoint(parent) => run_savepoint(manager, name, &options, parent, body).await,
        Plan::Join(parent) => run_joined(manager, name, &options, parent, body).await,
    }
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
                })
            }
            Propagation::Mandatory => Err(Error::NoTransaction),
            Propagation::Never | Propagation::Supports => Ok(Plan::Open {
                transactional: false,
                lent_from: None,
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
        });
    }
    if !running.session.core().transactional {
        return match propagation {
            Propagation::Mandatory => Err(Error::NoTransaction),
            Propagation::Never | Propagation::Supports => Ok(Plan::Join(running)),
            _ => Ok(Plan::Open {
                transactional: true,
                lent_from: Some(Arc::clone(&running.session)),
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

/// Aborts the session if the scope's future is dropped before it settles.
struct CancelGuard<'a> {
    session: &'a dyn ErasedSession,
    reason: &'static str,
    armed: bool,
}

impl<'a> CancelGuard<'a> {
    fn new(session: &'a dyn ErasedSession, reason: &'static str) -> Self {
        CancelGuard {
            session,
            reason,
            armed: true,
        }
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.session.abort(self.reason);
        }
    }
}

/// Opens a session (a transaction or an autocommit session), runs the body in
/// it and ends it.
async fn run_session<T, E, Fut>(
    manager: ManagerHandle,
    opening: ErasedOpening,
    head: Option<Arc<Frame>>,
    body: Fut,
) -> Result<T, E>
where
    Fut: Future<Output = Result<T, E>>,
    E: From<Error>,
{
    let name = opening.name;
    let propagation = opening.options.propagation;
    let transactional = opening.transactional;
    let session = match manager.open(opening).await {
        Ok(session) => session,
        Err(error) => return Err(error.into()),
    };
    let guard = CancelGuard::new(
        session.as_ref(),
        "the transactional call was cancelled before it finished",
    );
    let (kind, depth) = if transactional {
        (FrameKind::Root, 1)
    } else {
        (FrameKind::Autocommit, 0)
    };
    let frame = Frame::new(
        manager,
        Arc::clone(&session),
        kind,
        depth,
        name,
        propagation,
        head,
    );
    let outcome = context::enter(frame, AssertUnwindSafe(body).catch_unwind()).await;
    let settled = match outcome {
        Ok(Ok(_)) if session.core().is_rollback_only() => {
            end_quietly(session.as_ref(), name).await;
            Err(Error::RollbackOnly.into())
        }
        Ok(Ok(value)) => match session.end(true).await {
            Ok(()) => Ok(value),
            Err(error) => Err(error.into()),
        },
        Ok(Err(error)) => {
            end_quietly(session.as_ref(), name).await;
            Err(error)
        }
        Err(panic) => {
            end_quietly(session.as_ref(), name).await;
            guard.disarm();
            resume_unwind(panic);
        }
    };
    guard.disarm();
    settled
}

/// Rolls back after the body failed. A failure to roll back must not hide
/// the body's own error; the connection is abandoned either way.
async fn end_quietly(session: &dyn ErasedSession, name: &'static str) {
    if let Err(error) = session.end(false).await {
        tracing::warn!(
            target: "covet_txn",
            transaction = name,
            %error,
            "rollback failed; the connection was closed, so the server rolls back"
        );
    }
}

/// Runs the body in a savepoint of `parent`'s transaction.
async fn run_savepoint<T, E, Fut>(
    manager: ManagerHandle,
    name: &'static str,
    options: &TxOptions,
    parent: Arc<Frame>,
    body: Fut,
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
    let savepoint = format!("covet_sp_{depth}");
    let guard = CancelGuard::new(
        session.as_ref(),
        "a nested transactional scope was cancelled before it finished, leaving the \
         transaction in an unknown state",
    );
    if let Err(error) = session.savepoint(SavepointAction::Create, &savepoint).await {
        guard.disarm();
        return Err(error.into());
    }
    let frame = Frame::new(
        manager,
        Arc::clone(&session),
        FrameKind::Savepoint,
        depth,
        name,
        options.propagation,
        Some(parent),
    );
    let outcome = context::enter(frame, AssertUnwindSafe(body).catch_unwind()).await;
    let settled = match outcome {
        Ok(Ok(value)) => match session
            .savepoint(SavepointAction::Release, &savepoint)
            .await
        {
            Ok(()) => Ok(value),
            Err(error) => Err(error.into()),
        },
        Ok(Err(error)) => {
            roll_back_savepoint(session.as_ref(), &savepoint).await;
            Err(error)
        }
        Err(panic) => {
            roll_back_savepoint(session.as_ref(), &savepoint).await;
            guard.disarm();
            drop(claim);
            resume_unwind(panic);
        }
    };
    guard.disarm();
    drop(claim);
    settled
}

/// Undoes a failed nested scope. If even that fails, the transaction can no
/// longer be trusted: it is marked rollback-only so that it cannot commit.
async fn roll_back_savepoint(session: &dyn ErasedSession, savepoint: &str) {
    if let Err(error) = session
        .savepoint(SavepointAction::RollbackAndRelease, savepoint)
        .await
    {
        session.core().mark_rollback_only();
        tracing::warn!(
            target: "covet_txn",
            transaction = session.core().name,
            %error,
            "rolling back to a savepoint failed; the transaction is marked rollback-only"
        );
    }
}

/// Runs the body in `parent`'s session as it is (`required`, `mandatory`,
/// `supports`). A failure marks a transaction rollback-only.
async fn run_joined<T, E, Fut>(
    manager: ManagerHandle,
    name: &'static str,
    options: &TxOptions,
    parent: Arc<Frame>,
    body: Fut,
) -> Result<T, E>
where
    Fut: Future<Output = Result<T, E>>,
    E: From<Error>,
{
    let session = Arc::clone(&parent.session);
    let guard = CancelGuard::new(
        session.as_ref(),
        "a joined transactional scope was cancelled before it finished, leaving the \
         transaction in an unknown state",
    );
    let frame = Frame::new(
        manager,
        Arc::clone(&session),
        FrameKind::Joined,
        parent.depth,
        name,
        options.propagation,
        Some(parent),
    );
    let outcome = context::enter(frame, AssertUnwindSafe(body).catch_unwind()).await;
    guard.disarm();
    let failed = !matches!(outcome, Ok(Ok(_)));
    if failed && session.core().transactional {
        session.core().mark_rollback_only();
    }
    match outcome {
        Ok(result) => result,
        Err(panic) => resume_unwind(panic),
    }
}
