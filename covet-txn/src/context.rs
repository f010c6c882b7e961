//! The task-local context: which transactional scopes are open in the
//! current task, innermost first, and the functions that reach into them
//! ([`conn`], [`current`], [`set_rollback_only`], [`is_rollback_only`]).
//!
//! Each scope installs its frame with tokio's `LocalKey::scope` for exactly
//! the life of its body, so frames follow the task's futures: two branches of
//! a `join!` each see their own frames, and a spawned task sees none.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::engine::{Backend, EngineHandle};
use crate::error::Error;
use crate::event::TxInfo;
use crate::options::Propagation;
use crate::session::{SessionHandle, TxConn};
use crate::state::RollbackOnlyCause;

tokio::task_local! {
    static CURRENT: Arc<Frame>;
}

/// How a scope relates to its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameKind {
    /// Began the session's transaction.
    Root,
    /// Runs inside a SAVEPOINT of the session's transaction.
    Savepoint,
    /// Joined the session as it is, with no statement of its own.
    Joined,
    /// Opened an autocommit session (`supports`, `never` or `not_supported`
    /// without a transaction to join).
    Autocommit,
}

/// One open transactional scope.
pub(crate) struct Frame {
    pub(crate) engine: EngineHandle,
    pub(crate) session: SessionHandle,
    pub(crate) kind: FrameKind,
    /// 1 for the outermost transaction, one more per savepoint; 0 in autocommit.
    pub(crate) depth: u32,
    pub(crate) name: &'static str,
    pub(crate) propagation: Propagation,
    /// When the scope must be over, if it has a deadline (its own or an
    /// enclosing scope's).
    pub(crate) deadline: Option<Instant>,
    /// Whether the session is a test transaction, which always rolls back.
    pub(crate) test: bool,
    /// Set by [`set_rollback_only`] in this scope: it rolls back at its end.
    pub(crate) rollback_requested: AtomicBool,
    pub(crate) parent: Option<Arc<Frame>>,
}

impl Frame {
    /// This frame and its ancestors, innermost first.
    pub(crate) fn chain(&self) -> impl Iterator<Item = &Frame> {
        std::iter::successors(Some(self), |frame| frame.parent.as_deref())
    }

    /// The innermost open frame of the given manager.
    pub(crate) fn innermost_of(head: &Arc<Frame>, manager_id: u64) -> Option<Arc<Frame>> {
        let mut frame = Some(head);
        while let Some(current) = frame {
            if current.session.core().manager_id == manager_id {
                return Some(Arc::clone(current));
            }
            frame = current.parent.as_ref();
        }
        None
    }

    /// Pool connections this task holds from the given manager.
    pub(crate) fn connections_held(&self, manager_id: u64) -> u32 {
        let held = self
            .chain()
            .filter(|frame| {
                matches!(frame.kind, FrameKind::Root | FrameKind::Autocommit)
                    && frame.session.core().manager_id == manager_id
                    && !frame.session.core().borrows_connection
            })
            .count();
        u32::try_from(held).unwrap_or(u32::MAX)
    }

    /// The name of the scope that began this frame's session.
    pub(crate) fn transaction_name(&self) -> &'static str {
        let id = self.session.core().id;
        self.chain()
            .find(|frame| {
                matches!(frame.kind, FrameKind::Root | FrameKind::Autocommit)
                    && frame.session.core().id == id
            })
            .map_or(self.name, |root| root.name)
    }

    /// Marks a nested scope of this frame as running until the claim is
    /// dropped. The mark is the session's depth, not a flag on the frame:
    /// every frame at this depth (this one and the `required` scopes joined
    /// to it) then sees it, so that no `join!` branch can slip statements or
    /// another savepoint into the nested scope's savepoint.
    pub(crate) fn claim_child(self: &Arc<Frame>) -> Result<ChildClaim, Error> {
        if !self.session.core().enter_scope(self.depth) {
            return Err(Error::ConcurrentScope);
        }
        Ok(ChildClaim(Arc::clone(self)))
    }

    /// Fails while a nested scope runs on this frame's session below it.
    pub(crate) fn ensure_no_child(&self) -> Result<(), Error> {
        if self.session.core().depth() == self.depth {
            Ok(())
        } else {
            Err(Error::ConcurrentScope)
        }
    }

    /// Whether this scope asked to roll back at its end.
    pub(crate) fn rollback_requested(&self) -> bool {
        self.rollback_requested.load(Ordering::Acquire)
    }

    pub(crate) fn info(&self) -> TxInfo {
        let core = self.session.core();
        TxInfo {
            id: core.id,
            name: self.name,
            transaction_name: self.transaction_name(),
            depth: self.depth,
            isolation: core.isolation,
            read_only: core.read_only,
            propagation: self.propagation,
            state: core.machine.state(),
            transactional: core.transactional,
            rollback_only: core.machine.is_rollback_only(),
            scope_rollback_only: self.rollback_requested(),
            backend: core.system,
            attempt: core.attempt,
            started_at: core.started_at,
            deadline: self.deadline,
        }
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("transaction", &self.session.core().id)
            .field("name", &self.name)
            .field("depth", &self.depth)
            .finish()
    }
}

/// A nested scope's hold on its parent frame; released on drop.
pub(crate) struct ChildClaim(Arc<Frame>);

impl Drop for ChildClaim {
    fn drop(&mut self) {
        self.0.session.core().leave_scope(self.0.depth);
    }
}

/// The innermost open frame of this task.
pub(crate) fn head() -> Option<Arc<Frame>> {
    CURRENT.try_with(Arc::clone).ok()
}

/// Runs `body` with `frame` as the innermost frame.
pub(crate) fn enter<F: Future>(frame: Arc<Frame>, body: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(frame, body)
}

/// Lends the innermost frame's connection on backend `DB` whose frame passes
/// `select`.
pub(crate) fn lend<DB: Backend>(select: impl Fn(&Frame) -> bool) -> Result<TxConn<DB>, Error> {
    // Runs on every statement: look at the frames in place, without taking
    // a reference to them, and clone only the session that is lent.
    CURRENT
        .try_with(|head| {
            let mut running = None;
            for frame in head.chain().filter(|frame| select(frame)) {
                let Some(session) = DB::unerase(&frame.session) else {
                    running.get_or_insert(frame.session.core().system);
                    continue;
                };
                frame.ensure_no_child()?;
                return TxConn::lend_from(session);
            }
            Err(match running {
                Some(running) => Error::WrongBackend {
                    requested: DB::default_dialect().system(),
                    running,
                },
                None => Error::NoTransaction,
            })
        })
        .unwrap_or(Err(Error::NoTransaction))
}

/// Lends the current transaction's connection, for use as a sqlx executor.
///
/// Finds the innermost transactional scope of this task running on backend
/// `DB`. Fails with [`Error::NoTransaction`] outside any scope,
/// [`Error::WrongBackend`] if the running transactions are on other backends,
/// [`Error::ConnectionBorrowed`] while another [`TxConn`] of the same
/// transaction is alive, and [`Error::ConcurrentScope`] while a nested scope of
/// this one is running alongside. The typed accessors
/// ([`postgres::conn`](crate::postgres::conn), [`mysql::conn`](crate::mysql::conn),
/// [`sqlite::conn`](crate::sqlite::conn)) need no type annotation.
///
/// ```
/// use covet_txn::transactional;
/// use sqlx::Sqlite;
///
/// #[transactional]
/// async fn rename(id: i64, name: &str) -> Result<u64, covet_txn::Error> {
///     let done = sqlx::query("UPDATE users SET name = ? WHERE id = ?")
///         .bind(name)
///         .bind(id)
///         .execute(&mut *covet_txn::conn::<Sqlite>()?)
///         .await?;
///     Ok(done.rows_affected())
/// }
/// ```
pub fn conn<DB: Backend>() -> Result<TxConn<DB>, Error> {
    lend::<DB>(|_| true)
}

/// A snapshot of the innermost transactional scope of this task, or `None`
/// outside any.
pub fn current() -> Option<TxInfo> {
    head().map(|frame| frame.info())
}

/// Makes the current scope roll back at its end instead of committing, as
/// Django's `transaction.set_rollback(True)` and Spring's
/// `setRollbackOnly()` do.
///
/// - In the scope that began the transaction, the transaction rolls back
///   when the function returns, and the call returns what the function
///   returned: the rollback was asked for, so it is not an error.
/// - In a nested scope (a savepoint), the savepoint rolls back at the
///   scope's end, and the enclosing transaction goes on.
/// - In a scope joined to the transaction (`required`, `mandatory`,
///   `supports`), which has no savepoint of its own, the whole transaction
///   is marked rollback-only: the outermost call fails with
///   [`Error::RollbackOnly`], so that nobody believes it committed.
///
/// Fails with [`Error::NoTransaction`] outside a transaction.
///
/// ```
/// # async fn demo() -> Result<(), covet_txn::Error> {
/// # let dry_run = true;
/// if dry_run {
///     covet_txn::set_rollback_only()?;
/// }
/// # Ok(()) }
/// ```
pub fn set_rollback_only() -> Result<(), Error> {
    let frame = head().ok_or(Error::NoTransaction)?;
    match frame.kind {
        FrameKind::Root | FrameKind::Savepoint => {
            frame.rollback_requested.store(true, Ordering::Release);
            Ok(())
        }
        FrameKind::Joined if frame.session.core().transactional => {
            frame
                .session
                .core()
                .machine
                .mark_rollback_only(RollbackOnlyCause::Requested { scope: frame.name });
            frame.rollback_requested.store(true, Ordering::Release);
            Ok(())
        }
        FrameKind::Joined | FrameKind::Autocommit => Err(Error::NoTransaction),
    }
}

/// Whether the current scope will roll back at its end: it asked to with
/// [`set_rollback_only`], or its transaction can no longer commit. `false`
/// outside a transaction.
pub fn is_rollback_only() -> bool {
    head().is_some_and(|frame| {
        frame.rollback_requested() || frame.session.core().machine.is_rollback_only()
    })
}
