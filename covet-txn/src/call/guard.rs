//! What happens when a call's future is dropped before its scope settles:
//! the session is aborted, and a transaction that began in the scope runs
//! its on_rollback hooks on the runtime, if one is left to run them.

use std::sync::Arc;

use super::{Call, Scope};
use crate::context::{Frame, FrameKind};
use crate::event::{RollbackCause, TxEvent, TxOutcome};
use crate::hooks::run;
use crate::observe::Observer;

/// Aborts the session if the scope's future is dropped before it settles,
/// and for a transaction that began in the scope, runs its on_rollback hooks
/// on the runtime, if one is left to run them.
pub(crate) struct CancelGuard<'a> {
    frame: &'a Arc<Frame>,
    observer: &'a Observer,
    armed: bool,
}

impl<'a> CancelGuard<'a> {
    pub(crate) fn new<E>(scope: &'a Scope, call: &'a Call<E>) -> Self {
        CancelGuard {
            frame: &scope.frame,
            observer: &call.observer,
            armed: true,
        }
    }

    pub(crate) fn disarm(mut self) {
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
