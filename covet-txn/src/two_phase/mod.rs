//! Distributed transactions: one call's work on several databases committed
//! by two-phase commit, with the decision made durable in a log before
//! phase two, and recovery of the branches a crash leaves prepared.
//!
//! A [`TwoPhase`] coordinator runs a body with a transaction open on each
//! participant (a [`TxManager`] of PostgreSQL or MySQL/MariaDB): each
//! manager's [`conn`](TxManager::conn) reaches its participant's
//! transaction, and nested `#[transactional]` calls of a participant's
//! manager nest in it as savepoints. When the body returns `Ok`:
//!
//! 1. every branch is prepared (`PREPARE TRANSACTION`, `XA PREPARE`); any
//!    failure rolls every branch back, and a retryable one (a serialization
//!    failure, a deadlock) runs the whole call again;
//! 2. the decision to commit is recorded in the decision log (presumed
//!    abort: without a record, recovery rolls the branches back);
//! 3. every branch is committed (`COMMIT PREPARED`, `XA COMMIT`), in a task
//!    of its own that a cancelled caller does not stop; a branch that cannot
//!    be committed now is left to recovery, and the call still succeeds.
//!
//! The call's timeout covers everything before the decision and never cuts
//! phase two. `on_commit` hooks run once the decision is durable.
//!
//! This module owns the protocol; the SQL is the participants' dialects'
//! ([`PreparedTransactions`](crate::dialect::PreparedTransactions)).

mod attempt;
mod branches;
mod finish;
mod ids;
mod log;
mod recovery;
mod stats;

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::task::JoinHandle;

pub(crate) use self::attempt::Attempts;
use self::log::DecisionLog;
pub use self::recovery::RecoveryReport;
use self::stats::Counters;
pub use self::stats::{TwoPhaseOutcome, TwoPhaseStats};
use crate::engine::{Backend, EngineHandle};
use crate::error::Error;
use crate::failure::{ErrorSource, inspect_source};
use crate::manager::TxManager;
use crate::observe::two_phase::TwoPhaseView;
use crate::options::Isolation;
use crate::retry::RetryPolicy;

/// The decision log's table unless the builder names another.
pub const DEFAULT_LOG_TABLE: &str = "covet_txn_decisions";

/// A two-phase commit coordinator over a fixed set of participants.
///
/// Cheap to clone; the background recovery stops when the last clone is
/// dropped.
#[derive(Clone)]
pub struct TwoPhase {
    coordinator: Arc<Coordinator>,
}

/// One participant: a manager, known by its name.
pub(crate) struct Participant {
    pub(crate) engine: EngineHandle,
    pub(crate) name: String,
}

impl TwoPhaseView for Coordinator {
    fn stats(&self) -> TwoPhaseStats {
        self.counters.snapshot(&self.name)
    }
}

impl Coordinator {
    pub(crate) fn step(&self, step: &'static str, branch: usize) {
        if let Some(hook) = self.step_hook {
            hook(step, branch);
        }
    }
}

pub(crate) struct Coordinator {
    pub(crate) name: String,
    pub(crate) participants: Vec<Participant>,
    pub(crate) log: DecisionLog,
    /// Branches younger than this are left to the call running them.
    pub(crate) recovery_grace: Duration,
    /// An in-doubt branch older than this raises an alert.
    pub(crate) alert_after: Duration,
    pub(crate) counters: Counters,
    pub(crate) step_hook: Option<StepHook>,
    background: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let task = self
            .background
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            task.abort();
        }
    }
}

/// Called at each step of the protocol: `("prepared", n)` after branch `n`
/// (from 0) is prepared, `("decided", 0)` once the decision to commit is
/// durable, `("committed", n)` after branch `n` is committed. For tests that
/// kill the coordinator between steps.
#[doc(hidden)]
pub type StepHook = fn(&'static str, usize);

/// What a two-phase call runs with.
///
/// ```
/// use std::time::Duration;
/// use covet_txn::{Isolation, RetryPolicy};
/// use covet_txn::two_phase::TwoPhaseOptions;
///
/// let options = TwoPhaseOptions::new()
///     .isolation(Isolation::Serializable)
///     .timeout(Duration::from_secs(10))
///     .retry(RetryPolicy::new().retries(3));
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct TwoPhaseOptions {
    pub(crate) name: &'static str,
    pub(crate) isolation: Option<Isolation>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry: RetryPolicy,
}

impl TwoPhaseOptions {
    /// No isolation level of its own (each database's default), no timeout,
    /// no retry.
    pub const fn new() -> Self {
        TwoPhaseOptions {
            name: "two_phase",
            isolation: None,
            timeout: None,
            retry: RetryPolicy::new().retries(0),
        }
    }

    /// The name the call is counted and traced under on each participant.
    pub const fn name(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }

    /// The isolation level of every branch.
    pub const fn isolation(mut self, isolation: Isolation) -> Self {
        self.isolation = Some(isolation);
        self
    }

    /// The time phase one may take, all attempts together.
    pub const fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How often to run the whole call again after a failure a new attempt
    /// can fix, before any branch is committed.
    pub const fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }
}

impl Default for TwoPhaseOptions {
    fn default() -> Self {
        TwoPhaseOptions::new()
    }
}

impl TwoPhase {
    /// Starts building a coordinator named `coordinator`: 1 to 24 ASCII
    /// letters, digits, `_` or `-`, the same in every process that shares
    /// its decision log and participants, and different from every other
    /// coordinator's. Its global ids start with it, and its recovery
    /// touches no other coordinator's branches.
    pub fn builder(coordinator: &str) -> TwoPhaseBuilder {
        TwoPhaseBuilder {
            name: coordinator.to_owned(),
            participants: Vec::new(),
            log: None,
            log_table: DEFAULT_LOG_TABLE.to_owned(),
            recovery_grace: Duration::from_secs(60),
            recover_every: Some(Duration::from_secs(30)),
            alert_after: Duration::from_secs(300),
            step_hook: None,
        }
    }

    /// The coordinator's name.
    pub fn name(&self) -> &str {
        &self.coordinator.name
    }

    /// Runs `body` with a branch of one distributed transaction open on
    /// every participant, and commits all of them or none.
    ///
    /// `body` is called again for each attempt. Its error type is any
    /// `std::error::Error` that converts from [`Error`], `anyhow::Error`, or
    /// `Box<dyn Error + Send + Sync>`.
    pub async fn transaction<T, E, M, F, Fut>(
        &self,
        options: TwoPhaseOptions,
        mut body: F,
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<Error> + ErrorSource<M>,
    {
        let mut attempts = attempt::Attempts::new(Arc::clone(&self.coordinator), options);
        loop {
            if let Some(result) = attempts.attempt(inspect_source::<E, M>, body()).await {
                return result;
            }
        }
    }

    /// Finds this coordinator's prepared branches on every participant and
    /// finishes those older than the recovery grace as the decision log
    /// says (rolling back those without a decision), then forgets the
    /// decisions whose branches are all finished. Safe to run from several
    /// processes at once; the builder runs it at start-up and periodically.
    pub async fn recover(&self) -> Result<RecoveryReport, Error> {
        recovery::recover(&self.coordinator).await
    }

    /// The attempts of one call, for `#[transactional(two_phase = ..)]`.
    pub(crate) fn attempts(&self, options: TwoPhaseOptions) -> Attempts {
        Attempts::new(Arc::clone(&self.coordinator), options)
    }

    /// What the coordinator has counted.
    pub fn stats(&self) -> TwoPhaseStats {
        self.coordinator.counters.snapshot(&self.coordinator.name)
    }

    /// [`stats`](Self::stats) in Prometheus' text format:
    /// `covet_txn_two_phase_total{outcome}`, the branches recovery finished,
    /// and the in-doubt branches with the age of the oldest.
    pub fn prometheus_text(&self) -> String {
        self.coordinator.counters.exposition(&self.coordinator.name)
    }
}

/// Builds a [`TwoPhase`] coordinator.
#[must_use]
pub struct TwoPhaseBuilder {
    name: String,
    participants: Vec<Participant>,
    log: Option<EngineHandle>,
    log_table: String,
    recovery_grace: Duration,
    recover_every: Option<Duration>,
    alert_after: Duration,
    step_hook: Option<StepHook>,
}

impl TwoPhaseBuilder {
    #[doc(hidden)]
    pub fn step_hook(mut self, hook: StepHook) -> Self {
        self.step_hook = Some(hook);
        self
    }

    /// Adds a participant. Its manager's name (see
    /// [`TxManagerBuilder::name`](crate::TxManagerBuilder::name)) names its
    /// branches, so it must be unique among the participants and stay the
    /// same across restarts; two databases of one server are two
    /// participants.
    pub fn participant<DB: Backend>(mut self, manager: &TxManager<DB>) -> Self {
        self.participants.push(Participant {
            engine: manager.handle(),
            name: manager.name().to_owned(),
        });
        self
    }

    /// Where decisions are kept: a table in this manager's database,
    /// PostgreSQL or MySQL/MariaDB, shared by every process of the
    /// coordinator. The first participant's by default.
    pub fn decision_log<DB: Backend>(mut self, manager: &TxManager<DB>) -> Self {
        self.log = Some(manager.handle());
        self
    }

    /// The decision log's table ([`DEFAULT_LOG_TABLE`] by default); created
    /// by [`build`](Self::build) if it does not exist.
    pub fn log_table(mut self, table: impl Into<String>) -> Self {
        self.log_table = table.into();
        self
    }

    /// How old a prepared branch must be before recovery finishes it (60 s
    /// by default). Keep it above the longest time a call of this
    /// coordinator spends between its first PREPARE and its decision; a
    /// shorter grace is safe (the log's first record wins) but may roll
    /// back calls that were about to commit.
    pub fn recovery_grace(mut self, grace: Duration) -> Self {
        self.recovery_grace = grace;
        self
    }

    /// How often recovery runs in the background (every 30 s by default);
    /// `None` runs it only at start-up and on demand.
    pub fn recover_every(mut self, every: Option<Duration>) -> Self {
        self.recover_every = every;
        self
    }

    /// An in-doubt branch older than this is logged as an error on every
    /// recovery pass (5 minutes by default).
    pub fn alert_after(mut self, age: Duration) -> Self {
        self.alert_after = age;
        self
    }

    /// Checks the participants (each a database that can hold prepared
    /// transactions, set up to, and named uniquely), creates the decision
    /// log's table, runs recovery once, and starts the background recovery.
    /// Needs a Tokio runtime.
    pub async fn build(self) -> Result<TwoPhase, Error> {
        ids::check_name("coordinator", &self.name, ids::MAX_COORDINATOR_NAME)?;
        ids::check_table(&self.log_table)?;
        if self.participants.is_empty() {
            return Err(Error::InvalidOption(
                "a two-phase coordinator needs at least one participant".to_owned(),
            ));
        }
        for (index, participant) in self.participants.iter().enumerate() {
            ids::check_name("participant", &participant.name, ids::MAX_PARTICIPANT_NAME)?;
            let repeated = self.participants[..index].iter().any(|earlier| {
                earlier.name == participant.name || earlier.engine.id() == participant.engine.id()
            });
            if repeated {
                return Err(Error::InvalidOption(format!(
                    "participant `{}` is given twice, or shares its name with another: give \
                     each manager a distinct name with TxManager::builder(pool).name(..)",
                    participant.name
                )));
            }
            participant.engine.prepared()?;
            if let Some(reason) = participant.engine.two_phase_readiness().await? {
                return Err(Error::TwoPhaseNotReady {
                    participant: participant.name.clone(),
                    reason,
                });
            }
        }
        let log_engine = match self.log {
            Some(engine) => engine,
            None => self.participants[0].engine.clone(),
        };
        let log = DecisionLog::new(log_engine, self.log_table, self.name.clone());
        log.create().await?;
        let coordinator = Arc::new(Coordinator {
            name: self.name,
            participants: self.participants,
            log,
            recovery_grace: self.recovery_grace,
            alert_after: self.alert_after,
            counters: Counters::default(),
            step_hook: self.step_hook,
            background: std::sync::Mutex::new(None),
        });
        for participant in &coordinator.participants {
            let view: Weak<dyn TwoPhaseView> = Arc::downgrade(&coordinator) as Weak<Coordinator>;
            participant.engine.metrics().two_phase.add(view);
        }
        recovery::recover(&coordinator).await?;
        if let Some(every) = self.recover_every {
            let task = tokio::spawn(recover_periodically(Arc::downgrade(&coordinator), every));
            *coordinator
                .background
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(task);
        }
        Ok(TwoPhase { coordinator })
    }
}

async fn recover_periodically(coordinator: Weak<Coordinator>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(coordinator) = coordinator.upgrade() else {
            return;
        };
        if let Err(error) = recovery::recover(&coordinator).await {
            tracing::warn!(
                coordinator = %coordinator.name,
                %error,
                "two-phase recovery failed; it runs again at the next interval"
            );
        }
    }
}
