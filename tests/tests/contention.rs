//! Contention management: attempts wait for their turn in this process
//! before they reach the database. Declared conflict keys serialise equal
//! keys and not different ones; waiters are admitted first come, first
//! served; a wait counts against the call's deadline and leaves nothing
//! behind when its future is dropped; only the outermost call waits; a
//! retry waits for one of its function's turns instead of running beside
//! them, skipping its backoff only when no turn is free (the lane); on
//! SQLite, writers take turns per file. How the limit is tuned is
//! unit-tested in the runtime (`admission::tuner`) and measured in the
//! contended benchmark.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use covet_txn::{ConflictKeys, Contention, Error, Failure, TxManager, transactional};
use covet_txn_tests::{AppError, each_backend};
use tokio::sync::{Mutex, Notify, Semaphore};

/// A one-row query whose answer every backend gives as a 64-bit integer.
const PROBE: &str = "SELECT COUNT(*) FROM (SELECT 1 AS one) AS probe";

/// Waits for the holder to hold its turn, failing instead of hanging if it
/// never does.
async fn held(holding: &Notify) {
    let waited = tokio::time::timeout(Duration::from_secs(10), holding.notified()).await;
    assert!(waited.is_ok(), "the holder never took its turn");
}

/// How many bodies run at once, and the most that ever did.
#[derive(Default)]
struct Occupancy {
    inside: AtomicU32,
    most: AtomicU32,
}

impl Occupancy {
    fn enter(&self) {
        let now = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.inside.fetch_sub(1, Ordering::SeqCst);
    }

    fn most(&self) -> u32 {
        self.most.load(Ordering::SeqCst)
    }
}

/// Two keys that take different slots of the key table.
fn distinct_keys(count: i64) -> Vec<i64> {
    let mut keys: Vec<i64> = Vec::new();
    let mut candidate = 1;
    while keys.len() < count as usize {
        let taken = keys
            .iter()
            .any(|key| ConflictKeys::new().with(key) == ConflictKeys::new().with(&candidate));
        if !taken {
            keys.push(candidate);
        }
        candidate += 1;
    }
    keys
}

each_backend! {
    /// A read-only transaction (SQLite runs several of those at once) that
    /// stays open for `hold`, counting how many run together.
    #[transactional(read_only = true, conflict_key = account)]
    async fn read_account(account: i64, occupancy: &Occupancy, hold: Duration) -> Result<(), AppError> {
        occupancy.enter();
        let seen = scalar(PROBE).await;
        tokio::time::sleep(hold).await;
        occupancy.leave();
        assert_eq!(seen?, 1);
        Ok(())
    }

    #[tokio::test]
    async fn calls_with_equal_keys_take_turns() {
        let Some(manager) = manager("contention_equal_keys", 4).await else { return };
        let occupancy = Occupancy::default();
        let calls = (0..4).map(|_| read_account(7, &occupancy, Duration::from_millis(30)));
        let results = manager.scope(futures_util::future::join_all(calls)).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(occupancy.most(), 1, "equal keys ran at once");
        let waits = manager.metrics().total.admission_waits;
        assert_eq!(waits, 3, "three calls waited for the first");
    }

    #[tokio::test]
    async fn calls_with_different_keys_run_at_once() {
        let Some(manager) = manager("contention_different_keys", 4).await else { return };
        let occupancy = Occupancy::default();
        let keys = distinct_keys(4);
        let calls = keys.iter().map(|key| read_account(*key, &occupancy, Duration::from_millis(60)));
        let results = manager.scope(futures_util::future::join_all(calls)).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(occupancy.most(), 4, "different keys took turns");
        assert_eq!(manager.metrics().total.admission_waits, 0);
    }

    /// Holds `account`'s turn until `release` is notified.
    #[transactional(read_only = true, conflict_key = account)]
    async fn hold_account(account: i64, holding: &Notify, release: &Notify) -> Result<(), AppError> {
        scalar(PROBE).await?;
        holding.notify_one();
        release.notified().await;
        Ok(())
    }

    #[transactional(read_only = true, conflict_key = account, timeout = "150ms")]
    async fn read_account_within(account: i64) -> Result<i64, AppError> {
        Ok(scalar(PROBE).await?)
    }

    #[tokio::test]
    async fn a_wait_for_a_turn_ends_at_the_calls_deadline() {
        let Some(manager) = manager("contention_deadline", 2).await else { return };
        let (holding, release) = (Notify::new(), Notify::new());
        let holder = manager.scope(hold_account(3, &holding, &release));
        let waiter = async {
            held(&holding).await;
            let started = Instant::now();
            let result = manager.scope(read_account_within(3)).await;
            let waited = started.elapsed();
            release.notify_one();
            (result, waited)
        };
        let (held, (result, waited)) = tokio::join!(holder, waiter);
        held.expect("the holder commits");
        assert!(
            matches!(result, Err(AppError::Tx(Error::Timeout { attempts: 1, .. }))),
            "{result:?}"
        );
        assert!(waited >= Duration::from_millis(140) && waited < Duration::from_secs(2), "{waited:?}");
        let metrics = manager.metrics().total;
        assert_eq!(metrics.timeouts, 1);
        assert_eq!(metrics.started, 1, "the waiter never began a transaction");
    }

    #[tokio::test]
    async fn a_dropped_waiter_leaves_no_turn_behind() {
        let Some(manager) = manager("contention_cancelled", 2).await else { return };
        let (holding, release) = (Notify::new(), Notify::new());
        let holder = manager.scope(hold_account(5, &holding, &release));
        let rest = async {
            held(&holding).await;
            let occupancy = Occupancy::default();
            let cut = tokio::time::timeout(
                Duration::from_millis(50),
                manager.scope(read_account(5, &occupancy, Duration::ZERO)),
            )
            .await;
            assert!(cut.is_err(), "the waiter was admitted while the key was held");
            release.notify_one();
            // Were the dropped waiter still queued, or holding the key, this
            // call would wait for ever.
            let next = tokio::time::timeout(
                Duration::from_secs(5),
                manager.scope(read_account(5, &occupancy, Duration::ZERO)),
            )
            .await;
            assert!(matches!(next, Ok(Ok(()))), "{next:?}");
            assert_eq!(occupancy.most(), 1);
        };
        let (held, ()) = tokio::join!(holder, rest);
        held.expect("the holder commits");
    }

    #[transactional(read_only = true, conflict_key = account)]
    async fn record_arrival(account: i64, order: &Mutex<Vec<u32>>, caller: u32) -> Result<(), AppError> {
        scalar(PROBE).await?;
        order.lock().await.push(caller);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiters_are_admitted_in_the_order_they_came() {
        let Some(manager) = manager("contention_fifo", 4).await else { return };
        let (holding, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let holder = tokio::spawn(manager.scope({
            let (holding, release) = (Arc::clone(&holding), Arc::clone(&release));
            async move { hold_account(9, &holding, &release).await }
        }));
        held(&holding).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for caller in 0..6 {
            let order = Arc::clone(&order);
            waiters.push(tokio::spawn(manager.scope(async move { record_arrival(9, &order, caller).await })));
            // Each waiter joins the queue before the next one is started.
            until_waiting(&manager, caller + 1).await;
        }
        release.notify_one();
        holder.await.expect("no panic").expect("the holder commits");
        for waiter in waiters {
            waiter.await.expect("no panic").expect("each waiter commits");
        }
        assert_eq!(*order.lock().await, vec![0, 1, 2, 3, 4, 5]);
    }

    #[transactional(read_only = true, conflict_key = account)]
    async fn outer_with_key(account: i64) -> Result<i64, AppError> {
        let inner = inner_with_same_key(account).await?;
        let independent = independent_with_same_key(account).await?;
        Ok(inner + independent)
    }

    #[transactional(read_only = true, conflict_key = account, contention = "adaptive")]
    async fn inner_with_same_key(account: i64) -> Result<i64, AppError> {
        Ok(scalar(PROBE).await?)
    }

    #[transactional(read_only = true, propagation = "requires_new", conflict_key = account)]
    async fn independent_with_same_key(account: i64) -> Result<i64, AppError> {
        Ok(scalar(PROBE).await?)
    }

    #[tokio::test]
    async fn calls_inside_a_transaction_never_wait_for_a_turn() {
        let Some(manager) = manager("contention_nested", 2).await else { return };
        let nested = tokio::time::timeout(Duration::from_secs(5), manager.scope(outer_with_key(11))).await;
        assert!(matches!(nested, Ok(Ok(2))), "a nested call waited for its caller's key: {nested:?}");
        assert_eq!(manager.metrics().total.admission_waits, 0);
    }

    /// Holds its turn for 40 ms, counting how many run together; with
    /// `failing`, its first attempt fails with a real conflict at once.
    #[transactional(contention = "adaptive", retry = 3, backoff = "1ms")]
    async fn crowded_or_conflicting(failing: Option<&FailOnce>, occupancy: &Occupancy) -> Result<(), AppError> {
        occupancy.enter();
        let stepped = match failing {
            Some(failing) => failing.step().await,
            None => Ok(()),
        };
        if stepped.is_ok() {
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        occupancy.leave();
        Ok(stepped?)
    }

    #[tokio::test]
    async fn a_retry_waits_for_one_of_the_functions_turns() {
        let Some(manager) = manager("contention_retry_turn", 2).await else { return };
        let failing = FailOnce::arm(&manager, "contention_retry_turn", "40001").await;
        let occupancy = Occupancy::default();
        let conflicting = crowded_or_conflicting(Some(&failing), &occupancy);
        let crowd = futures_util::future::join_all((0..4).map(|_| crowded_or_conflicting(None, &occupancy)));
        let (retried, crowd) = manager.scope(futures_util::future::join(conflicting, crowd)).await;
        retried.expect("the retry commits");
        assert!(crowd.iter().all(Result::is_ok), "{crowd:?}");
        assert_eq!(failing.attempts.load(Ordering::SeqCst), 2);
        // The pool's size is the limit: a retry beside two first attempts
        // would make three.
        assert!(occupancy.most() <= 2, "{} attempts ran at once", occupancy.most());
        let metrics = manager.metrics();
        let [status] = metrics.admission.as_slice() else { panic!("{:?}", metrics.admission) };
        assert!(status.function.ends_with("crowded_or_conflicting"), "{}", status.function);
        assert_eq!(status.limit, Some(2.0));
        assert_eq!(status.waiting, 0);
    }

    #[transactional(read_only = true, contention = "adaptive")]
    async fn crowded(occupancy: &Occupancy) -> Result<(), AppError> {
        occupancy.enter();
        let seen = scalar(PROBE).await;
        tokio::time::sleep(Duration::from_millis(40)).await;
        occupancy.leave();
        seen?;
        Ok(())
    }

    #[tokio::test]
    async fn first_attempts_wait_for_the_functions_limit() {
        let Some(pool) = pool("contention_crowded", 2).await else { return };
        let manager = TxManager::builder(pool).contention(Contention::Adaptive).build();
        let occupancy = Occupancy::default();
        let calls = (0..6).map(|_| crowded(&occupancy));
        let results = manager.scope(futures_util::future::join_all(calls)).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(occupancy.most(), 2);
        let waits = manager.metrics().total.admission_waits;
        assert_eq!(waits, 4, "the calls past the limit waited for it, not for the pool");
    }

    /// One call among others of the same function (see `LetGo`).
    #[transactional(
        read_only = true,
        contention = "adaptive",
        retry = 3,
        backoff = "400ms",
        max_backoff = "400ms",
        retry_if = retry_refusals
    )]
    async fn let_go(call: &LetGo) -> Result<(), AppError> {
        call.run().await
    }

    /// The same without contention management.
    #[transactional(read_only = true, retry = 3, backoff = "400ms", max_backoff = "400ms", retry_if = retry_refusals)]
    async fn let_go_unmanaged(call: &LetGo) -> Result<(), AppError> {
        call.run().await
    }

    #[tokio::test]
    async fn a_retry_waits_in_the_lane_when_no_turn_is_free() {
        let Some(manager) = manager("contention_lane", 2).await else { return };
        let (holder, refused, waiter) = (LetGo::new(false), LetGo::new(true), LetGo::new(false));
        // Each call in a task of its own, as in a service: calls joined in
        // one task are planned as holding the task's connections, and such
        // a call is never admitted.
        let spawn = |call: &Arc<LetGo>| {
            let call = Arc::clone(call);
            tokio::spawn(manager.clone().scope(async move { let_go(&call).await }))
        };
        let (results, retries) = retries_logged(async {
            let holding = spawn(&holder);
            held(&holder.inside).await;
            let retrying = spawn(&refused);
            held(&refused.inside).await;
            let waiting = spawn(&waiter);
            until_waiting(&manager, 1).await;
            // Refused: its turn goes to the waiting first attempt, and its
            // retry waits for the next one, which the holder gives back.
            refused.go.add_permits(2);
            held(&waiter.inside).await;
            until_waiting(&manager, 1).await;
            holder.go.add_permits(1);
            waiter.go.add_permits(1);
            let mut results = Vec::new();
            for call in [holding, retrying, waiting] {
                results.push(call.await.expect("no panic"));
            }
            results
        })
        .await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(retries, [Retried { wait_ms: 0.0, in_lane: true }]);
    }

    #[tokio::test]
    async fn a_retry_with_a_turn_free_sleeps_its_backoff() {
        let Some(manager) = manager("contention_lane_alone", 2).await else { return };
        // Alone, a turn is free at once: skipping the backoff would only
        // make the retry compete again at once, so it sleeps it, as it
        // would without contention management.
        let call = LetGo::new(true);
        call.go.add_permits(2);
        assert_slept_its_backoff(retries_logged(manager.scope(let_go(&call))).await);
        let call = LetGo::new(true);
        call.go.add_permits(2);
        assert_slept_its_backoff(retries_logged(manager.scope(let_go_unmanaged(&call))).await);
    }
}

/// One call's part: it says it is inside its transaction, waits to be let
/// go, and is refused once (an error `retry_if` retries) if it was told to
/// be.
struct LetGo {
    inside: Notify,
    go: Semaphore,
    refuse_once: AtomicBool,
}

impl LetGo {
    fn new(refuse_once: bool) -> Arc<LetGo> {
        Arc::new(LetGo {
            inside: Notify::new(),
            go: Semaphore::new(0),
            refuse_once: AtomicBool::new(refuse_once),
        })
    }

    /// The body of one attempt.
    async fn run(&self) -> Result<(), AppError> {
        self.inside.notify_one();
        self.go.acquire().await.expect("never closed").forget();
        if self.refuse_once.swap(false, Ordering::SeqCst) {
            return Err(AppError::Refused("once"));
        }
        Ok(())
    }
}

fn retry_refusals(failure: &Failure<'_>) -> bool {
    failure.error().to_string().contains("refused")
}

/// Waits until `count` attempts of the manager's functions wait for a turn,
/// failing instead of hanging if they never do.
async fn until_waiting<DB: covet_txn::Backend>(manager: &TxManager<DB>, count: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: u32 = manager
            .metrics()
            .admission
            .iter()
            .map(|status| status.waiting)
            .sum();
        if waiting == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{waiting} attempts wait for a turn, not {count}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The call committed after one retry that slept its backoff: drawn from
/// half to one and a half times 400 ms, capped at 400 ms.
fn assert_slept_its_backoff((result, retries): (Result<(), AppError>, Vec<Retried>)) {
    result.expect("the retry commits");
    let [
        Retried {
            wait_ms,
            in_lane: false,
        },
    ] = retries.as_slice()
    else {
        panic!("{retries:?}")
    };
    assert!((200.0..=400.0).contains(wait_ms), "{wait_ms}");
}

/// What a `retrying the transaction` event said.
#[derive(Debug, Default, PartialEq)]
struct Retried {
    wait_ms: f64,
    in_lane: bool,
}

/// Collects the retry events of the thread it is the default subscriber of
/// (a `#[tokio::test]` runs every task of its runtime on its one thread).
#[derive(Default)]
struct RetryLog(std::sync::Mutex<Vec<Retried>>);

/// One event's fields, of which only a retry's are kept.
#[derive(Default)]
struct RetryFields {
    retrying: bool,
    retried: Retried,
}

impl tracing::field::Visit for RetryFields {
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        if field.name() == "wait_ms" {
            self.retried.wait_ms = value;
        }
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        if field.name() == "in_lane" {
            self.retried.in_lane = value;
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.retrying = format!("{value:?}") == "retrying the transaction";
        }
    }
}

impl tracing::Subscriber for RetryLog {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        metadata.target() == "covet_txn" && metadata.is_event()
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = RetryFields::default();
        event.record(&mut fields);
        if fields.retrying {
            self.0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(fields.retried);
        }
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

/// `work`'s output and the retry events it logged on this thread.
async fn retries_logged<F: std::future::Future>(work: F) -> (F::Output, Vec<Retried>) {
    let log = Arc::new(RetryLog::default());
    let output = {
        let _default = tracing::subscriber::set_default(Arc::clone(&log));
        work.await
    };
    let logged = std::mem::take(
        &mut *log
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    );
    (output, logged)
}

mod sqlite_writers {
    use super::*;

    #[transactional]
    async fn plain_write(table: &str) -> Result<(), AppError> {
        let update = format!("UPDATE {table} SET v = v + 1 WHERE id = 1");
        sqlx::raw_sql(sqlx::AssertSqlSafe(update))
            .execute(&mut *covet_txn::sqlite::conn()?)
            .await?;
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_writers_take_turns_per_file_across_managers() {
        let table = "contention_writers";
        let Some(first) = covet_txn_tests::sqlite(table, 4).await else {
            return;
        };
        sqlx::raw_sql("CREATE TABLE contention_writers (id BIGINT PRIMARY KEY, v BIGINT NOT NULL); INSERT INTO contention_writers VALUES (1, 0)")
            .execute(&first)
            .await
            .expect("setup");
        let Some(second) = covet_txn_tests::sqlite_shared(table, 4).await else {
            return;
        };
        let managers = [first, second].map(|pool| {
            TxManager::builder(pool)
                .contention(Contention::Adaptive)
                .build()
        });
        let mut tasks = Vec::new();
        for task in 0..8 {
            let manager = managers[task % 2].clone();
            tasks.push(tokio::spawn(
                manager
                    .clone()
                    .scope(async move { plain_write(table).await }),
            ));
        }
        for task in tasks {
            task.await.expect("no panic").expect("each write commits");
        }
        let waits: u64 = managers
            .iter()
            .map(|manager| manager.metrics().total.admission_waits)
            .sum();
        assert!(waits > 0, "no writer waited for its turn in the process");
        let busy: u64 = managers
            .iter()
            .map(|manager| manager.metrics().total.busy)
            .sum();
        assert_eq!(busy, 0);
        let total: i64 = sqlx::query_scalar("SELECT v FROM contention_writers WHERE id = 1")
            .fetch_one(managers[0].pool())
            .await
            .expect("reads");
        assert_eq!(total, 8);
    }
}

/// Declared keys keep read-modify-write increments of one row from losing an
/// update or conflicting, at REPEATABLE READ and at SERIALIZABLE. On MySQL
/// and MariaDB at SERIALIZABLE, where every read waits for a committing
/// transaction's locks, the next call with the key begins while the COMMIT
/// before it is in flight; at REPEATABLE READ, where a read takes a
/// snapshot, it must begin only once that COMMIT is answered, or it would
/// read the value before it and write it back plus one, losing an
/// increment. PostgreSQL's reads never wait for a writer, so there every
/// call waits for the answer, or it would fail with a serialization failure.
macro_rules! keyed_increments {
    ($module:ident, $pool:path, $conn:path, $first:literal, $second:literal) => {
        mod $module {
            use super::*;

            #[transactional(isolation = "serializable", retry = 5, conflict_key = counter)]
            async fn increment_serializable(table: &str, counter: i64) -> Result<u32, AppError> {
                increment(table, counter).await
            }

            #[transactional(isolation = "repeatable_read", retry = 5, conflict_key = counter)]
            async fn increment_repeatable_read(table: &str, counter: i64) -> Result<u32, AppError> {
                increment(table, counter).await
            }

            /// Reads the counter, lets the other tasks run, writes it plus
            /// one; returns the attempt it took.
            async fn increment(table: &str, counter: i64) -> Result<u32, AppError> {
                let read = format!(concat!("SELECT value FROM {} WHERE id = ", $first), table);
                let value: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(read))
                    .bind(counter)
                    .fetch_one(&mut *$conn()?)
                    .await?;
                tokio::task::yield_now().await;
                let write = format!(
                    concat!("UPDATE {} SET value = ", $first, " WHERE id = ", $second),
                    table
                );
                sqlx::query(sqlx::AssertSqlSafe(write))
                    .bind(value + 1)
                    .bind(counter)
                    .execute(&mut *$conn()?)
                    .await?;
                Ok(covet_txn::current().map_or(0, |info| info.attempt))
            }

            async fn run(table: &'static str, serializable: bool) {
                let Some(pool) = $pool(4).await else { return };
                let setup = [
                    format!("DROP TABLE IF EXISTS {table}"),
                    format!("CREATE TABLE {table} (id BIGINT PRIMARY KEY, value BIGINT NOT NULL)"),
                    format!("INSERT INTO {table} (id, value) VALUES (1, 0)"),
                ];
                for sql in setup {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .execute(&pool)
                        .await
                        .expect("sets up");
                }
                let manager = TxManager::new(pool.clone());
                let tasks = (0..4).map(|_| {
                    manager.scope(async move {
                        let mut attempts = Vec::new();
                        for _ in 0..25 {
                            let attempt = if serializable {
                                increment_serializable(table, 1).await
                            } else {
                                increment_repeatable_read(table, 1).await
                            };
                            attempts.push(attempt.expect("increments"));
                        }
                        attempts
                    })
                });
                let attempts: Vec<u32> = futures_util::future::join_all(tasks).await.concat();
                assert!(
                    attempts.iter().all(|attempt| *attempt == 1),
                    "an increment was retried: {attempts:?}"
                );
                let value: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT value FROM {table} WHERE id = 1"
                )))
                .fetch_one(&pool)
                .await
                .expect("reads");
                assert_eq!(value, 100, "an increment was lost");
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn keyed_increments_at_serializable_lose_nothing_and_never_conflict() {
                run(concat!("keyed_serializable_", stringify!($module)), true).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn keyed_increments_at_repeatable_read_lose_nothing_and_never_conflict() {
                run(concat!("keyed_repeatable_", stringify!($module)), false).await;
            }
        }
    };
}

keyed_increments!(
    on_postgres,
    covet_txn_tests::postgres,
    covet_txn::postgres::conn,
    "$1",
    "$2"
);
keyed_increments!(
    on_mariadb,
    covet_txn_tests::mysql,
    covet_txn::mysql::conn,
    "?",
    "?"
);
