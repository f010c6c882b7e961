//! The end of a two-phase call: rolling every branch back, or recording
//! the decision to commit and, once it is durable, committing every branch
//! in a task of its own that nothing cancels, with the hooks around.

use std::sync::Arc;

use tracing::Instrument;

use super::Coordinator;
use super::branches::Branches;
use super::stats::TwoPhaseOutcome;
use crate::context;
use crate::dialect::Decision;
use crate::engine::Via;
use crate::error::Error;
use crate::event::{Phase, RollbackCause, TxEvent, TxOutcome};
use crate::failure::FailureKind;
use crate::hooks::run::{self, PhaseRun};
use crate::state::TxState;

/// Rolls back every branch still open or prepared, with the rollback hooks
/// around each.
pub(super) async fn roll_back_all(branches: &mut Branches, cause: RollbackCause) {
    for (frame, observer) in branches.frames.iter().zip(&branches.observers) {
        let session = &frame.session;
        let before = PhaseRun {
            hooks: &session.core().hooks,
            manager: Some(frame.engine.hooks()),
            observer: Some(observer),
            event: TxEvent::new(&frame.info(), TxOutcome::RolledBack, Some(cause.clone())),
        };
        let _ = context::enter(Arc::clone(frame), before.run(Phase::BeforeRollback, false)).await;
        let failed = match session.core().machine.state() {
            TxState::Prepared => session.finish_prepared(false).await.err(),
            TxState::Active => session.rollback(None).await.err(),
            _ => None,
        };
        let mut event = TxEvent::new(&frame.info(), TxOutcome::RolledBack, Some(cause.clone()));
        event.rollback_error = failed.map(Arc::new);
        run::after_end(
            Phase::AfterRollback,
            session.hook_holder(),
            Arc::clone(frame.engine.hooks()),
            Some(observer.clone()),
            event,
        )
        .await;
    }
    branches.armed = false;
}

/// Records the decision to commit and, once it is durable, commits every
/// branch in a task of its own, then runs the on_commit hooks.
pub(super) async fn decide_and_commit(
    coordinator: &Arc<Coordinator>,
    global: &str,
    mut branches: Branches,
) -> Result<(), Error> {
    let log_branch = branches
        .frames
        .iter()
        .find(|frame| frame.engine.id() == coordinator.log.engine_id())
        .map(|frame| &frame.session);
    let decided = coordinator
        .log
        .decide_on(global, Decision::Commit, log_branch, Via::Pool)
        .instrument(tracing::info_span!("two_phase.decide", covet.global_id = %global))
        .await;
    match decided {
        Ok(Decision::Commit) => {}
        Ok(Decision::Abort) => {
            let reason = "recovery rolled the two-phase transaction back before its decision to \
                          commit was recorded: give the coordinator a recovery_grace longer than \
                          its calls take";
            roll_back_all(&mut branches, RollbackCause::Aborted(reason)).await;
            coordinator.counters.count(TwoPhaseOutcome::RolledBack);
            return Err(Error::TransactionAborted(reason));
        }
        Err(error) if coordinator.log.classify(&error) == Some(FailureKind::ConnectionLost) => {
            // The record may or may not have been written: the branches stay
            // prepared, and dropping them settles them as the log's first
            // record says (or recovery does, if the log stays out of reach).
            coordinator.counters.count(TwoPhaseOutcome::InDoubt);
            return Err(Error::TwoPhaseInDoubt {
                global_id: global.to_owned(),
                reason: error.to_string(),
            });
        }
        Err(error) => {
            let cause = RollbackCause::CommitFailed(error.to_string());
            roll_back_all(&mut branches, cause).await;
            coordinator.counters.count(TwoPhaseOutcome::RolledBack);
            return Err(error);
        }
    }
    coordinator.step("decided", 0);
    branches.armed = false;
    let sessions: Vec<_> = branches
        .frames
        .iter()
        .map(|frame| frame.session.clone())
        .collect();
    let (finished, all_committed) = tokio::sync::oneshot::channel();
    let phase_two = Arc::clone(coordinator);
    let global_id = global.to_owned();
    let span = tracing::info_span!("two_phase.phase_two", covet.global_id = %global);
    tokio::spawn(
        async move {
        let mut committed = true;
        for (index, session) in sessions.iter().enumerate() {
            match session.finish_prepared(true).await {
                Ok(true) => phase_two.step("committed", index),
                Ok(false) | Err(_) => committed = false,
            }
        }
        let _ = finished.send(committed);
        if committed && let Err(error) = phase_two.log.forget(&global_id, Via::Pool).await {
            tracing::debug!(%error, global_id, "a decision stays in the log until recovery forgets it");
        }
        }
        .instrument(span),
    );
    if all_committed.await.unwrap_or(false) {
        coordinator.counters.count(TwoPhaseOutcome::Committed);
    } else {
        coordinator
            .counters
            .count(TwoPhaseOutcome::CommittedPendingRecovery);
        tracing::warn!(
            coordinator = %coordinator.name,
            global_id = global,
            "a branch of a committed two-phase transaction could not be committed now; \
             recovery commits it"
        );
    }
    for (frame, observer) in branches.frames.iter().zip(&branches.observers) {
        run::after_end(
            Phase::AfterCommit,
            frame.session.hook_holder(),
            Arc::clone(frame.engine.hooks()),
            Some(observer.clone()),
            TxEvent::new(&frame.info(), TxOutcome::Committed, None),
        )
        .await;
    }
    Ok(())
}
