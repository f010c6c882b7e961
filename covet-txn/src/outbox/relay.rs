//! The relay: a background task that claims committed messages in leased
//! batches, runs each topic's handler (at most `concurrency` at once, one
//! at a time per ordering key, since only the first undelivered message of
//! a key can be claimed), and settles each outcome: delivered messages are
//! deleted or archived, failures rescheduled with the retry policy's
//! backoff, and the last failure dead-lettered.
//!
//! It waits between claims for a commit in this process, a PostgreSQL
//! notification, a handler finishing, a retry falling due, or the poll
//! interval, whichever comes first.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::shared::Shared;
use super::{DEFAULT_RETRY, Message, now_ms};
use crate::backend::outbox::{ClaimRequest, ClaimedRow, Finish, Maintenance, Statements};
use crate::engine::Backend;
use crate::error::Error;
use crate::manager::TxManager;
use crate::retry::RetryPolicy;

type BoxError = Box<dyn StdError + Send + Sync + 'static>;
type Handler = Arc<dyn Fn(Message) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;

/// What happens to a delivered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Retention {
    /// Deleted as soon as its handler succeeds (the default).
    #[default]
    Delete,
    /// Kept, marked delivered, for this long, then deleted by the relay.
    Keep(Duration),
}

/// Settings of a relay, from [`Outbox::relay`](super::Outbox::relay).
pub struct RelayBuilder<DB: Backend> {
    shared: Arc<Shared>,
    manager: TxManager<DB>,
    handlers: HashMap<String, Handler>,
    concurrency: usize,
    batch_size: usize,
    lease: Duration,
    poll_interval: Duration,
    retry: RetryPolicy,
    retention: Retention,
    owner: Option<String>,
    listen: bool,
    in_process_wake: bool,
}

impl<DB: Backend> RelayBuilder<DB> {
    pub(super) fn new(shared: Arc<Shared>, manager: TxManager<DB>) -> Self {
        RelayBuilder {
            shared,
            manager,
            handlers: HashMap::new(),
            concurrency: 16,
            batch_size: 32,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            retry: DEFAULT_RETRY,
            retention: Retention::Delete,
            owner: None,
            listen: true,
            in_process_wake: true,
        }
    }

    /// Delivers the messages of `topic` to `handler`. An `Err` (or a
    /// panic) is a failed delivery, retried later. The handler runs with
    /// the relay's manager as the task's default, so `#[transactional]`
    /// calls inside it need no `manager` argument. Messages of topics
    /// without a handler are left for other relays.
    pub fn handler<F, Fut, E>(mut self, topic: impl Into<String>, handler: F) -> Self
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let handler: Handler = Arc::new(move |message| {
            let delivery = handler(message);
            Box::pin(async move { delivery.await.map_err(Into::into) })
        });
        self.handlers.insert(topic.into(), handler);
        self
    }

    /// Handlers running at once, across keys (default 16).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Messages claimed per statement, at most (default 32).
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// How long a claim holds a message (default 30 s): a relay that dies
    /// mid-handler delays the message's next delivery by this much, and a
    /// handler that runs longer may see its message delivered again by
    /// another relay.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How often to look for messages without being woken (default 1 s):
    /// what other processes' commits wait for where the database cannot
    /// notify (MariaDB, SQLite), and when expired leases are taken over.
    pub fn poll_interval(mut self, poll_interval: Duration) -> Self {
        self.poll_interval = poll_interval;
        self
    }

    /// Deliveries and the waits between them: a message gets
    /// `max_retries() + 1` deliveries, then becomes a dead letter (default:
    /// 10 deliveries, waits from 100 ms growing ×2 to a minute, jittered).
    pub fn retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// What happens to delivered messages (default: deleted).
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// The name this relay's leases carry (default: the process id and a
    /// random number). Two running relays must not share one.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Whether to LISTEN for other processes' commits on PostgreSQL
    /// (default on; no effect elsewhere). The listener holds one of the
    /// pool's connections for as long as the relay runs.
    pub fn listen(mut self, listen: bool) -> Self {
        self.listen = listen;
        self
    }

    /// Whether a commit in this process wakes the relay at once (default
    /// on).
    pub fn in_process_wake(mut self, wake: bool) -> Self {
        self.in_process_wake = wake;
        self
    }

    /// Starts the relay on the current tokio runtime. Fails with
    /// [`Error::InvalidOption`] without a handler, and with the database's
    /// error if PostgreSQL's LISTEN cannot be set up.
    pub async fn start(self) -> Result<Relay, Error> {
        if self.handlers.is_empty() {
            return Err(Error::InvalidOption(
                "an outbox relay needs at least one handler".to_owned(),
            ));
        }
        // The manager's metrics (and so its dashboard) show the table.
        let view: std::sync::Weak<dyn crate::observe::outbox::OutboxView> =
            Arc::downgrade(&self.shared) as std::sync::Weak<super::shared::Shared>;
        self.manager.handle().metrics().outbox.add(view);
        let notified = Arc::new(Notify::new());
        let listener = if self.listen {
            DB::outbox_listen(
                self.manager.pool(),
                &self.shared.table,
                Arc::clone(&notified),
            )
            .await?
        } else {
            None
        };
        let owner = self
            .owner
            .clone()
            .unwrap_or_else(|| format!("{}-{:016x}", std::process::id(), fastrand::u64(..)));
        let (stop, stopped) = watch::channel(false);
        let topics = self.handlers.keys().cloned().collect();
        let state = Arc::new(RelayState {
            statements: self.shared.statements::<DB>(),
            topics,
            owner: owner.clone(),
            notified,
            settings: self,
        });
        let task = tokio::spawn(state.run(stopped));
        Ok(Relay {
            owner,
            stop,
            task: Some(task),
            listener,
        })
    }
}

/// A running relay. [`shutdown`](Self::shutdown) stops it after the
/// handlers in flight finish; dropping it stops it too, without waiting.
pub struct Relay {
    owner: String,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    listener: Option<JoinHandle<()>>,
}

impl Relay {
    /// The name its leases carry.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Stops claiming, and returns when the handlers in flight have
    /// finished and their outcomes are recorded.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            // A panic in the loop itself has been reported by tokio already.
            let _ = task.await;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Some(listener) = self.listener.take() {
            listener.abort();
        }
    }
}

/// What the relay's task owns.
struct RelayState<DB: Backend> {
    settings: RelayBuilder<DB>,
    statements: Arc<Statements>,
    topics: Vec<String>,
    owner: String,
    /// Woken by PostgreSQL notifications.
    notified: Arc<Notify>,
}

impl<DB: Backend> RelayState<DB> {
    async fn run(self: Arc<Self>, mut stopped: watch::Receiver<bool>) {
        let settings = &self.settings;
        let mut committed = settings
            .in_process_wake
            .then(|| settings.shared.committed.subscribe());
        let mut in_flight: JoinSet<Option<Instant>> = JoinSet::new();
        let mut retry_due: Option<Instant> = None;
        let mut upkeep_due = Instant::now();
        while !*stopped.borrow() {
            if Instant::now() >= upkeep_due {
                self.upkeep().await;
                upkeep_due = Instant::now() + settings.poll_interval;
            }
            // Settle every finished delivery first, so that one claim
            // fills all the free slots.
            while let Some(finished) = in_flight.try_join_next() {
                if let Ok(Some(due)) = finished {
                    retry_due = Some(retry_due.map_or(due, |earlier| earlier.min(due)));
                }
            }
            let free = settings.concurrency.saturating_sub(in_flight.len());
            let wanted = free.min(settings.batch_size);
            let mut more = false;
            if wanted > 0 {
                match self.claim(wanted).await {
                    Ok(rows) => {
                        more = rows.len() == wanted;
                        for row in rows {
                            in_flight.spawn(Arc::clone(&self).deliver(row));
                        }
                    }
                    Err(error) => tracing::warn!(
                        target: "covet_txn::outbox",
                        table = %settings.shared.table,
                        %error,
                        "claiming outbox messages failed; trying again at the next poll"
                    ),
                }
            }
            if more && in_flight.len() < settings.concurrency {
                continue;
            }
            let poll = Instant::now() + settings.poll_interval;
            let deadline = retry_due.map_or(poll, |due| due.min(poll));
            tokio::select! {
                _ = stopped.changed() => {}
                _ = wait_for(committed.as_mut()) => {}
                () = self.notified.notified() => {}
                Some(finished) = in_flight.join_next(), if !in_flight.is_empty() => {
                    if let Ok(Some(due)) = finished {
                        retry_due = Some(retry_due.map_or(due, |earlier| earlier.min(due)));
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    if retry_due.is_some_and(|due| due <= Instant::now()) {
                        retry_due = None;
                    }
                }
            }
        }
        while in_flight.join_next().await.is_some() {}
    }

    async fn claim(&self, wanted: usize) -> Result<Vec<ClaimedRow>, sqlx::Error> {
        let now = now_ms();
        let lease = i64::try_from(self.settings.lease.as_millis()).unwrap_or(i64::MAX);
        let request = ClaimRequest {
            now_ms: now,
            lease_until_ms: now.saturating_add(lease),
            owner: &self.owner,
            topics: &self.topics,
            limit: i64::try_from(wanted).unwrap_or(i64::MAX),
        };
        DB::outbox_claim(self.settings.manager.pool(), &self.statements, request).await
    }

    /// Runs one message's handler and records the outcome; returns when a
    /// failed message falls due again.
    async fn deliver(self: Arc<Self>, row: ClaimedRow) -> Option<Instant> {
        let settings = &self.settings;
        let counters = &settings.shared.counters;
        let message = Message::from(row);
        let (id, attempt, topic) = (message.id, message.attempt, message.topic.clone());
        let handler = settings.handlers.get(&topic)?;
        // Called inside the future, so that a handler that panics before
        // returning its future fails the delivery like one that panics in it.
        let delivery = settings.manager.scope(async { handler(message).await });
        let error = match AssertUnwindSafe(delivery).catch_unwind().await {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(error.to_string()),
            Err(_) => Some("the handler panicked".to_owned()),
        };
        let (finish, due) = match error {
            None => {
                counters.count(&topic, |counts| counts.delivered += 1);
                let finish = match settings.retention {
                    Retention::Delete => Finish::Delete,
                    Retention::Keep(_) => Finish::Archive(now_ms()),
                };
                (finish, None)
            }
            Some(error) => {
                let dead = attempt > settings.retry.max_retries();
                let delay = settings.retry.delay(attempt);
                let millis = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
                let due_ms = now_ms().saturating_add(millis);
                counters.count(&topic, |counts| {
                    counts.failed += 1;
                    counts.dead_lettered += u64::from(dead);
                });
                tracing::warn!(
                    target: "covet_txn::outbox",
                    id, topic, attempt, dead, %error,
                    "an outbox handler failed"
                );
                if dead {
                    (Finish::Dead(due_ms, error), None)
                } else {
                    (Finish::Retry(due_ms, error), Some(Instant::now() + delay))
                }
            }
        };
        let pool = settings.manager.pool();
        let owned = (id, self.owner.as_str());
        if let Err(error) = DB::outbox_finish(pool, &self.statements, owned, finish).await {
            tracing::warn!(
                target: "covet_txn::outbox",
                id, %error,
                "an outbox message's outcome could not be recorded; it will be delivered \
                 again when its lease expires"
            );
        }
        due
    }

    /// Measures the lag and deletes archived messages past their retention.
    async fn upkeep(&self) {
        let pool = self.settings.manager.pool();
        let shared = &self.settings.shared;
        match DB::outbox_oldest_pending(pool, &self.statements).await {
            Ok(oldest) => {
                let age = oldest.map_or(0, |created| now_ms().saturating_sub(created));
                shared
                    .counters
                    .set_lag(Duration::from_millis(u64::try_from(age).unwrap_or(0)));
            }
            Err(error) => tracing::warn!(
                target: "covet_txn::outbox",
                %error,
                "measuring the outbox's lag failed"
            ),
        }
        if let Retention::Keep(keep) = self.settings.retention {
            let keep = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
            let before = now_ms().saturating_sub(keep);
            let purge = Maintenance::PurgeArchived(before);
            if let Err(error) = DB::outbox_execute(pool, &self.statements, purge).await {
                tracing::warn!(
                    target: "covet_txn::outbox",
                    %error,
                    "deleting delivered outbox messages past their retention failed"
                );
            }
        }
    }
}

/// Waits for the next in-process commit, or for ever without the wake-up.
async fn wait_for(committed: Option<&mut watch::Receiver<u64>>) {
    match committed {
        Some(receiver) => {
            if receiver.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}
