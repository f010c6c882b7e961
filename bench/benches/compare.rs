//! covet-txn against hand-written sqlx, side by side in one run: latency,
//! client CPU and allocations per transaction for each scenario, the
//! queries each side sends, contended transfers with retry, and the memory
//! an open transaction holds. The harness and what makes it fair are in the
//! crate's `src/` (see its docs).

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use covet_txn::{Error, TxManager, transactional};
use covet_txn_bench::alloc;
use covet_txn_bench::measure::{self, Comparison, interleaved, percentile};
use covet_txn_bench::proxy::{Protocol, QueryCounter, resolve};
use covet_txn_bench::retry;
use sqlx::{Connection, Executor, Pool};

mod outbox;
#[path = "compare/replicas.rs"]
mod replicas;

/// Whether `name` is listed in the comma-separated variable (everything is,
/// when it is unset): `COVET_BENCH_SCENARIOS` takes `latency`, `contended`,
/// `memory`, `outbox`, `replicas`; `COVET_BENCH_BACKENDS` takes `postgres`, `mariadb`, `sqlite`.
fn wanted(variable: &str, name: &str) -> bool {
    std::env::var(variable).map_or(true, |list| list.split(',').any(|part| part.trim() == name))
}

fn scenario(name: &str) -> bool {
    wanted("COVET_BENCH_SCENARIOS", name)
}

fn backend(name: &str) -> bool {
    wanted("COVET_BENCH_BACKENDS", name)
}

/// One scenario's results, printed as a row of each table.
struct Row {
    backend: &'static str,
    scenario: &'static str,
    comparison: Comparison,
    queries: Option<(f64, f64)>,
    allocations: (f64, f64),
}

fn optional(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |value| format!("{value:.1}"))
}

impl Row {
    fn print_latency(&mut self) {
        let queries = self.queries.map_or_else(
            || "in-process | in-process".to_owned(),
            |(hand, covet)| format!("{hand:.0} | {covet:.0}"),
        );
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.3} | {queries} |",
            self.backend,
            self.scenario,
            self.comparison.hand.median_us(),
            self.comparison.covet.median_us(),
            self.comparison.ratio(),
        );
    }

    fn print_cost(&self) {
        let (hand_thread, hand_process) = self.comparison.hand.cpu_per_call_us();
        let (covet_thread, covet_process) = self.comparison.covet.cpu_per_call_us();
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.1} | {:.1} |",
            self.backend,
            self.scenario,
            optional(hand_thread),
            optional(covet_thread),
            optional(hand_process),
            optional(covet_process),
            self.allocations.0,
            self.allocations.1,
        );
    }
}

/// One side of the contended transfers.
#[derive(Default)]
struct Contention {
    committed: u64,
    retries: u64,
    gave_up: u64,
    latencies: Vec<Duration>,
    wall: Duration,
    /// Committed per second in each round, in order.
    round_rates: Vec<f64>,
    /// CPU spent during the side's rounds, by this process and by the
    /// whole machine (the servers included), when the kernel tells.
    client_cpu: Option<u64>,
    machine_cpu: Option<u64>,
}

impl Contention {
    fn absorb(&mut self, other: Contention) {
        self.round_rates.push(other.per_second());
        self.committed += other.committed;
        self.retries += other.retries;
        self.gave_up += other.gave_up;
        self.latencies.extend(other.latencies);
        self.wall += other.wall;
        measure::add(&mut self.client_cpu, other.client_cpu);
        measure::add(&mut self.machine_cpu, other.machine_cpu);
    }

    /// Microseconds of `cpu` per attempt (a commit, a retry or a give-up).
    fn per_attempt_us(&self, cpu: Option<u64>) -> String {
        let attempts = (self.committed + self.retries + self.gave_up).max(1);
        cpu.map_or_else(
            || "–".to_owned(),
            |cpu| format!("{:.0}", cpu as f64 / attempts as f64 / 1000.0),
        )
    }

    fn per_second(&self) -> f64 {
        self.committed as f64 / self.wall.as_secs_f64()
    }

    fn p99_ms(&mut self) -> f64 {
        percentile(&mut self.latencies, 0.99).as_secs_f64() * 1000.0
    }

    /// One row per side, each with its ratios to the hand-written loop.
    fn print_cell(mut sides: [Contention; 3], backend: &str, cell: Cell) {
        let hand_rate = sides[0].per_second();
        let hand_p99 = sides[0].p99_ms();
        let managed = if cell.keyed {
            "covet-txn, conflict_key = [from, to]"
        } else {
            "covet-txn, contention = \"adaptive\""
        };
        let hand_rounds = sides[0].round_rates.clone();
        for (index, side) in sides.iter_mut().enumerate() {
            if side.latencies.is_empty() {
                continue;
            }
            let name = if index == 2 { managed } else { SIDES[index] };
            let (rate, p99) = (side.per_second(), side.p99_ms());
            // The ratio of each round to the hand-written round run next to
            // it: how far one round's noise moves the ratio.
            let round_ratios: Vec<f64> = side
                .round_rates
                .iter()
                .zip(&hand_rounds)
                .map(|(side, hand)| side / hand)
                .collect();
            let low = round_ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let high = round_ratios.iter().copied().fold(0.0, f64::max);
            println!(
                "| {backend} | {} × {} | {name} | {rate:.0} | {:.2} | {low:.2}–{high:.2} | {} | {} | {p99:.1} | {:.2} | {} | {} |",
                cell.rows,
                cell.tasks,
                rate / hand_rate,
                side.retries,
                side.gave_up,
                p99 / hand_p99,
                side.per_attempt_us(side.client_cpu),
                side.per_attempt_us(side.machine_cpu),
            );
        }
    }
}

const TRANSFERS_PER_TASK: usize = 100;
const MAX_RETRIES: u32 = 10;
const FIRST_BACKOFF: Duration = Duration::from_millis(1);
const MAX_BACKOFF: Duration = Duration::from_millis(50);

/// Rounds per side of each contended cell (`COVET_BENCH_CONTENDED_ROUNDS`,
/// default 6): fewer for a quick A/B run of one cell.
fn contended_rounds() -> usize {
    std::env::var("COVET_BENCH_CONTENDED_ROUNDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(6)
}

/// Whether the contended side `side` runs: `COVET_BENCH_SIDES` takes `off`
/// and `managed` (the hand-written loop always runs: the ratios are to it).
fn side_wanted(side: usize) -> bool {
    side == 0 || wanted("COVET_BENCH_SIDES", ["hand", "off", "managed"][side])
}

/// One cell of the contended scenario: transfers among `rows` hot rows by
/// `tasks` tasks at once, the managed side admitting attempts adaptively or
/// (`keyed`) waiting for the two accounts' conflict keys.
#[derive(Clone, Copy)]
struct Cell {
    rows: i64,
    tasks: usize,
    keyed: bool,
}

impl Cell {
    /// Whether the cell runs: `COVET_BENCH_CELLS` takes names such as
    /// `10x8`, `10x8-keys`, `10x16`, `100x8`.
    fn wanted(&self) -> bool {
        let keys = if self.keyed { "-keys" } else { "" };
        wanted(
            "COVET_BENCH_CELLS",
            &format!("{}x{}{keys}", self.rows, self.tasks),
        )
    }
}

/// The sides of a contended cell, in the order they are printed.
const SIDES: [&str; 3] = [
    "hand-written loop",
    "covet-txn, contention off",
    "covet-txn, managed",
];

/// The scenarios, written once per backend; `$begins` is the module with
/// a careful hand's serializable and read-only transactions there.
macro_rules! backend {
    ($module:ident, $db:ty, $p1:literal, $p2:literal, $begins:ident, $conn:path, $failure:expr) => {
        #[allow(dead_code)]
        mod $module {
            use super::*;

            pub type Db = $db;
            const UPDATE: &str = concat!("UPDATE bench_accounts SET balance = balance + 1 WHERE id = ", $p1);
            const READ: &str = concat!("SELECT balance FROM bench_accounts WHERE id = ", $p1);
            const MOVE: &str = concat!("UPDATE bench_accounts SET balance = balance + ", $p1, " WHERE id = ", $p2);
            const HOT_READ: &str = concat!("SELECT balance FROM contention_bench_accounts WHERE id = ", $p1);
            const HOT_MOVE: &str = concat!("UPDATE contention_bench_accounts SET balance = balance + ", $p1, " WHERE id = ", $p2);

            pub async fn hand_trivial(pool: &Pool<Db>, _id: i64) -> Result<(), sqlx::Error> {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT 1").execute(&mut *tx).await?;
                tx.commit().await
            }

            #[transactional]
            pub async fn covet_trivial(_id: i64) -> Result<(), Error> {
                sqlx::query("SELECT 1").execute(&mut *$conn()?).await?;
                Ok(())
            }

            pub async fn hand_one(pool: &Pool<Db>, id: i64) -> Result<(), sqlx::Error> {
                let mut tx = pool.begin().await?;
                sqlx::query(UPDATE).bind(id).execute(&mut *tx).await?;
                tx.commit().await
            }

            #[transactional]
            pub async fn covet_one(id: i64) -> Result<(), Error> {
                sqlx::query(UPDATE).bind(id).execute(&mut *$conn()?).await?;
                Ok(())
            }

            pub async fn hand_serializable(pool: &Pool<Db>, id: i64) -> Result<(), sqlx::Error> {
                let mut tx = $begins::serializable(pool).await?;
                sqlx::query(UPDATE).bind(id).execute(&mut *tx).await?;
                tx.commit().await
            }

            #[transactional(isolation = "serializable")]
            pub async fn covet_serializable(id: i64) -> Result<(), Error> {
                sqlx::query(UPDATE).bind(id).execute(&mut *$conn()?).await?;
                Ok(())
            }

            /// A statement the server answers with a serialization
            /// failure or a deadlock, where there is one to raise.
            const FAILURE: Option<&str> = $failure;

            /// An attempt that fails with a serialization failure after an
            /// UPDATE, not retried: dropping the transaction queues its
            /// ROLLBACK.
            pub async fn hand_failed(pool: &Pool<Db>, id: i64) -> Result<(), sqlx::Error> {
                let mut tx = $begins::serializable(pool).await?;
                sqlx::query(UPDATE).bind(id).execute(&mut *tx).await?;
                match sqlx::raw_sql(FAILURE.unwrap_or("SELECT 1")).execute(&mut *tx).await {
                    Err(error) if retry::retryable(&error) => Ok(()),
                    Err(error) => Err(error),
                    Ok(_) => panic!("the failure was not raised"),
                }
            }

            #[transactional(isolation = "serializable")]
            async fn covet_failing(id: i64) -> Result<(), Error> {
                sqlx::query(UPDATE).bind(id).execute(&mut *$conn()?).await?;
                sqlx::raw_sql(FAILURE.unwrap_or("SELECT 1")).execute(&mut *$conn()?).await?;
                Ok(())
            }

            /// The same attempt through covet-txn.
            pub async fn covet_failed(id: i64) -> Result<(), Error> {
                match covet_failing(id).await {
                    Err(error) if error.as_sqlx_error().is_some_and(retry::retryable) => Ok(()),
                    Err(error) => Err(error),
                    Ok(()) => panic!("the failure was not raised"),
                }
            }

            pub async fn hand_read_only(pool: &Pool<Db>, id: i64) -> Result<(), sqlx::Error> {
                $begins::read_only(pool, READ, id).await
            }

            #[transactional(read_only)]
            pub async fn covet_read_only(id: i64) -> Result<(), Error> {
                sqlx::query(READ).bind(id).execute(&mut *$conn()?).await?;
                Ok(())
            }

            pub async fn hand_nested3(pool: &Pool<Db>, id: i64) -> Result<(), sqlx::Error> {
                let mut outer = pool.begin().await?;
                let mut middle = outer.begin().await?;
                let mut inner = middle.begin().await?;
                sqlx::query(UPDATE).bind(id).execute(&mut *inner).await?;
                inner.commit().await?;
                middle.commit().await?;
                outer.commit().await
            }

            #[transactional]
            pub async fn covet_nested3(id: i64) -> Result<(), Error> {
                covet_nested2(id).await
            }

            #[transactional]
            async fn covet_nested2(id: i64) -> Result<(), Error> {
                covet_one(id).await
            }

            #[transactional]
            pub async fn covet_joined3(id: i64) -> Result<(), Error> {
                covet_joined2(id).await
            }

            #[transactional(propagation = "required")]
            async fn covet_joined2(id: i64) -> Result<(), Error> {
                covet_joined1(id).await
            }

            /// Joins the running transaction: no statement of its own, so the
            /// scope costs only covet-txn's own work.
            #[transactional(propagation = "required")]
            async fn covet_joined1(id: i64) -> Result<(), Error> {
                sqlx::query(UPDATE).bind(id).execute(&mut *$conn()?).await?;
                Ok(())
            }

            pub async fn hand_nested4(pool: &Pool<Db>, id: i64) -> Result<(), sqlx::Error> {
                let mut outer = pool.begin().await?;
                let mut second = outer.begin().await?;
                let mut third = second.begin().await?;
                let mut inner = third.begin().await?;
                sqlx::query(UPDATE).bind(id).execute(&mut *inner).await?;
                inner.commit().await?;
                third.commit().await?;
                second.commit().await?;
                outer.commit().await
            }

            #[transactional]
            pub async fn covet_nested4(id: i64) -> Result<(), Error> {
                covet_nested3(id).await
            }

            async fn hand_transfer_once(pool: &Pool<Db>, from: i64, to: i64) -> Result<(), sqlx::Error> {
                let mut tx = $begins::serializable(pool).await?;
                let balance: i64 = sqlx::query_scalar(HOT_READ).bind(from).fetch_one(&mut *tx).await?;
                let amount = (balance % 7) + 1;
                sqlx::query(HOT_MOVE).bind(-amount).bind(from).execute(&mut *tx).await?;
                sqlx::query(HOT_MOVE).bind(amount).bind(to).execute(&mut *tx).await?;
                tx.commit().await
            }

            /// A careful hand's retry loop, with covet-txn's policy.
            pub async fn hand_transfer(pool: &Pool<Db>, from: i64, to: i64) -> (bool, u32) {
                let mut retries = 0;
                loop {
                    match hand_transfer_once(pool, from, to).await {
                        Ok(()) => return (true, retries),
                        Err(error) if retry::retryable(&error) && retries < MAX_RETRIES => {
                            retries += 1;
                            tokio::time::sleep(retry::backoff(retries, FIRST_BACKOFF, MAX_BACKOFF)).await;
                        }
                        Err(_) => return (false, retries),
                    }
                }
            }

            /// The body of every covet-txn transfer: the hand-written one's
            /// statements, on the current transaction's connection; the
            /// retries it took.
            async fn transfer_work(from: i64, to: i64) -> Result<u32, Error> {
                let balance: i64 = sqlx::query_scalar(HOT_READ).bind(from).fetch_one(&mut *$conn()?).await?;
                let amount = (balance % 7) + 1;
                sqlx::query(HOT_MOVE).bind(-amount).bind(from).execute(&mut *$conn()?).await?;
                sqlx::query(HOT_MOVE).bind(amount).bind(to).execute(&mut *$conn()?).await?;
                Ok(covet_txn::current().map_or(1, |info| info.attempt) - 1)
            }

            #[transactional(isolation = "serializable", retry = 10, backoff = "1ms", max_backoff = "50ms")]
            pub async fn covet_transfer(from: i64, to: i64) -> Result<u32, Error> {
                transfer_work(from, to).await
            }

            #[transactional(isolation = "serializable", retry = 10, backoff = "1ms", max_backoff = "50ms", contention = "adaptive")]
            pub async fn covet_transfer_adaptive(from: i64, to: i64) -> Result<u32, Error> {
                transfer_work(from, to).await
            }

            #[transactional(isolation = "serializable", retry = 10, backoff = "1ms", max_backoff = "50ms", conflict_key = [from, to])]
            pub async fn covet_transfer_keyed(from: i64, to: i64) -> Result<u32, Error> {
                transfer_work(from, to).await
            }

            /// Times, counts and prints one scenario. The covet-txn side
            /// runs in `manager`'s scope: `#[transactional]` finds it as the
            /// task's default, as in an application.
            macro_rules! compare {
                ($rows:ident, $label:expr, $name:literal, $hand:ident, $covet:ident, $pool:ident, $manager:ident, $counted:ident) => {{
                    let hand = |id| async move { $hand($pool, id).await.expect("the hand-written transaction runs") };
                    let covet = |id| async move { $covet(id).await.expect("the covet-txn transaction runs") };
                    let (comparison, allocations) = $manager
                        .scope(async move {
                            for id in 0..50 {
                                hand(id).await;
                                covet(id).await;
                            }
                            let comparison = interleaved(hand, covet).await;
                            (comparison, measure::allocations_per_call(hand, covet).await)
                        })
                        .await;
                    let queries = match $counted {
                        Some((counter, counting_pool, counting_manager)) => {
                            let hand = |id| async move { $hand(counting_pool, id).await.expect("runs") };
                            let covet = |id| async move { $covet(id).await.expect("runs") };
                            let hand_queries = counter.per_call(hand).await;
                            let covet_queries = counting_manager.scope(counter.per_call(covet)).await;
                            Some((hand_queries, covet_queries))
                        }
                        None => None,
                    };
                    $rows.push(Row { backend: $label, scenario: $name, comparison, queries, allocations });
                }};
            }

            /// The latency scenarios on a pool of one connection; `counting`
            /// is a pool through a [`QueryCounter`], for counting what each
            /// side sends.
            pub async fn run(pool: Pool<Db>, label: &'static str, counting: Option<(&QueryCounter, Pool<Db>)>) -> Vec<Row> {
                setup(&pool).await;
                let manager = TxManager::new(pool.clone());
                let (pool, manager) = (&pool, &manager);
                let counting_manager = counting.as_ref().map(|(_, pool)| TxManager::new(pool.clone()));
                let counted = counting
                    .as_ref()
                    .zip(counting_manager.as_ref())
                    .map(|((counter, pool), manager)| (*counter, pool, manager));
                let mut rows = Vec::new();
                compare!(rows, label, "begin + SELECT 1 + commit", hand_trivial, covet_trivial, pool, manager, counted);
                compare!(rows, label, "begin + UPDATE + commit", hand_one, covet_one, pool, manager, counted);
                compare!(rows, label, "the same at SERIALIZABLE", hand_serializable, covet_serializable, pool, manager, counted);
                compare!(rows, label, "read-only + SELECT", hand_read_only, covet_read_only, pool, manager, counted);
                compare!(rows, label, "3 nested levels, UPDATE innermost", hand_nested3, covet_nested3, pool, manager, counted);
                compare!(rows, label, "4 nested levels, UPDATE innermost", hand_nested4, covet_nested4, pool, manager, counted);
                compare!(rows, label, "UPDATE in 2 joined scopes (required) of 1 transaction", hand_one, covet_joined3, pool, manager, counted);
                if FAILURE.is_some() {
                    compare!(rows, label, "SERIALIZABLE UPDATE, then a serialization failure (no retry)", hand_failed, covet_failed, pool, manager, counted);
                }
                rows
            }

            /// One cell: the three sides, `contended_rounds()` rounds each,
            /// interleaved with the side that goes first rotating.
            pub async fn contended(pool: Pool<Db>, label: &'static str, cell: Cell) {
                setup_hot_rows(&pool).await;
                let manager = TxManager::new(pool.clone());
                let mut totals: [Contention; 3] = Default::default();
                for round in 0..contended_rounds() {
                    for offset in 0..SIDES.len() {
                        let side = (round + offset) % SIDES.len();
                        if !side_wanted(side) {
                            continue;
                        }
                        let outcome = contended_round(&pool, &manager, cell, side).await;
                        totals[side].absorb(outcome);
                    }
                }
                Contention::print_cell(totals, label, cell);
            }

            async fn contended_round(pool: &Pool<Db>, manager: &TxManager<Db>, cell: Cell, side: usize) -> Contention {
                let started = Instant::now();
                let cpu_before = (measure::process_cpu_nanos(), measure::machine_busy_nanos());
                let mut tasks = Vec::new();
                for task in 0..cell.tasks {
                    let (pool, manager) = (pool.clone(), manager.clone());
                    tasks.push(tokio::spawn(manager.clone().scope(async move {
                        let mut outcome = Contention::default();
                        for n in 0..TRANSFERS_PER_TASK {
                            let from = 1 + ((task * 7 + n * 3) as i64) % cell.rows;
                            let to = 1 + (from + (n as i64) % (cell.rows - 1)) % cell.rows;
                            let started = Instant::now();
                            let covet = match (side, cell.keyed) {
                                (0, _) => None,
                                (1, _) => Some(covet_transfer(from, to).await),
                                (_, false) => Some(covet_transfer_adaptive(from, to).await),
                                (_, true) => Some(covet_transfer_keyed(from, to).await),
                            };
                            let (committed, retries) = match covet {
                                None => hand_transfer(&pool, from, to).await,
                                Some(Ok(retries)) => (true, retries),
                                Some(Err(Error::RetriesExhausted { attempts, .. })) => (false, attempts - 1),
                                Some(Err(error)) => panic!("transfer failed: {error}"),
                            };
                            outcome.latencies.push(started.elapsed());
                            outcome.retries += u64::from(retries);
                            if committed {
                                outcome.committed += 1;
                            } else {
                                outcome.gave_up += 1;
                            }
                        }
                        drop(manager);
                        outcome
                    })));
                }
                let mut outcome = Contention::default();
                for task in tasks {
                    outcome.absorb(task.await.expect("no panic"));
                }
                outcome.wall = started.elapsed();
                outcome.client_cpu = measure::spent(cpu_before.0, measure::process_cpu_nanos());
                outcome.machine_cpu = measure::spent(cpu_before.1, measure::machine_busy_nanos());
                outcome
            }

            /// Bytes a transaction held open keeps on the heap (its task
            /// included), beyond a hand-written transaction held open the same
            /// way: one transaction at a time on one warm connection, so that
            /// nothing else allocates meanwhile; the median of many.
            pub async fn memory_per_transaction(pool: Pool<Db>) -> f64 {
                setup(&pool).await;
                let manager = TxManager::new(pool.clone());
                let mut held: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
                for (pass, side) in [0, 1].repeat(60).into_iter().enumerate() {
                    // Let the previous pass's connection finish going back to
                    // the pool (a background task) before counting.
                    while pool.num_idle() < pool.size() as usize {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    let release = Arc::new(tokio::sync::Notify::new());
                    let ready = Arc::new(tokio::sync::Semaphore::new(0));
                    alloc::start();
                    let task = {
                        let (pool, manager) = (pool.clone(), manager.clone());
                        let (release, ready) = (Arc::clone(&release), Arc::clone(&ready));
                        tokio::spawn(async move {
                            let waiting = release.notified();
                            if side == 0 {
                                let mut tx = pool.begin().await.expect("begins");
                                sqlx::query(UPDATE).bind(1_i64).execute(&mut *tx).await.expect("updates");
                                ready.add_permits(1);
                                waiting.await;
                                tx.commit().await.expect("commits");
                            } else {
                                manager.scope(covet_held(1_i64, &ready, waiting)).await.expect("commits");
                            }
                        })
                    };
                    let _ = ready.acquire().await.expect("open");
                    let during = alloc::stop().live_bytes;
                    // The first passes warm caches (prepared statements) that stay.
                    if pass >= 10 {
                        held[side].push(during as f64);
                    }
                    release.notify_waiters();
                    task.await.expect("no panic");
                }
                let [mut hand, mut covet] = held;
                measure::median(&mut covet) - measure::median(&mut hand)
            }

            #[transactional]
            async fn covet_held(
                id: i64,
                ready: &tokio::sync::Semaphore,
                waiting: tokio::sync::futures::Notified<'_>,
            ) -> Result<(), Error> {
                sqlx::query(UPDATE).bind(id).execute(&mut *$conn()?).await?;
                ready.add_permits(1);
                waiting.await;
                Ok(())
            }

            /// The contended scenario's accounts, in a table of its own.
            async fn setup_hot_rows(pool: &Pool<Db>) {
                let mut conn = pool.acquire().await.expect("connects");
                conn.execute("DROP TABLE IF EXISTS contention_bench_accounts").await.expect("drops");
                conn.execute("CREATE TABLE contention_bench_accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)")
                    .await
                    .expect("creates");
                let rows: Vec<String> = (1..=1000).map(|id| format!("({id}, 1000000)")).collect();
                let insert = format!("INSERT INTO contention_bench_accounts (id, balance) VALUES {}", rows.join(", "));
                conn.execute(sqlx::AssertSqlSafe(insert)).await.expect("fills");
            }

            async fn setup(pool: &Pool<Db>) {
                let mut conn = pool.acquire().await.expect("connects");
                conn.execute("DROP TABLE IF EXISTS bench_accounts").await.expect("drops");
                conn.execute("CREATE TABLE bench_accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)")
                    .await
                    .expect("creates");
                let rows: Vec<String> = (1..=1000).map(|id| format!("({id}, 1000000)")).collect();
                let insert = format!("INSERT INTO bench_accounts (id, balance) VALUES {}", rows.join(", "));
                conn.execute(sqlx::AssertSqlSafe(insert)).await.expect("fills");
            }
        }
    };
}

/// How a careful hand begins a serializable transaction, and runs a
/// read-only one, on PostgreSQL: both in the BEGIN.
mod postgres_begins {
    use super::*;

    pub async fn serializable(
        pool: &Pool<sqlx::Postgres>,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        pool.begin_with("BEGIN ISOLATION LEVEL SERIALIZABLE").await
    }

    pub async fn read_only(
        pool: &Pool<sqlx::Postgres>,
        read: &'static str,
        id: i64,
    ) -> Result<(), sqlx::Error> {
        let mut tx = pool.begin_with("BEGIN READ ONLY").await?;
        sqlx::query(read).bind(id).execute(&mut *tx).await?;
        tx.commit().await
    }
}

/// MariaDB: the level for the next transaction and START TRANSACTION in one
/// request; read-only in the START TRANSACTION.
mod mariadb_begins {
    use super::*;

    pub async fn serializable(
        pool: &Pool<sqlx::MySql>,
    ) -> Result<sqlx::Transaction<'static, sqlx::MySql>, sqlx::Error> {
        pool.begin_with("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; START TRANSACTION")
            .await
    }

    pub async fn read_only(
        pool: &Pool<sqlx::MySql>,
        read: &'static str,
        id: i64,
    ) -> Result<(), sqlx::Error> {
        let mut tx = pool.begin_with("START TRANSACTION READ ONLY").await?;
        sqlx::query(read).bind(id).execute(&mut *tx).await?;
        tx.commit().await
    }
}

/// SQLite: take the write lock up front; read-only is the `query_only`
/// pragma, switched on with the BEGIN and off after the COMMIT, as
/// covet-txn does on a pool that has it off.
mod sqlite_begins {
    use super::*;

    pub async fn serializable(
        pool: &Pool<sqlx::Sqlite>,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        pool.begin_with("BEGIN IMMEDIATE").await
    }

    pub async fn read_only(
        pool: &Pool<sqlx::Sqlite>,
        read: &'static str,
        id: i64,
    ) -> Result<(), sqlx::Error> {
        let mut conn = pool.acquire().await?;
        let mut tx = conn
            .begin_with("PRAGMA query_only = ON; BEGIN DEFERRED")
            .await?;
        sqlx::query(read).bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        conn.execute("PRAGMA query_only = OFF").await?;
        Ok(())
    }
}

backend!(
    postgres,
    sqlx::Postgres,
    "$1",
    "$2",
    postgres_begins,
    covet_txn::postgres::conn,
    Some("DO $$ BEGIN RAISE EXCEPTION 'bench' USING ERRCODE = 'serialization_failure'; END $$")
);
backend!(
    mariadb,
    sqlx::MySql,
    "?",
    "?",
    mariadb_begins,
    covet_txn::mysql::conn,
    Some("SIGNAL SQLSTATE '40001' SET MYSQL_ERRNO = 1213")
);
backend!(
    sqlite,
    sqlx::Sqlite,
    "?",
    "?",
    sqlite_begins,
    covet_txn::sqlite::conn,
    None
);

/// Re-executes the benchmark pinned to CPU 0, where `taskset` exists: on
/// two cores, SQLite's worker thread and the caller wake each other across
/// cores, and in-process timings swing between two modes several times
/// apart from run to run.
fn pin_to_one_cpu() {
    if std::env::var_os("COVET_BENCH_PINNED").is_some() {
        return;
    }
    let Ok(program) = std::env::current_exe() else {
        return;
    };
    let status = std::process::Command::new("taskset")
        .arg("-c")
        .arg("0")
        .arg(&program)
        .args(std::env::args_os().skip(1))
        .env("COVET_BENCH_PINNED", "1")
        .status();
    match status {
        Ok(status) => std::process::exit(status.code().unwrap_or(1)),
        Err(error) => eprintln!("notice: running unpinned, taskset is unavailable ({error})"),
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .map(|line| line.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let pinned = std::env::var("COVET_BENCH_PINNED").is_ok_and(|value| value == "1");
    format!("{cores} cores available ({cpu}), pinned to one core: {pinned}")
}

async fn postgres_pool(max: u32) -> Option<Pool<sqlx::Postgres>> {
    postgres_pool_at(
        "COVET_PG_URL",
        "postgres://postgres@127.0.0.1:5432/test",
        max,
    )
    .await
}

/// A PostgreSQL pool at the URL in `variable` (`default` without it), or
/// `None` after a notice. Its sessions detect deadlocks after PostgreSQL's
/// default `deadlock_timeout` of 1 s, whatever the database was set to:
/// the contended scenario's PostgreSQL figures depend on it.
async fn postgres_pool_at(variable: &str, default: &str, max: u32) -> Option<Pool<sqlx::Postgres>> {
    let url = std::env::var(variable).unwrap_or_else(|_| default.to_owned());
    let options = match sqlx::postgres::PgConnectOptions::from_str(&url) {
        Ok(options) => options.options([("deadlock_timeout", "1s")]),
        Err(error) => {
            eprintln!("notice: skipping PostgreSQL at {url}: {error}");
            return None;
        }
    };
    match sqlx::postgres::PgPoolOptions::new()
        .max_connections(max)
        .connect_with(options)
        .await
    {
        Ok(pool) => Some(pool),
        Err(error) => {
            eprintln!("notice: skipping PostgreSQL at {url}: {error}");
            None
        }
    }
}

async fn mariadb_pool(max: u32) -> Option<Pool<sqlx::MySql>> {
    let url = std::env::var("COVET_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned());
    match sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(max)
        .connect(&url)
        .await
    {
        Ok(pool) => Some(pool),
        Err(error) => {
            eprintln!("notice: skipping MariaDB at {url}: {error}");
            None
        }
    }
}

async fn sqlite_memory() -> Pool<sqlx::Sqlite> {
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await
        .expect("opens an in-memory database")
}

async fn sqlite_file(max: u32) -> Pool<sqlx::Sqlite> {
    let path = std::env::temp_dir().join("covet-bench.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(5));
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(max)
        .connect_with(options)
        .await
        .expect("opens a database file")
}

async fn latency() -> Vec<Row> {
    let mut rows = Vec::new();
    if backend("postgres")
        && let Some(pool) = postgres_pool(1).await
    {
        let options = pool.connect_options();
        let address = resolve(options.get_host(), options.get_port());
        let counter = QueryCounter::start(address, Protocol::Postgres).await;
        let through = (*options).clone().host("127.0.0.1").port(counter.port);
        let counting = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_with(through)
            .await
            .expect("connects through the counter");
        rows.extend(postgres::run(pool, "PostgreSQL", Some((&counter, counting))).await);
    }
    if backend("mariadb")
        && let Some(pool) = mariadb_pool(1).await
    {
        let options = pool.connect_options();
        let address = resolve(options.get_host(), options.get_port());
        let counter = QueryCounter::start(address, Protocol::MySql).await;
        let through = (*options).clone().host("127.0.0.1").port(counter.port);
        let counting = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(1)
            .connect_with(through)
            .await
            .expect("connects through the counter");
        rows.extend(mariadb::run(pool, "MariaDB", Some((&counter, counting))).await);
    }
    if backend("sqlite") {
        rows.extend(sqlite::run(sqlite_memory().await, "SQLite (memory)", None).await);
        rows.extend(sqlite::run(sqlite_file(1).await, "SQLite (file)", None).await);
    }
    rows
}

async fn run_all() {
    println!("covet-txn vs hand-written sqlx: {}", machine());
    if scenario("latency") {
        let mut rows = latency().await;
        println!(
            "\nLatency: a pool of one connection, {} rounds x {} calls per side, interleaved; medians\n",
            measure::rounds(),
            measure::PER_ROUND
        );
        println!(
            "| backend | scenario | hand-written µs | covet-txn µs | ratio | queries sent, hand | queries sent, covet |"
        );
        println!("|---|---|---|---|---|---|---|");
        for row in &mut rows {
            row.print_latency();
        }
        println!(
            "\nClient cost per transaction: CPU µs on the calling thread and in the whole process (SQLite's worker thread included), and allocations\n"
        );
        println!(
            "| backend | scenario | CPU hand | CPU covet | process CPU hand | process CPU covet | allocations hand | allocations covet |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for row in &rows {
            row.print_cost();
        }
    }

    if scenario("contended") {
        println!(
            "\nContended transfers: each task makes {TRANSFERS_PER_TASK} transfers between hot rows, SERIALIZABLE, up to {MAX_RETRIES} retries with the same jittered backoff; {} rounds per side, interleaved, the first side rotating; ratios are to the hand-written loop\n",
            contended_rounds()
        );
        println!(
            "| backend | hot rows × tasks | side | committed/s | ratio | round ratios | retries | gave up | p99 ms | p99 ratio | client CPU µs/attempt | machine CPU µs/attempt |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
        let cell = |rows, tasks, keyed| Cell { rows, tasks, keyed };
        let server_cells = [
            cell(10, 8, false),
            cell(10, 8, true),
            cell(10, 16, false),
            cell(100, 8, false),
        ];
        for cell in server_cells.into_iter().filter(Cell::wanted) {
            if backend("postgres")
                && let Some(pool) = postgres_pool(cell.tasks as u32).await
            {
                postgres::contended(pool, "PostgreSQL", cell).await;
            }
            if backend("mariadb")
                && let Some(pool) = mariadb_pool(cell.tasks as u32).await
            {
                mariadb::contended(pool, "MariaDB", cell).await;
            }
        }
        if backend("sqlite") {
            let cells = [cell(10, 8, false), cell(10, 16, false), cell(100, 8, false)];
            for cell in cells.into_iter().filter(Cell::wanted) {
                sqlite::contended(sqlite_file(cell.tasks as u32).await, "SQLite (file)", cell)
                    .await;
            }
        }
    }

    if scenario("outbox")
        && backend("postgres")
        && let Some(pool) = postgres_pool(8).await
    {
        outbox::run(pool).await;
    }

    if scenario("memory") {
        println!();
        let print = |backend: &str, bytes: f64| {
            println!(
                "Memory held by covet-txn per open transaction, beyond a hand-written one ({backend}): {bytes:.0} bytes"
            );
        };
        if backend("postgres")
            && let Some(pool) = postgres_pool(1).await
        {
            print("PostgreSQL", postgres::memory_per_transaction(pool).await);
        }
        if backend("mariadb")
            && let Some(pool) = mariadb_pool(1).await
        {
            print("MariaDB", mariadb::memory_per_transaction(pool).await);
        }
        if backend("sqlite") {
            print(
                "SQLite",
                sqlite::memory_per_transaction(sqlite_memory().await).await,
            );
        }
    }

    if scenario("replicas")
        && backend("postgres")
        && let Some(pool) = postgres_pool(replicas::READERS as u32).await
    {
        replicas::run(pool).await;
    }
}

fn main() {
    pin_to_one_cpu();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run_all());
}
