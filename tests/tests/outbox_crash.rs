//! The outbox across crashes: a process killed with SIGKILL after COMMIT
//! and before delivery, or in the middle of a handler, loses no message;
//! random kills over thousands of messages lose none and deliver none of a
//! rolled-back transaction; two relay processes never deliver a message
//! twice while both stay up. The processes are `tests/src/bin/outbox-child.rs`.

use std::process::Stdio;
use std::time::Duration;

use covet_txn::outbox::{Message, Outbox};
use covet_txn::{Error, TxOptions};
use covet_txn_tests::each_backend;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// A child process and its output, killed when dropped.
struct Process {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Process {
    fn spawn(mode: &str, backend: &str, table: &str) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_outbox-child"))
            .args([mode, backend, table])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start outbox-child: {error}"));
        let Some(stdout) = child.stdout.take() else {
            panic!("outbox-child has no stdout");
        };
        Process {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// The next line the child prints that starts with `prefix`.
    async fn expect(&mut self, prefix: &str) -> String {
        let line = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match self.lines.next_line().await {
                    Ok(Some(line)) if line.starts_with(prefix) => return line,
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => panic!("outbox-child ended before printing `{prefix}`"),
                }
            }
        })
        .await;
        line.unwrap_or_else(|_| panic!("outbox-child did not print `{prefix}` in time"))
    }

    /// SIGKILL: no destructor, no pending write, no clean shutdown.
    async fn kill(mut self) {
        self.child
            .kill()
            .await
            .unwrap_or_else(|error| panic!("cannot kill: {error}"));
    }
}

each_backend! {
    use super::{Message, Outbox, Process, TxOptions, Error};
    use std::time::{Duration, Instant};

    /// The outbox table and the record tables of one test.
    async fn tables(test: &str) -> Option<(::sqlx::Pool<Db>, Outbox, String)> {
        let table = format!("{test}_{BACKEND}");
        let pool = pool(&table, 8).await?;
        for (suffix, columns) in [
            ("", None),
            ("_produced", Some("seq BIGINT PRIMARY KEY")),
            ("_delivered", Some("message_id BIGINT NOT NULL, seq BIGINT NOT NULL, rolled_back BIGINT NOT NULL, owner BIGINT NOT NULL")),
        ] {
            let name = format!("{table}{suffix}");
            let drop = format!("DROP TABLE IF EXISTS {name}");
            ::sqlx::raw_sql(::sqlx::AssertSqlSafe(drop)).execute(&pool).await.expect("drops");
            if let Some(columns) = columns {
                reset_table(&pool, &name, columns).await;
                // The final checks look deliveries up by seq.
                let index = format!("CREATE INDEX {name}_seq ON {name} (seq)");
                ::sqlx::raw_sql(::sqlx::AssertSqlSafe(index)).execute(&pool).await.expect("indexes");
            }
        }
        let outbox = Outbox::new(&table).expect("valid");
        outbox.migrate(&pool).await.expect("migrates");
        Some((pool, outbox, table))
    }

    /// Starts a relay here that hands each message to `seen`.
    async fn relay_into(
        pool: &::sqlx::Pool<Db>,
        outbox: &Outbox,
    ) -> (covet_txn::outbox::Relay, ::tokio::sync::mpsc::UnboundedReceiver<Message>) {
        let (seen, messages) = ::tokio::sync::mpsc::unbounded_channel();
        let relay = outbox
            .relay(&covet_txn::TxManager::new(pool.clone()))
            .poll_interval(Duration::from_millis(100))
            .handler("crash", move |message: Message| {
                let sent = seen.send(message).map_err(|_| "the test stopped listening".to_owned());
                std::future::ready(sent)
            })
            .start()
            .await
            .expect("starts");
        (relay, messages)
    }

    async fn next(messages: &mut ::tokio::sync::mpsc::UnboundedReceiver<Message>) -> Message {
        match ::tokio::time::timeout(Duration::from_secs(20), messages.recv()).await {
            Ok(Some(message)) => message,
            _ => panic!("no message delivered within 20 s"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_process_killed_after_commit_loses_no_message() {
        let Some((pool, outbox, table)) = tables("outbox_after_commit").await else { return };
        let mut producer = Process::spawn("produce", BACKEND, &table);
        producer.expect("committed").await;
        producer.kill().await;
        assert_eq!(pool_scalar(&pool, format!("SELECT COUNT(*) FROM {table}")).await, 1);
        let (relay, mut messages) = relay_into(&pool, &outbox).await;
        let message = next(&mut messages).await;
        assert_eq!((message.topic.as_str(), message.attempt), ("crash", 1));
        relay.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_relay_killed_mid_handler_leaves_the_message_to_the_next_after_its_lease() {
        let Some((pool, outbox, table)) = tables("outbox_mid_handler").await else { return };
        let manager = covet_txn::TxManager::new(pool.clone());
        let committed: Result<(), Error> = manager
            .transaction(TxOptions::new(), || outbox.enqueue("crash", &serde_json::json!({"seq": 7, "rolled_back": false})))
            .await;
        committed.expect("commits");
        let mut relay_process = Process::spawn("hang", BACKEND, &table);
        let handling = relay_process.expect("handling ").await;
        let claimed_at = Instant::now();
        relay_process.kill().await;
        let (relay, mut messages) = relay_into(&pool, &outbox).await;
        let message = next(&mut messages).await;
        assert_eq!(handling, format!("handling {}", message.id), "the same message, by its id");
        assert_eq!(message.attempt, 2, "the killed delivery counts as the first");
        assert!(
            claimed_at.elapsed() >= Duration::from_millis(800),
            "delivered again before the 1 s lease expired ({:?})",
            claimed_at.elapsed()
        );
        relay.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn random_kills_lose_no_committed_message_and_deliver_no_rolled_back_one() {
        let Some((pool, outbox, table)) = tables("outbox_churn").await else { return };
        let committed = |pool| pool_scalar(pool, format!("SELECT COUNT(*) FROM {table}_produced"));
        let mut kills = 0;
        while committed(&pool).await < 2000 && kills < 60 {
            let mut child = Process::spawn("churn", BACKEND, &table);
            child.expect("ready").await;
            ::tokio::time::sleep(Duration::from_millis(fastrand::u64(100..500))).await;
            child.kill().await;
            kills += 1;
        }
        let produced = committed(&pool).await;
        assert!(produced >= 2000, "only {produced} messages committed in {kills} runs");

        // A relay of this process finishes the work, after the killed
        // relays' leases expire.
        let (relay, mut messages) = relay_into(&pool, &outbox).await;
        let record = |message: Message| {
            let churn: serde_json::Value = message.payload().expect("json");
            format!(
                "INSERT INTO {table}_delivered (message_id, seq, rolled_back, owner) VALUES ({}, {}, {}, 0)",
                message.id, churn["seq"], i64::from(churn["rolled_back"] == true)
            )
        };
        let missing = format!(
            "SELECT COUNT(*) FROM {table}_produced AS p WHERE NOT EXISTS \
             (SELECT 1 FROM {table}_delivered AS d WHERE d.seq = p.seq)"
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while pool_scalar(&pool, missing.clone()).await > 0 {
            assert!(Instant::now() < deadline, "committed messages never delivered");
            while let Ok(message) = messages.try_recv() {
                ::sqlx::raw_sql(::sqlx::AssertSqlSafe(record(message))).execute(&pool).await.expect("records");
            }
            ::tokio::time::sleep(Duration::from_millis(250)).await;
        }
        relay.shutdown().await;

        let of_rolled_back = pool_scalar(&pool, format!(
            "SELECT COUNT(*) FROM {table}_delivered WHERE rolled_back <> 0 OR seq NOT IN (SELECT seq FROM {table}_produced)"
        )).await;
        assert_eq!(of_rolled_back, 0, "a message of a rolled-back transaction was delivered");
        let inconsistent = pool_scalar(&pool, format!(
            "SELECT COUNT(*) FROM (SELECT message_id FROM {table}_delivered GROUP BY message_id \
             HAVING COUNT(DISTINCT seq) > 1) AS ids"
        )).await;
        assert_eq!(inconsistent, 0, "one id named two messages");
        let deliveries = pool_scalar(&pool, format!("SELECT COUNT(*) FROM {table}_delivered")).await;
        let distinct = pool_scalar(&pool, format!("SELECT COUNT(DISTINCT message_id) FROM {table}_delivered")).await;
        // Counted again: a COMMIT the server received just before a kill may
        // have landed after the count above.
        let produced = committed(&pool).await;
        assert_eq!(distinct, produced, "every committed message delivered, each under one id");
        eprintln!("{BACKEND}: {produced} committed messages, {kills} kills, {} duplicate deliveries", deliveries - distinct);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_relay_processes_never_deliver_a_message_twice() {
        let Some((pool, outbox, table)) = tables("outbox_two_relays").await else { return };
        let mut relays = [Process::spawn("relay", BACKEND, &table), Process::spawn("relay", BACKEND, &table)];
        for relay in &mut relays {
            relay.expect("ready").await;
        }
        let manager = covet_txn::TxManager::new(pool.clone());
        for batch in 0..20 {
            let committed: Result<(), Error> = manager
                .transaction(TxOptions::new(), || async {
                    for seq in 0..20 {
                        outbox.enqueue("crash", &serde_json::json!({"seq": batch * 20 + seq, "rolled_back": false})).await?;
                    }
                    Ok(())
                })
                .await;
            committed.expect("commits");
        }
        let delivered = format!("SELECT COUNT(DISTINCT message_id) FROM {table}_delivered");
        let deadline = Instant::now() + Duration::from_secs(60);
        while pool_scalar(&pool, delivered.clone()).await < 400 {
            assert!(Instant::now() < deadline, "400 messages not delivered in time");
            ::tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Leave time for a second delivery of anything to show.
        ::tokio::time::sleep(Duration::from_millis(300)).await;
        let [first, second] = relays;
        first.kill().await;
        second.kill().await;
        let deliveries = pool_scalar(&pool, format!("SELECT COUNT(*) FROM {table}_delivered")).await;
        assert_eq!(deliveries, 400, "a message was delivered twice");
        let owners = pool_scalar(&pool, format!("SELECT COUNT(DISTINCT owner) FROM {table}_delivered")).await;
        assert_eq!(owners, 2, "both relays took part");
    }
}
