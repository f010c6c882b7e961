//! The transactional outbox: a message exists if and only if its
//! transaction commits, and the relay delivers it at least once, in key
//! order, with retries, dead letters and re-drives, woken by the commit.
//! Crashes and several relay processes are in `outbox_crash.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use covet_txn::outbox::{Message, Outbox};
use covet_txn::{Error, RetryPolicy, TxOptions};
use covet_txn_tests::each_backend;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Note {
    text: String,
}

fn note(text: &str) -> Note {
    Note {
        text: text.to_owned(),
    }
}

/// Enqueues a note in the running transaction.
async fn send(
    outbox: &Outbox,
    topic: &str,
    key: Option<&str>,
    text: impl AsRef<str>,
) -> Result<(), Error> {
    let payload = note(text.as_ref());
    match key {
        Some(key) => outbox.enqueue_keyed(topic, key, &payload).await,
        None => outbox.enqueue(topic, &payload).await,
    }
}

/// Handlers running at once, per key and in all.
#[derive(Default)]
struct InFlight {
    per_key: HashMap<String, u32>,
    now: u32,
    peak: u32,
    /// Times a handler began while another of its key ran.
    overlaps: u32,
}

impl InFlight {
    fn begin(&mut self, key: &str) {
        let running = self.per_key.entry(key.to_owned()).or_default();
        if *running > 0 {
            self.overlaps += 1;
        }
        *running += 1;
        self.now += 1;
        self.peak = self.peak.max(self.now);
    }

    fn end(&mut self, key: &str) {
        *self.per_key.entry(key.to_owned()).or_default() -= 1;
        self.now -= 1;
    }
}

/// What a test's handler received, in order.
#[derive(Clone, Default)]
struct Received {
    messages: Arc<Mutex<Vec<Message>>>,
    arrived: Arc<Notify>,
}

impl Received {
    fn record(&self, message: Message) {
        self.messages
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(message);
        self.arrived.notify_waiters();
    }

    fn all(&self) -> Vec<Message> {
        self.messages
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn texts(&self) -> Vec<String> {
        self.all()
            .iter()
            .map(|message| match message.payload::<Note>() {
                Ok(note) => note.text,
                Err(error) => panic!("payload {}: {error}", message.payload_text()),
            })
            .collect()
    }

    /// Waits until `count` messages arrived, failing after `limit`.
    async fn wait_for(&self, count: usize, limit: Duration) {
        let waited = tokio::time::timeout(limit, async {
            loop {
                let arrived = self.arrived.notified();
                if self.all().len() >= count {
                    return;
                }
                arrived.await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "{count} messages expected within {limit:?}, got {:?}",
            self.texts()
        );
    }

    /// A handler that records every message.
    fn handler(
        &self,
    ) -> impl Fn(Message) -> std::future::Ready<Result<(), Error>> + Send + Sync + 'static {
        let received = self.clone();
        move |message| {
            received.record(message);
            std::future::ready(Ok(()))
        }
    }
}

each_backend! {
    use super::{note, send, InFlight, Note, Received};

    /// A fresh outbox table of this test's own.
    /// Named per backend too: an outbox's counters are per table name in
    /// the process, and the three backends' tests run in one process.
    async fn fresh_outbox(pool: &::sqlx::Pool<Db>, test: &str) -> Outbox {
        let table = format!("{test}_{BACKEND}");
        let drop = format!("DROP TABLE IF EXISTS {table}");
        ::sqlx::raw_sql(::sqlx::AssertSqlSafe(drop)).execute(pool).await.expect("drops the table");
        let outbox = Outbox::new(&table).expect("a valid table name");
        outbox.migrate(pool).await.expect("creates the table");
        outbox
    }

    /// The dead letters, once there are any (within 5 s).
    async fn dead_letters(pool: &::sqlx::Pool<Db>, outbox: &Outbox) -> Vec<Message> {
        for _ in 0..250 {
            let dead = outbox.dead_letters(pool).await.expect("lists dead letters");
            if !dead.is_empty() {
                return dead;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Vec::new()
    }

    async fn pending(pool: &::sqlx::Pool<Db>, outbox: &Outbox) -> i64 {
        pool_scalar(pool, format!("SELECT COUNT(*) FROM {}", outbox.table())).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_committed_messages_are_delivered() {
        let Some(manager) = manager("outbox_commit", 4).await else { return };
        let outbox = fresh_outbox(manager.pool(), "outbox_commit").await;
        let received = Received::default();
        let relay = outbox
            .relay(&manager)
            .handler("notes", received.handler())
            .start()
            .await
            .expect("starts");

        let committed: Result<(), Error> = manager
            .transaction(TxOptions::new(), || send(&outbox, "notes", None, "committed"))
            .await;
        committed.expect("commits");
        let rolled_back: Result<(), Error> = manager
            .transaction(TxOptions::new(), || async {
                outbox.enqueue("notes", &note("rolled back")).await?;
                Err(Error::InvalidOption("roll back".to_owned()))
            })
            .await;
        assert!(rolled_back.is_err());
        let outer: Result<(), Error> = manager
            .transaction(TxOptions::new(), || async {
                let inner: Result<(), Error> = manager
                    .transaction(TxOptions::new(), || async {
                        outbox.enqueue("notes", &note("in a rolled-back savepoint")).await?;
                        Err(Error::InvalidOption("roll back the savepoint".to_owned()))
                    })
                    .await;
                assert!(inner.is_err());
                outbox.enqueue("notes", &note("after the savepoint")).await
            })
            .await;
        outer.expect("the outer transaction commits");

        received.wait_for(2, Duration::from_secs(10)).await;
        // Give a wrongly kept message time to arrive too.
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Messages without a key go out in parallel, in no promised order.
        let mut texts = received.texts();
        texts.sort();
        assert_eq!(texts, ["after the savepoint", "committed"]);
        assert_eq!(pending(manager.pool(), &outbox).await, 0, "delivered messages are deleted");
        let first = &received.all()[0];
        assert_eq!((first.topic.as_str(), first.attempt, first.ordering_key.as_deref()), ("notes", 1, None));
        let counts = outbox.metrics().topics["notes"];
        assert_eq!((counts.enqueued, counts.delivered, counts.failed), (2, 2, 0));

        let outside = outbox.enqueue("notes", &note("outside")).await;
        assert!(matches!(outside, Err(Error::NoTransaction)), "{outside:?}");
        relay.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kept_messages_stay_delivered_for_their_retention_then_go() {
        let Some(manager) = manager("outbox_keep", 4).await else { return };
        let outbox = fresh_outbox(manager.pool(), "outbox_keep").await;
        let received = Received::default();
        let relay = outbox
            .relay(&manager)
            .handler("notes", received.handler())
            .retention(covet_txn::outbox::Retention::Keep(Duration::from_secs(2)))
            .poll_interval(Duration::from_millis(100))
            .start()
            .await
            .expect("starts");
        commit_note(&manager, &outbox, "kept").await;
        received.wait_for(1, Duration::from_secs(5)).await;
        let kept = format!("SELECT COUNT(*) FROM {} WHERE state = 1", outbox.table());
        let mut archived = 0;
        for _ in 0..20 {
            archived = pool_scalar(manager.pool(), kept.clone()).await;
            if archived == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(archived, 1, "the delivered message is kept, marked delivered");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while pending(manager.pool(), &outbox).await > 0 {
            assert!(std::time::Instant::now() < deadline, "never deleted after its retention");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(received.all().len(), 1, "an archived message is not delivered again");
        relay.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_handler_is_a_failed_delivery() {
        let Some(manager) = manager("outbox_panic", 4).await else { return };
        let outbox = fresh_outbox(manager.pool(), "outbox_panic").await;
        let relay = outbox
            .relay(&manager)
            .retry_policy(RetryPolicy::new().retries(0))
            .handler("notes", |message: Message| async move {
                panic!("the handler of message {} panics", message.id);
                #[allow(unreachable_code)]
                Ok::<_, Error>(())
            })
            .start()
            .await
            .expect("starts");
        commit_note(&manager, &outbox, "boom").await;
        let dead = dead_letters(manager.pool(), &outbox).await;
        assert_eq!(dead.len(), 1, "the message is a dead letter after its one delivery");
        assert_eq!(dead[0].last_error.as_deref(), Some("the handler panicked"));
        assert_eq!(outbox.metrics().topics["notes"].dead_lettered, 1);
        relay.shutdown().await;
    }

    /// A relay that only a wake-up reaches in time: it polls once an hour,
    /// and has already looked once and found nothing.
    async fn sleeping_relay(
        manager: &covet_txn::TxManager<Db>,
        outbox: &Outbox,
        in_process: bool,
    ) -> (covet_txn::outbox::Relay, Received) {
        let received = Received::default();
        let relay = outbox
            .relay(manager)
            .handler("notes", received.handler())
            .poll_interval(Duration::from_secs(3600))
            .in_process_wake(in_process)
            .listen(!in_process)
            .start()
            .await
            .expect("starts");
        tokio::time::sleep(Duration::from_millis(200)).await;
        (relay, received)
    }

    async fn commit_note(manager: &covet_txn::TxManager<Db>, outbox: &Outbox, text: &str) {
        let committed: Result<(), Error> = manager
            .transaction(TxOptions::new(), || send(outbox, "notes", None, text))
            .await;
        committed.expect("commits");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_in_the_process_wakes_the_relay_at_once() {
        let Some(manager) = manager("outbox_wake", 4).await else { return };
        let outbox = fresh_outbox(manager.pool(), "outbox_wake").await;
        let (relay, received) = sleeping_relay(&manager, &outbox, true).await;
        for (count, text) in [(1, "one"), (2, "two")] {
            commit_note(&manager, &outbox, text).await;
            received.wait_for(count, Duration::from_secs(2)).await;
        }
        // The manager's metrics, and so its dashboard, show the table (a
        // delivery is counted once its row is finished, just after the
        // handler returns).
        let mut delivered = 0;
        for _ in 0..40 {
            let tables = manager.metrics().outbox;
            let shown = tables
                .iter()
                .find(|table| table.table == outbox.table())
                .unwrap_or_else(|| panic!("the table is not in {tables:?}"));
            delivered = shown.topics.values().map(|counts| counts.delivered).sum();
            if delivered >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(delivered, 2);
        relay.shutdown().await;
    }

    /// Another process' commit: PostgreSQL notifies, elsewhere the relay
    /// waits for its poll.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_the_in_process_wake_up_only_postgresql_notifies() {
        let Some(manager) = manager("outbox_listen", 4).await else { return };
        let outbox = fresh_outbox(manager.pool(), "outbox_listen").await;
        let (relay, received) = sleeping_relay(&manager, &outbox, false).await;
        commit_note(&manager, &outbox, "notified").await;
        if BACKEND == "postgresql" {
            received.wait_for(1, Duration::from_secs(3)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(received.all().is_empty(), "a relay was woken without a notification");
        }
        relay.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_of_one_key_arrive_one_at_a_time_in_commit_order() {
        let Some(manager) = manager("outbox_keys", 8).await else { return };
        let outbox = fresh_outbox(manager.pool(), "outbox_keys").await;
        let keys = ["alpha", "beta", "gamma", "delta"];
        for round in 0..15 {
            for key in keys {
                let committed: Result<(), Error> = manager
                    .transaction(TxOptions::new(), || {
                        send(&outbox, "orders", Some(key), format!("{key} {round}"))
                    })
                    .await;
                committed.expect("commits");
            }
        }
        let received = Received::default();
        let running: Arc<Mutex<InFlight>> = Arc::default();
        let (record, state) = (received.clone(), Arc::clone(&running));
        let relay = outbox
            .relay(&manager)
            .concurrency(8)
            .handler("orders", move |message: Message| {
                let (record, state) = (record.clone(), Arc::clone(&state));
                async move {
                    let key = message.ordering_key.clone().expect("a keyed message");
                    state.lock().expect("not poisoned").begin(&key);
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(1..6))).await;
                    state.lock().expect("not poisoned").end(&key);
                    record.record(message);
                    Ok::<_, Error>(())
                }
            })
            .start()
            .await
            .expect("starts");
        received.wait_for(60, Duration::from_secs(30)).await;
        relay.shutdown().await;
        for key in keys {
            let order: Vec<String> = received
                .texts()
                .into_iter()
                .filter(|text| text.starts_with(key))
                .collect();
            let expected: Vec<String> = (0..15).map(|round| format!("{key} {round}")).collect();
            assert_eq!(order, expected, "key {key} out of order");
        }
        let running = running.lock().expect("not poisoned");
        assert_eq!(running.overlaps, 0, "two messages of one key were in flight at once");
        assert!(running.peak > 1, "different keys never ran in parallel (peak {})", running.peak);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_message_is_retried_then_dead_lettered_and_redriven() {
        let Some(manager) = manager("outbox_dead", 4).await else { return };
        let outbox = fresh_outbox(manager.pool(), "outbox_dead").await;
        let received = Received::default();
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (record, fail) = (received.clone(), Arc::clone(&failing));
        let relay = outbox
            .relay(&manager)
            .retry_policy(RetryPolicy::new().retries(2).backoff(Duration::from_millis(20)))
            .handler("mail", move |message: Message| {
                let (record, fail) = (record.clone(), Arc::clone(&fail));
                async move {
                    let failed = fail.load(std::sync::atomic::Ordering::SeqCst);
                    record.record(message);
                    if failed { Err("mail server down".to_owned()) } else { Ok(()) }
                }
            })
            .start()
            .await
            .expect("starts");
        let committed: Result<(), Error> = manager
            .transaction(TxOptions::new(), || send(&outbox, "mail", None, "welcome"))
            .await;
        committed.expect("commits");
        received.wait_for(3, Duration::from_secs(10)).await;
        let attempts: Vec<u32> = received.all().iter().map(|message| message.attempt).collect();
        assert_eq!(attempts, [1, 2, 3]);

        let dead = dead_letters(manager.pool(), &outbox).await;
        assert_eq!(dead.len(), 1, "one dead letter");
        let letter = &dead[0];
        assert_eq!((letter.topic.as_str(), letter.attempt), ("mail", 3));
        assert_eq!(letter.last_error.as_deref(), Some("mail server down"));
        assert_eq!(letter.payload::<Note>().expect("a note"), note("welcome"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(received.all().len(), 3, "a dead letter is not delivered again by itself");
        let counts = outbox.metrics().topics["mail"];
        assert_eq!((counts.failed, counts.dead_lettered, counts.delivered), (3, 1, 0));
        let text = outbox.metrics().prometheus_text();
        assert!(
            text.contains(&format!("covet_txn_outbox_dead_lettered_total{{table=\"outbox_dead_{BACKEND}\",topic=\"mail\"}} 1")),
            "{text}"
        );

        failing.store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(outbox.redrive(manager.pool(), letter.id).await.expect("re-drives"));
        assert!(!outbox.redrive(manager.pool(), letter.id).await.expect("re-drives"), "no longer dead");
        received.wait_for(4, Duration::from_secs(10)).await;
        let last = &received.all()[3];
        assert_eq!((last.id, last.attempt), (letter.id, 1));
        relay.shutdown().await;
        assert!(outbox.dead_letters(manager.pool()).await.expect("lists").is_empty());
        assert_eq!(pending(manager.pool(), &outbox).await, 0);
    }
}

mod postgres_only {
    use super::*;

    /// Concurrent transactions enqueue under one key, then bump a counter
    /// row, whose lock orders them as they commit, and log their message's
    /// id with the count: ids must follow the counter (the order of the
    /// commits), and delivery the ids.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_key_follows_commit_order_under_concurrent_producers() {
        let Some(pool) = covet_txn_tests::postgres(10).await else {
            return;
        };
        sqlx::raw_sql(
            "DROP TABLE IF EXISTS outbox_commit_order; \
             DROP TABLE IF EXISTS outbox_commit_order_counter; \
             DROP TABLE IF EXISTS outbox_commit_order_log; \
             CREATE TABLE outbox_commit_order_counter (n BIGINT NOT NULL); \
             CREATE TABLE outbox_commit_order_log (id BIGINT NOT NULL, n BIGINT NOT NULL); \
             INSERT INTO outbox_commit_order_counter VALUES (0)",
        )
        .execute(&pool)
        .await
        .expect("creates the counter");
        let outbox = Outbox::new("outbox_commit_order").expect("valid");
        outbox.migrate(&pool).await.expect("migrates");
        let manager = covet_txn::TxManager::new(pool);
        let producers = (0..8).map(|_| {
            let (manager, outbox) = (manager.clone(), outbox.clone());
            tokio::spawn(async move {
                for _ in 0..10 {
                    let committed: Result<(), Error> = manager
                        .transaction(TxOptions::new(), || async {
                            outbox.enqueue_keyed("ordered", "one-key", &note("pending")).await?;
                            tokio::time::sleep(Duration::from_millis(fastrand::u64(0..3))).await;
                            sqlx::query(
                                "WITH bumped AS (UPDATE outbox_commit_order_counter SET n = n + 1 RETURNING n) \
                                 INSERT INTO outbox_commit_order_log (id, n) \
                                 SELECT currval(pg_get_serial_sequence('outbox_commit_order', 'id')), n FROM bumped",
                            )
                                .execute(&mut *covet_txn::postgres::conn()?)
                                .await?;
                            Ok(())
                        })
                        .await;
                    committed.expect("commits");
                }
            })
        });
        for producer in producers.collect::<Vec<_>>() {
            producer.await.expect("a producer finished");
        }
        let crossed: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM outbox_commit_order_log AS a \
             JOIN outbox_commit_order_log AS b ON a.id < b.id AND a.n > b.n",
        )
        .fetch_one(manager.pool())
        .await
        .expect("compares");
        assert_eq!(
            crossed, 0,
            "a message of one key took its id before one that committed earlier"
        );
        let received = Received::default();
        let relay = outbox
            .relay(&manager)
            .handler("ordered", received.handler())
            .start()
            .await
            .expect("starts");
        received.wait_for(80, Duration::from_secs(20)).await;
        relay.shutdown().await;
        let ids: Vec<i64> = received.all().iter().map(|message| message.id).collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(ids, sorted, "one key delivered out of id order");
    }

    #[test]
    fn table_names_are_identifiers() {
        for bad in ["", "1outbox", "out box", "outbox;drop", &"x".repeat(49)] {
            assert!(Outbox::new(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            Outbox::new("outbox_ok_1").expect("valid").table(),
            "outbox_ok_1"
        );
        let schema = Outbox::new("outbox_schema")
            .expect("valid")
            .schema_sql::<sqlx::Postgres>();
        assert!(
            schema
                .starts_with("CREATE TABLE IF NOT EXISTS outbox_schema (id BIGSERIAL PRIMARY KEY"),
            "{schema}"
        );
    }
}

/// The outbox's alert rules and its exposition, checked by Prometheus' own
/// tool (Debian's `prometheus` package); skipped without it unless
/// `COVET_REQUIRE_PROMETHEUS=1`.
#[test]
fn the_outbox_rules_and_exposition_pass_promtool() {
    if !covet_txn_tests::promtool_checks_rules("covet-txn-outbox.rules.yml") {
        return;
    }

    let mut metrics = covet_txn::outbox::OutboxMetrics {
        table: "outbox_promtool".to_owned(),
        lag: Some(Duration::from_millis(1500)),
        ..Default::default()
    };
    metrics.topics.insert(
        "order \"placed\"".to_owned(),
        covet_txn::outbox::TopicCounts {
            enqueued: 3,
            delivered: 2,
            failed: 1,
            dead_lettered: 0,
        },
    );
    let text = metrics.prometheus_text();
    assert!(
        text.contains("covet_txn_outbox_lag_seconds{table=\"outbox_promtool\"} 1.5"),
        "{text}"
    );
    covet_txn_tests::assert_promtool_accepts_metrics(&text);
}
