//! The branches of one attempt of a two-phase call, and what becomes of
//! them when the call is dropped before it ends.

use std::sync::Arc;

use super::Coordinator;
use crate::context::Frame;
use crate::dialect::Decision;
use crate::observe::Observer;
use crate::state::TxState;

/// The frames of one attempt's branches, outermost first. Dropped before
/// they end (the caller's future was dropped, or the decision is in
/// doubt), every open branch is abandoned (its connection recovered and
/// rolled back), and the prepared ones are settled at once by a task of
/// their own: it records an abort unless a decision stands already, and
/// finishes them as the decision that stands says. Without a runtime to
/// run it, they wait for recovery.
pub(super) struct Branches {
    pub(super) coordinator: Arc<Coordinator>,
    pub(super) global: String,
    pub(super) frames: Vec<Arc<Frame>>,
    pub(super) observers: Vec<Observer>,
    pub(super) armed: bool,
}

impl Drop for Branches {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut prepared = Vec::new();
        for frame in &self.frames {
            if frame.session.core().machine.state() == TxState::Prepared {
                prepared.push(frame.session.clone());
            } else {
                frame.session.abort("the two-phase call was dropped");
            }
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if prepared.is_empty() {
            return;
        }
        let (coordinator, global) = (
            Arc::clone(&self.coordinator),
            std::mem::take(&mut self.global),
        );
        runtime.spawn(async move {
            let Ok(decision) = coordinator.log.decide(&global, Decision::Abort).await else {
                return;
            };
            for session in prepared {
                let _ = session.finish_prepared(decision == Decision::Commit).await;
            }
        });
    }
}
