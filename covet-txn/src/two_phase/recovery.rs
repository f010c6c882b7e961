//! Recovery: finishing the branches a crash (of the coordinator, or of a
//! connection between the phases) left prepared, as the decision log says,
//! and forgetting decisions whose branches are all finished.
//!
//! Decisions are read before the branches are listed: a decision recorded
//! later belongs to a call whose branches are prepared by then, so a branch
//! missing from the listing is truly finished, and a decision is never
//! forgotten while a branch still needs it.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use super::{Coordinator, ids};
use crate::dialect::{BranchId, Decision};
use crate::engine::Via;
use crate::error::Error;

/// What one recovery pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Branches committed, as their decision said.
    pub committed: u32,
    /// Branches rolled back: their decision was to abort, or there was none
    /// (presumed abort).
    pub rolled_back: u32,
    /// Branches left prepared: younger than the recovery grace, or held by
    /// a connection that is still alive.
    pub left_in_doubt: u32,
    /// Decisions forgotten because every branch is finished.
    pub forgotten: u32,
}

pub(crate) async fn recover(coordinator: &Coordinator) -> Result<RecoveryReport, Error> {
    let decided: BTreeMap<String, Decision> =
        coordinator.log.decisions().await?.into_iter().collect();
    let now = ids::unix_millis_now();
    let mut report = RecoveryReport::default();
    let mut listed = HashSet::new();
    let mut oldest: Option<Duration> = None;
    for participant in &coordinator.participants {
        let branches = participant.engine.prepared_branches().await?;
        for branch in branches {
            let Some((owner, born)) = ids::parse_global(branch.global()) else {
                continue;
            };
            if owner != coordinator.name || branch.participant() != participant.name {
                continue;
            }
            listed.insert(branch.global().to_owned());
            let age = Duration::from_millis(now.saturating_sub(born));
            let decision = match decided.get(branch.global()) {
                Some(decision) => Some(*decision),
                None if age < coordinator.recovery_grace => None,
                // Presumed abort: the first record wins, so a coordinator
                // that records COMMIT meanwhile makes this an abort of
                // nothing, and its own decision stands.
                None => Some(
                    coordinator
                        .log
                        .decide(branch.global(), Decision::Abort)
                        .await?,
                ),
            };
            let finished = match decision {
                Some(decision) => finish(coordinator, participant, &branch, decision).await?,
                None => false,
            };
            if finished {
                if decision == Some(Decision::Commit) {
                    report.committed += 1;
                } else {
                    report.rolled_back += 1;
                }
            } else {
                report.left_in_doubt += 1;
                oldest = Some(oldest.map_or(age, |oldest| oldest.max(age)));
            }
        }
    }
    for global in decided.keys().filter(|global| !listed.contains(*global)) {
        coordinator.log.forget(global, Via::Dedicated).await?;
        report.forgotten += 1;
    }
    coordinator
        .counters
        .set_in_doubt(u64::from(report.left_in_doubt), oldest);
    if let Some(age) = oldest.filter(|age| *age >= coordinator.alert_after) {
        tracing::error!(
            coordinator = %coordinator.name,
            in_doubt = report.left_in_doubt,
            oldest_seconds = age.as_secs(),
            "prepared branches of two-phase transactions stay in doubt, holding their locks: \
             check the participants' connections (a live connection holding a MySQL XA branch \
             keeps recovery from finishing it)"
        );
    }
    Ok(report)
}

async fn finish(
    coordinator: &Coordinator,
    participant: &super::Participant,
    branch: &BranchId,
    decision: Decision,
) -> Result<bool, Error> {
    let commit = decision == Decision::Commit;
    let finished = participant.engine.finish_branch(branch, commit).await?;
    if finished {
        coordinator.counters.recovered(commit);
        tracing::info!(
            coordinator = %coordinator.name,
            global_id = branch.global(),
            participant = branch.participant(),
            decision = decision.as_str(),
            "two-phase recovery finished a prepared branch"
        );
    }
    Ok(finished)
}
