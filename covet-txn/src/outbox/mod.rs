//! A transactional outbox (feature `outbox`): side effects that survive a
//! crash, the durable sibling of [`on_commit`](crate::on_commit()).
//!
//! [`enqueue`] writes a message to an outbox table through the running
//! transaction's connection, one statement, so that the message exists if
//! and only if the transaction commits (a savepoint that rolls back takes
//! it with it). A relay ([`Outbox::relay`]) claims committed messages in
//! leased batches and hands each to its topic's handler, at least once:
//!
//! - a relay that dies mid-handler leaves a lease that expires, and the
//!   message is claimed again (so handlers must be idempotent: a message's
//!   [`id`](Message::id) names it across deliveries);
//! - several relays, in one process or many, share a table without
//!   delivering a message twice while their leases hold (`FOR UPDATE SKIP
//!   LOCKED` on PostgreSQL and MariaDB, one writer at a time on SQLite);
//! - messages with the same ordering key are delivered one at a time, in
//!   order, and different keys in parallel;
//! - a failing handler is retried with the backoff of a [`RetryPolicy`];
//!   after the last attempt the message is a dead letter, listed by
//!   [`Outbox::dead_letters`] and sent again by [`Outbox::redrive`].
//!
//! A relay in the process that committed wakes at once; relays of other
//! processes wake through `LISTEN/NOTIFY` on PostgreSQL (the enqueue's
//! statement notifies, and PostgreSQL delivers it at COMMIT) and poll
//! elsewhere.
//!
//! This module owns the public face (the table, enqueueing, dead letters);
//! `relay` owns delivery, `metrics` the counts, `shared` what one process
//! shares per table. The SQL of each backend lives in the driver layer.

mod metrics;
mod relay;
mod shared;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;

use self::shared::Shared;
use crate::backend::outbox::{ClaimedRow, Maintenance, valid_table_name};
use crate::context;
use crate::engine::{Backend, Engine, EngineVisitor};
use crate::error::Error;
use crate::manager::TxManager;
use crate::retry::RetryPolicy;

pub use self::metrics::{OutboxMetrics, TopicCounts};
pub use self::relay::{Relay, RelayBuilder, Retention};

/// The table [`enqueue`] writes to and [`Outbox::default`] names.
pub const DEFAULT_TABLE: &str = "covet_outbox";

/// An outbox table: enqueue into it, create it, start its relay, inspect and
/// re-drive its dead letters. Cheap to clone; values naming the same table
/// share their wake-ups and counters within the process.
///
/// ```no_run
/// # async fn demo(manager: covet_txn::TxManager<sqlx::Postgres>) -> Result<(), covet_txn::Error> {
/// use covet_txn::outbox::Outbox;
///
/// let outbox = Outbox::default(); // the table `covet_outbox`
/// outbox.migrate(manager.pool()).await?;
/// let relay = outbox
///     .relay(&manager)
///     .handler("order-placed", |message| async move {
///         println!("deliver {} (attempt {})", message.payload_text(), message.attempt);
///         Ok::<_, std::io::Error>(())
///     })
///     .start()
///     .await?;
/// # relay.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox {
            shared: Shared::of(DEFAULT_TABLE),
        }
    }
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("table", &self.shared.table)
            .finish()
    }
}

impl Outbox {
    /// The outbox in `table`: an SQL identifier (letters, digits and `_`,
    /// not starting with a digit, at most 48 characters), or
    /// [`Error::InvalidOption`].
    pub fn new(table: &str) -> Result<Outbox, Error> {
        if !valid_table_name(table) {
            return Err(Error::InvalidOption(format!(
                "`{table}` is not a valid outbox table name: use letters, digits and `_`, \
                 not starting with a digit, at most 48 characters"
            )));
        }
        Ok(Outbox {
            shared: Shared::of(table),
        })
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.shared.table
    }

    /// Writes a message for `topic` in the running transaction; see
    /// [`enqueue`]. The payload is serialised at once: the future borrows
    /// nothing.
    pub fn enqueue<T: Serialize + ?Sized>(&self, topic: &str, payload: &T) -> Enqueue {
        self.insert(topic, None, serde_json::to_string(payload))
    }

    /// Writes a message for `topic` with an ordering key: messages of one
    /// key are delivered one at a time, in the order their transactions
    /// committed (on MariaDB, in the order of their INSERTs: see the
    /// crate's README).
    pub fn enqueue_keyed<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        key: &str,
        payload: &T,
    ) -> Enqueue {
        self.insert(topic, Some(key.to_owned()), serde_json::to_string(payload))
    }

    fn insert(
        &self,
        topic: &str,
        key: Option<String>,
        payload: Result<String, serde_json::Error>,
    ) -> Enqueue {
        let shared = Arc::clone(&self.shared);
        let topic = topic.to_owned();
        Enqueue(Box::pin(async move {
            let payload = payload.map_err(Error::Payload)?;
            let engine = context::head()
                .and_then(|head| {
                    head.chain()
                        .find(|frame| frame.session.core().transactional)
                        .map(|frame| frame.engine.clone())
                })
                .ok_or(Error::NoTransaction)?;
            engine
                .visit(Insert {
                    shared: &shared,
                    topic: &topic,
                    key: key.as_deref(),
                    payload,
                })
                .await?;
            crate::hooks::on_commit(move || async move { shared.enqueue_committed(&topic) }).await;
            Ok(())
        }))
    }

    /// The statements that create the table and its indexes on backend
    /// `DB`, as [`migrate`](Self::migrate) runs them. On PostgreSQL:
    ///
    /// ```sql
    /// CREATE TABLE IF NOT EXISTS covet_outbox (
    ///     id BIGSERIAL PRIMARY KEY,
    ///     topic VARCHAR(255) NOT NULL, ordering_key VARCHAR(255), payload TEXT NOT NULL,
    ///     created_at_ms BIGINT NOT NULL, state BIGINT NOT NULL DEFAULT 0,
    ///     attempts BIGINT NOT NULL DEFAULT 0, next_attempt_at_ms BIGINT NOT NULL,
    ///     lease_owner VARCHAR(100), lease_until_ms BIGINT, last_error TEXT,
    ///     delivered_at_ms BIGINT);
    /// CREATE INDEX IF NOT EXISTS covet_outbox_pending ON covet_outbox (state, id);
    /// CREATE INDEX IF NOT EXISTS covet_outbox_by_key ON covet_outbox (ordering_key, state, id);
    /// ```
    ///
    /// MariaDB writes `id BIGINT AUTO_INCREMENT PRIMARY KEY` and `LONGTEXT`,
    /// SQLite `id INTEGER PRIMARY KEY AUTOINCREMENT` (ids are never reused)
    /// and `INTEGER`. `state` is 0 while undelivered, 1 delivered and kept
    /// (see [`Retention`]), 2 dead; times are Unix milliseconds.
    pub fn schema_sql<DB: Backend>(&self) -> String {
        self.shared.statements::<DB>().schema.join(";\n") + ";\n"
    }

    /// Creates the table and its indexes if they are missing.
    pub async fn migrate<DB: Backend>(&self, pool: &sqlx::Pool<DB>) -> Result<(), Error> {
        let statements = self.shared.statements::<DB>();
        DB::outbox_execute(pool, &statements, Maintenance::CreateSchema).await?;
        Ok(())
    }

    /// The dead letters: messages that ran out of attempts, oldest first,
    /// each with the last handler error.
    pub async fn dead_letters<DB: Backend>(
        &self,
        pool: &sqlx::Pool<DB>,
    ) -> Result<Vec<Message>, Error> {
        let statements = self.shared.statements::<DB>();
        let rows = DB::outbox_dead_letters(pool, &statements).await?;
        Ok(rows.into_iter().map(Message::from).collect())
    }

    /// Sends dead letter `id` again, with a fresh count of attempts; `false`
    /// if no dead letter has that id.
    pub async fn redrive<DB: Backend>(
        &self,
        pool: &sqlx::Pool<DB>,
        id: i64,
    ) -> Result<bool, Error> {
        let changed = self
            .maintain(pool, Maintenance::Redrive(Some(id), now_ms()))
            .await?;
        Ok(changed > 0)
    }

    /// Sends every dead letter again; returns how many.
    pub async fn redrive_all<DB: Backend>(&self, pool: &sqlx::Pool<DB>) -> Result<u64, Error> {
        self.maintain(pool, Maintenance::Redrive(None, now_ms()))
            .await
    }

    async fn maintain<DB: Backend>(
        &self,
        pool: &sqlx::Pool<DB>,
        work: Maintenance,
    ) -> Result<u64, Error> {
        let statements = self.shared.statements::<DB>();
        let changed = DB::outbox_execute(pool, &statements, work).await?;
        // A re-driven message is deliverable now: wake this process' relays.
        self.shared
            .committed
            .send_modify(|generation| *generation += 1);
        Ok(changed)
    }

    /// This process' counts for the table, and its lag.
    pub fn metrics(&self) -> OutboxMetrics {
        self.shared.counters.snapshot(&self.shared.table)
    }

    /// A relay for this table on `manager`'s pool: name a handler per topic,
    /// then [`start`](RelayBuilder::start) it.
    pub fn relay<DB: Backend>(&self, manager: &TxManager<DB>) -> RelayBuilder<DB> {
        RelayBuilder::new(Arc::clone(&self.shared), manager.clone())
    }
}

/// Writes a message for `topic` to the [default outbox](DEFAULT_TABLE) in
/// the running transaction, through its connection (one statement): the
/// message exists if and only if the transaction commits, and a savepoint
/// that rolls back takes it with it. The payload is serialised as JSON.
/// Outside a transaction it fails with [`Error::NoTransaction`]: a message
/// that is not part of a transaction is what `on_commit` is for.
///
/// ```no_run
/// # #[derive(serde::Serialize)] struct OrderPlaced { id: i64 }
/// #[covet_txn::transactional]
/// async fn place_order(id: i64) -> Result<(), covet_txn::Error> {
///     // ... INSERT the order through covet_txn::conn() ...
///     covet_txn::outbox::enqueue("order-placed", &OrderPlaced { id }).await
/// }
/// ```
pub fn enqueue<T: Serialize + ?Sized>(topic: &str, payload: &T) -> Enqueue {
    Outbox::default().enqueue(topic, payload)
}

/// The future of an enqueue: await it inside the transaction. It borrows
/// nothing (the payload is serialised when the enqueue is called), so a
/// closure can return it.
#[must_use = "the message is written when the future is awaited"]
pub struct Enqueue(BoxFuture<'static, Result<(), Error>>);

impl Future for Enqueue {
    type Output = Result<(), Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

/// A message as a handler receives it, or as a dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Unique for the table's life: a second delivery of a message carries
    /// the same id, which is how an idempotent handler recognises it.
    pub id: i64,
    /// The topic it was enqueued for.
    pub topic: String,
    /// Its ordering key, if it has one.
    pub ordering_key: Option<String>,
    /// Which delivery this is, from 1.
    pub attempt: u32,
    /// When it was enqueued (the enqueuing process' clock).
    pub created_at: SystemTime,
    /// The last handler error (dead letters, and messages being retried).
    pub last_error: Option<String>,
    payload: String,
}

impl Message {
    /// The payload, deserialised from JSON.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.payload)
    }

    /// The payload's JSON text.
    pub fn payload_text(&self) -> &str {
        &self.payload
    }
}

impl From<ClaimedRow> for Message {
    fn from(row: ClaimedRow) -> Self {
        Message {
            id: row.id,
            topic: row.topic,
            ordering_key: row.ordering_key,
            attempt: u32::try_from(row.attempts).unwrap_or(u32::MAX),
            created_at: UNIX_EPOCH
                + Duration::from_millis(u64::try_from(row.created_at_ms).unwrap_or(0)),
            last_error: row.last_error,
            payload: row.payload,
        }
    }
}

/// Milliseconds since the Unix epoch, the outbox's clock.
pub(crate) fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// The enqueue's INSERT, run on the typed engine of the running
/// transaction.
struct Insert<'a> {
    shared: &'a Shared,
    topic: &'a str,
    key: Option<&'a str>,
    payload: String,
}

impl<'a> EngineVisitor for Insert<'a> {
    type Output = BoxFuture<'a, Result<(), Error>>;

    fn visit<DB: Backend>(self, engine: &Arc<Engine<DB>>) -> Self::Output {
        let manager_id = engine.id;
        Box::pin(async move {
            let statements = self.shared.statements::<DB>();
            let mut conn = context::lend::<DB>(|frame| {
                let core = frame.session.core();
                core.manager_id == manager_id && core.transactional
            })?;
            let row = (self.topic, self.key, self.payload, now_ms());
            DB::outbox_insert(&mut conn, &statements, row).await?;
            Ok(())
        })
    }
}

/// The retry policy a relay starts from: 9 retries (10 deliveries), waits
/// growing from 100 ms to a minute.
pub(crate) const DEFAULT_RETRY: RetryPolicy = RetryPolicy::new()
    .retries(9)
    .backoff(Duration::from_millis(100))
    .max_backoff(Duration::from_secs(60));
