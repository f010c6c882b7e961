//! covet-txn against the best hand-written sqlx a careful user would write,
//! side by side in one process: same pool, same statements, the two sides
//! interleaved round by round (and the order within a round alternated), so
//! that drift in the machine or the servers hits both alike.
//!
//! ```sh
//! cargo bench -p covet-txn-bench                         # everything, ~3 minutes
//! COVET_BENCH_ROUNDS=4 cargo bench -p covet-txn-bench    # quicker, noisier
//! ```
//!
//! In-process SQLite timings on a 2-core machine swing between two modes
//! from run to run unless the process stays on one CPU, so the harness
//! re-executes itself under `taskset -c 0` when `taskset` is available (set
//! `COVET_BENCH_PINNED=1` to skip that). PostgreSQL at `COVET_PG_URL` and
//! MariaDB at `COVET_MYSQL_URL` are skipped, with a notice, when unreachable.

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use covet_txn::{Error, TxManager, transactional};
use sqlx::{Connection, Executor, Pool};

/// Counts live heap bytes, to measure what an open transaction holds.
struct CountingAllocator;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counter only observes sizes.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded with the caller's pointer, layout and size.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// A loopback proxy that counts the queries a client sends: PostgreSQL
/// simple-query and Execute messages, MySQL COM_QUERY and COM_STMT_EXECUTE
/// commands. Pool pings are not counted. Used only in a counting pass; the
/// timed passes connect directly.
struct QueryCounter {
    port: u16,
    queries: Arc<AtomicU64>,
}

#[derive(Clone, Copy)]
enum Protocol {
    Postgres,
    MySql,
}

impl QueryCounter {
    async fn start(upstream: std::net::SocketAddr, protocol: Protocol) -> QueryCounter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let port = listener.local_addr().expect("has an address").port();
        let queries = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&queries);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, protocol, Arc::clone(&counted)));
            }
        });
        QueryCounter { port, queries }
    }

    /// Queries sent per call of `work`, over a few calls.
    async fn per_call<F, Fut>(&self, mut work: F) -> f64
    where
        F: FnMut(i64) -> Fut,
        Fut: Future<Output = ()>,
    {
        const CALLS: i64 = 20;
        work(0).await;
        self.queries.store(0, Ordering::SeqCst);
        for call in 1..=CALLS {
            work(call).await;
        }
        self.queries.load(Ordering::SeqCst) as f64 / CALLS as f64
    }
}

async fn relay(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    protocol: Protocol,
    queries: Arc<AtomicU64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_reads, mut client_writes) = client.into_split();
    let (mut server_reads, mut server_writes) = server.into_split();
    let upstream = async move {
        let mut parser = Parser::new(protocol);
        let mut buffer = vec![0; 64 * 1024];
        while let Ok(read) = client_reads.read(&mut buffer).await {
            if read == 0 {
                return;
            }
            queries.fetch_add(parser.feed(&buffer[..read]), Ordering::Relaxed);
            if server_writes.write_all(&buffer[..read]).await.is_err() {
                return;
            }
        }
    };
    let downstream = async move {
        let _ = tokio::io::copy(&mut server_reads, &mut client_writes).await;
    };
    tokio::join!(upstream, downstream);
}

/// Splits a client's byte stream into messages and counts the queries.
struct Parser {
    protocol: Protocol,
    pending: Vec<u8>,
    /// PostgreSQL starts with untyped messages (SSL request, startup).
    started: bool,
}

impl Parser {
    fn new(protocol: Protocol) -> Self {
        Parser {
            protocol,
            pending: Vec::new(),
            started: false,
        }
    }

    fn feed(&mut self, bytes: &[u8]) -> u64 {
        self.pending.extend_from_slice(bytes);
        let mut counted = 0;
        loop {
            let (length, query) = match self.protocol {
                Protocol::Postgres if !self.started => {
                    let Some(header) = self.pending.get(..8) else {
                        break;
                    };
                    let length =
                        u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
                    let code = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
                    // The startup message carries protocol 3.0; an SSL or
                    // GSS request comes before it.
                    self.started = code == 196_608;
                    (length, false)
                }
                Protocol::Postgres => {
                    let Some(header) = self.pending.get(..5) else {
                        break;
                    };
                    let length =
                        1 + u32::from_be_bytes([header[1], header[2], header[3], header[4]])
                            as usize;
                    (length, matches!(header[0], b'Q' | b'E'))
                }
                Protocol::MySql => {
                    let Some(header) = self.pending.get(..5) else {
                        break;
                    };
                    let length = 4
                        + (usize::from(header[0])
                            | usize::from(header[1]) << 8
                            | usize::from(header[2]) << 16);
                    // A command opens a sequence: COM_QUERY 0x03, COM_STMT_EXECUTE 0x17.
                    (length, header[3] == 0 && matches!(header[4], 0x03 | 0x17))
                }
            };
            if self.pending.len() < length {
                break;
            }
            self.pending.drain(..length);
            counted += u64::from(query);
        }
        counted
    }
}

/// Whether `name` is listed in the comma-separated variable (everything is,
/// when it is unset): `COVET_BENCH_SCENARIOS` takes `latency`, `contended`,
/// `cost`, `memory`; `COVET_BENCH_BACKENDS` takes `postgres`, `mariadb`,
/// `sqlite`.
fn wanted(variable: &str, name: &str) -> bool {
    std::env::var(variable).map_or(true, |list| list.split(',').any(|part| part.trim() == name))
}

fn scenario(name: &str) -> bool {
    wanted("COVET_BENCH_SCENARIOS", name)
}

fn backend(name: &str) -> bool {
    wanted("COVET_BENCH_BACKENDS", name)
}

fn rounds() -> usize {
    std::env::var("COVET_BENCH_ROUNDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(10)
}

const PER_ROUND: i64 = 150;

/// Nanoseconds this thread has spent on a CPU (Linux schedstat), if known.
/// The runtime is single-threaded, so this is the client's whole CPU cost,
/// waiting on the database excluded.
fn thread_cpu_nanos() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Client CPU time per call of each side, in microseconds, over
/// interleaved batches.
async fn cpu_per_call<H, HF, C, CF>(mut hand: H, mut covet: C) -> Option<(f64, f64)>
where
    H: FnMut(i64) -> HF,
    HF: Future<Output = ()>,
    C: FnMut(i64) -> CF,
    CF: Future<Output = ()>,
{
    let mut spent = [0_u64; 2];
    let calls = PER_ROUND * rounds() as i64;
    for round in 0..rounds() {
        for side in [round % 2, 1 - round % 2] {
            let before = thread_cpu_nanos()?;
            for call in 0..PER_ROUND {
                if side == 0 {
                    hand(1 + call % 100).await;
                } else {
                    covet(1 + call % 100).await;
                }
            }
            spent[side] += thread_cpu_nanos()? - before;
        }
    }
    let per_call = |nanos: u64| nanos as f64 / calls as f64 / 1000.0;
    Some((per_call(spent[0]), per_call(spent[1])))
}

/// What the interleaved timing found.
struct Timings {
    hand: Vec<Duration>,
    covet: Vec<Duration>,
    /// covet-txn's median over the hand-written median, per round: the two
    /// sides of a round ran back to back, so drift cancels out.
    round_ratios: Vec<f64>,
}

/// Times `hand` and `covet` call by call, interleaved round by round.
async fn interleaved<H, HF, C, CF>(mut hand: H, mut covet: C) -> Timings
where
    H: FnMut(i64) -> HF,
    HF: Future<Output = ()>,
    C: FnMut(i64) -> CF,
    CF: Future<Output = ()>,
{
    let mut timings = Timings {
        hand: Vec::new(),
        covet: Vec::new(),
        round_ratios: Vec::new(),
    };
    for round in 0..rounds() {
        let mut medians = [0.0; 2];
        for side in [round % 2, 1 - round % 2] {
            let mut times = Vec::with_capacity(PER_ROUND as usize);
            for call in 0..PER_ROUND {
                let id = 1 + call % 100;
                let started = Instant::now();
                if side == 0 {
                    hand(id).await;
                } else {
                    covet(id).await;
                }
                times.push(started.elapsed());
            }
            medians[side] = micros(percentile(&mut times, 0.5));
            if side == 0 {
                timings.hand.extend(times);
            } else {
                timings.covet.extend(times);
            }
        }
        timings.round_ratios.push(medians[1] / medians[0]);
    }
    timings
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn percentile(times: &mut [Duration], q: f64) -> Duration {
    times.sort();
    let index = ((times.len() as f64 - 1.0) * q).round() as usize;
    times.get(index).copied().unwrap_or_default()
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// One row of the latency table.
struct Row {
    backend: &'static str,
    scenario: &'static str,
    hand_us: f64,
    covet_us: f64,
    ratio: f64,
    hand_statements: f64,
    covet_statements: f64,
}

impl Row {
    fn print(&self) {
        let count = |queries: f64| {
            if queries.is_nan() {
                "in-process".to_owned()
            } else {
                format!("{queries:.0}")
            }
        };
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.3} | {} | {} |",
            self.backend,
            self.scenario,
            self.hand_us,
            self.covet_us,
            self.ratio,
            count(self.hand_statements),
            count(self.covet_statements)
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
}

impl Contention {
    fn absorb(&mut self, other: Contention) {
        self.committed += other.committed;
        self.retries += other.retries;
        self.gave_up += other.gave_up;
        self.latencies.extend(other.latencies);
        self.wall += other.wall;
    }

    fn print(mut self, backend: &str, side: &str) {
        let per_second = self.committed as f64 / self.wall.as_secs_f64();
        let p99 = percentile(&mut self.latencies, 0.99);
        println!(
            "| {backend} | {side} | {per_second:.0} | {} | {} | {:.1} |",
            self.retries,
            self.gave_up,
            p99.as_secs_f64() * 1000.0
        );
    }
}

const CONTENDED_TASKS: usize = 8;
const HOT_ROWS: i64 = 10;
const TRANSFERS_PER_TASK: usize = 100;
const MAX_RETRIES: u32 = 10;
const CONTENDED_ROUNDS: usize = 4;

/// Whether a careful hand would retry this error: the codes of a
/// serialization failure, a deadlock or a busy database.
fn retryable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(database) => matches!(
            database.code().as_deref(),
            Some("40001" | "40P01" | "5" | "6" | "261" | "262" | "517" | "518" | "773")
        ),
        _ => false,
    }
}

/// A plain exponential backoff: 1 ms, 2 ms, 4 ms ... up to 50 ms.
fn hand_backoff(attempt: u32) -> Duration {
    Duration::from_millis(1u64 << attempt.min(6)).min(Duration::from_millis(50))
}

/// The scenarios, written once per backend.
macro_rules! backend {
    ($module:ident, $db:ty, $p1:literal, $p2:literal, $begin_serializable:path) => {
        // Each backend runs the scenarios it can: SQLite holds no 40 open
        // writers, and the CPU cost is measured where the database costs least.
        #[allow(dead_code)]
        mod $module {
            use super::*;

            pub type Db = $db;
            const UPDATE: &str = concat!("UPDATE bench_accounts SET balance = balance + 1 WHERE id = ", $p1);
            const READ: &str = concat!("SELECT balance FROM bench_accounts WHERE id = ", $p1);
            const MOVE: &str = concat!("UPDATE bench_accounts SET balance = balance + ", $p1, " WHERE id = ", $p2);

            async fn hand_begin_serializable(pool: &Pool<Db>) -> Result<sqlx::Transaction<'static, Db>, sqlx::Error> {
                $begin_serializable(pool).await
            }

            pub async fn hand_serializable(pool: &Pool<Db>, id: i64) -> Result<(), sqlx::Error> {
                let mut tx = hand_begin_serializable(pool).await?;
                sqlx::query(UPDATE).bind(id).execute(&mut *tx).await?;
                tx.commit().await
            }

            pub async fn hand_one(pool: &Pool<Db>, id: i64) -> Result<(), sqlx::Error> {
                let mut tx = pool.begin().await?;
                sqlx::query(UPDATE).bind(id).execute(&mut *tx).await?;
                tx.commit().await
            }

            #[transactional(manager = manager)]
            pub async fn covet_one(manager: &TxManager<Db>, id: i64) -> Result<(), Error> {
                sqlx::query(UPDATE).bind(id).execute(&mut *manager.conn()?).await?;
                Ok(())
            }

            #[transactional(manager = manager, isolation = "serializable")]
            pub async fn covet_serializable(manager: &TxManager<Db>, id: i64) -> Result<(), Error> {
                sqlx::query(UPDATE).bind(id).execute(&mut *manager.conn()?).await?;
                Ok(())
            }

            pub async fn hand_nested(pool: &Pool<Db>, id: i64) -> Result<(), sqlx::Error> {
                let mut outer = pool.begin().await?;
                let mut middle = outer.begin().await?;
                let mut inner = middle.begin().await?;
                sqlx::query(UPDATE).bind(id).execute(&mut *inner).await?;
                inner.commit().await?;
                middle.commit().await?;
                outer.commit().await
            }

            #[transactional(manager = manager)]
            pub async fn covet_nested(manager: &TxManager<Db>, id: i64) -> Result<(), Error> {
                covet_middle(manager, id).await
            }

            #[transactional(manager = manager)]
            async fn covet_middle(manager: &TxManager<Db>, id: i64) -> Result<(), Error> {
                covet_one(manager, id).await
            }

            pub async fn hand_trivial(pool: &Pool<Db>) -> Result<(), sqlx::Error> {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT 1").execute(&mut *tx).await?;
                tx.commit().await
            }

            #[transactional(manager = manager)]
            pub async fn covet_trivial(manager: &TxManager<Db>) -> Result<(), Error> {
                sqlx::query("SELECT 1").execute(&mut *manager.conn()?).await?;
                Ok(())
            }

            async fn hand_transfer_once(pool: &Pool<Db>, from: i64, to: i64) -> Result<(), sqlx::Error> {
                let mut tx = hand_begin_serializable(pool).await?;
                let balance: i64 = sqlx::query_scalar(READ).bind(from).fetch_one(&mut *tx).await?;
                let amount = (balance % 7) + 1;
                sqlx::query(MOVE).bind(-amount).bind(from).execute(&mut *tx).await?;
                sqlx::query(MOVE).bind(amount).bind(to).execute(&mut *tx).await?;
                tx.commit().await
            }

            /// The hand-written retry loop: plain exponential backoff.
            pub async fn hand_transfer(pool: &Pool<Db>, from: i64, to: i64) -> (bool, u32) {
                let mut attempt = 0;
                loop {
                    match hand_transfer_once(pool, from, to).await {
                        Ok(()) => return (true, attempt),
                        Err(error) if retryable(&error) && attempt < MAX_RETRIES => {
                            tokio::time::sleep(hand_backoff(attempt)).await;
                            attempt += 1;
                        }
                        Err(_) => return (false, attempt),
                    }
                }
            }

            #[transactional(manager = manager, isolation = "serializable", retry = 10, backoff = "1ms", max_backoff = "50ms")]
            pub async fn covet_transfer(manager: &TxManager<Db>, from: i64, to: i64) -> Result<u32, Error> {
                let balance: i64 = sqlx::query_scalar(READ).bind(from).fetch_one(&mut *manager.conn()?).await?;
                let amount = (balance % 7) + 1;
                sqlx::query(MOVE).bind(-amount).bind(from).execute(&mut *manager.conn()?).await?;
                sqlx::query(MOVE).bind(amount).bind(to).execute(&mut *manager.conn()?).await?;
                Ok(covet_txn::current().map_or(1, |info| info.attempt) - 1)
            }

            /// The latency scenarios; `counting` is a pool through a
            /// [`QueryCounter`], for counting what each side sends.
            pub async fn run(pool: Pool<Db>, label: &'static str, counting: Option<(&QueryCounter, Pool<Db>)>) {
                setup(&pool).await;
                let manager = TxManager::new(pool.clone());
                let manager = &manager;
                let pool = &pool;
                let counting_manager = counting.as_ref().map(|(_, pool)| TxManager::new(pool.clone()));
                let counted = counting
                    .as_ref()
                    .zip(counting_manager.as_ref())
                    .map(|((counter, pool), manager)| (*counter, (pool, manager)));

                let mut rows = Vec::new();
                let mut row = |scenario, mut timings: Timings, statements: (f64, f64)| {
                    rows.push(Row {
                        backend: label,
                        scenario,
                        hand_us: micros(percentile(&mut timings.hand, 0.5)),
                        covet_us: micros(percentile(&mut timings.covet, 0.5)),
                        ratio: median(&mut timings.round_ratios),
                        hand_statements: statements.0,
                        covet_statements: statements.1,
                    });
                };

                let expect = |result: Result<(), Error>| result.expect("the transaction runs");
                let hand_expect = |result: Result<(), sqlx::Error>| result.expect("the transaction runs");

                // Warm both sides: connections, prepared statements.
                for id in 0..50 {
                    hand_expect(hand_one(pool, id).await);
                    expect(covet_one(manager, id).await);
                }

                let times = interleaved(
                    |id| async move { hand_expect(hand_one(pool, id).await) },
                    |id| async move { expect(covet_one(manager, id).await) },
                )
                .await;
                let statements = match counted {
                    Some((counter, (pool, manager))) => (
                        counter.per_call(|id| async move { hand_expect(hand_one(pool, id).await) }).await,
                        counter.per_call(|id| async move { expect(covet_one(manager, id).await) }).await,
                    ),
                    None => (f64::NAN, f64::NAN),
                };
                row("begin + UPDATE + commit", times, statements);

                let times = interleaved(
                    |id| async move { hand_expect(hand_serializable(pool, id).await) },
                    |id| async move { expect(covet_serializable(manager, id).await) },
                )
                .await;
                let statements = match counted {
                    Some((counter, (pool, manager))) => (
                        counter.per_call(|id| async move { hand_expect(hand_serializable(pool, id).await) }).await,
                        counter.per_call(|id| async move { expect(covet_serializable(manager, id).await) }).await,
                    ),
                    None => (f64::NAN, f64::NAN),
                };
                row("the same at SERIALIZABLE", times, statements);

                let times = interleaved(
                    |id| async move { hand_expect(hand_nested(pool, id).await) },
                    |id| async move { expect(covet_nested(manager, id).await) },
                )
                .await;
                let statements = match counted {
                    Some((counter, (pool, manager))) => (
                        counter.per_call(|id| async move { hand_expect(hand_nested(pool, id).await) }).await,
                        counter.per_call(|id| async move { expect(covet_nested(manager, id).await) }).await,
                    ),
                    None => (f64::NAN, f64::NAN),
                };
                row("3 nested levels, UPDATE innermost", times, statements);

                for row in &rows {
                    row.print();
                }
            }

            /// Client CPU per transaction of each side (BEGIN; UPDATE;
            /// COMMIT), in microseconds.
            pub async fn framework_cost(pool: Pool<Db>) -> Option<(f64, f64)> {
                setup(&pool).await;
                let manager = TxManager::new(pool.clone());
                let (manager, pool) = (&manager, &pool);
                for id in 0..200 {
                    hand_one(pool, id).await.expect("runs");
                    covet_one(manager, id).await.expect("runs");
                }
                cpu_per_call(
                    |id| async move { hand_one(pool, id).await.expect("runs") },
                    |id| async move { covet_one(manager, id).await.expect("runs") },
                )
                .await
            }

            pub async fn contended(pool: Pool<Db>, label: &'static str) {
                setup(&pool).await;
                let manager = TxManager::new(pool.clone());
                let (mut hand_total, mut covet_total) = (Contention::default(), Contention::default());
                for round in 0..CONTENDED_ROUNDS {
                    for side in [round % 2, 1 - round % 2] {
                        let started = Instant::now();
                        let mut tasks = Vec::new();
                        for task in 0..CONTENDED_TASKS {
                            let (pool, manager) = (pool.clone(), manager.clone());
                            tasks.push(tokio::spawn(async move {
                                let mut outcome = Contention::default();
                                for n in 0..TRANSFERS_PER_TASK {
                                    let from = 1 + ((task * 7 + n * 3) as i64) % HOT_ROWS;
                                    let to = 1 + (from + 1 + (n as i64) % (HOT_ROWS - 1)) % HOT_ROWS;
                                    let started = Instant::now();
                                    let (committed, retries) = if side == 0 {
                                        hand_transfer(&pool, from, to).await
                                    } else {
                                        match covet_transfer(&manager, from, to).await {
                                            Ok(retries) => (true, retries),
                                            Err(Error::RetriesExhausted { attempts, .. }) => (false, attempts - 1),
                                            Err(error) => panic!("transfer failed: {error}"),
                                        }
                                    };
                                    outcome.latencies.push(started.elapsed());
                                    outcome.retries += u64::from(retries);
                                    if committed {
                                        outcome.committed += 1;
                                    } else {
                                        outcome.gave_up += 1;
                                    }
                                }
                                outcome
                            }));
                        }
                        let mut outcome = Contention::default();
                        for task in tasks {
                            outcome.absorb(task.await.expect("no panic"));
                        }
                        outcome.wall = started.elapsed();
                        if side == 0 {
                            hand_total.absorb(outcome);
                        } else {
                            covet_total.absorb(outcome);
                        }
                    }
                }
                hand_total.print(label, "hand-written loop");
                covet_total.print(label, "covet-txn");
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
                    let before = LIVE_BYTES.load(Ordering::SeqCst);
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
                                covet_held(&manager, 1_i64, &ready, waiting).await.expect("commits");
                            }
                        })
                    };
                    let _ = ready.acquire().await.expect("open");
                    let during = LIVE_BYTES.load(Ordering::SeqCst);
                    // The first passes warm caches (prepared statements) that stay.
                    if pass >= 10 {
                        held[side].push((during - before) as f64);
                    }
                    release.notify_waiters();
                    task.await.expect("no panic");
                }
                let [mut hand, mut covet] = held;
                median(&mut covet) - median(&mut hand)
            }

            #[transactional(manager = manager)]
            async fn covet_held(
                manager: &TxManager<Db>,
                id: i64,
                ready: &tokio::sync::Semaphore,
                waiting: tokio::sync::futures::Notified<'_>,
            ) -> Result<(), Error> {
                sqlx::query(UPDATE).bind(id).execute(&mut *manager.conn()?).await?;
                ready.add_permits(1);
                waiting.await;
                Ok(())
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

/// How a careful hand begins a serializable transaction on each backend.
mod serializable_begins {
    use super::*;

    /// PostgreSQL takes the level in the BEGIN itself.
    pub async fn postgres(
        pool: &Pool<sqlx::Postgres>,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        pool.begin_with("BEGIN ISOLATION LEVEL SERIALIZABLE").await
    }

    /// MariaDB: the level for the next transaction, then BEGIN.
    pub async fn mariadb(
        pool: &Pool<sqlx::MySql>,
    ) -> Result<sqlx::Transaction<'static, sqlx::MySql>, sqlx::Error> {
        let mut conn = pool.acquire().await?;
        conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
            .await?;
        sqlx::Transaction::begin(conn, None).await
    }

    /// SQLite: take the write lock up front.
    pub async fn sqlite(
        pool: &Pool<sqlx::Sqlite>,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        pool.begin_with("BEGIN IMMEDIATE").await
    }
}

backend!(
    postgres,
    sqlx::Postgres,
    "$1",
    "$2",
    serializable_begins::postgres
);
backend!(mariadb, sqlx::MySql, "?", "?", serializable_begins::mariadb);
backend!(sqlite, sqlx::Sqlite, "?", "?", serializable_begins::sqlite);

/// Re-executes the benchmark pinned to CPU 0, where `taskset` exists, so
/// that in-process SQLite timings do not swing between two modes.
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
    format!(
        "{cores} cores ({cpu}), benchmark pinned to one core: {}",
        std::env::var_os("COVET_BENCH_PINNED").is_some()
    )
}

async fn postgres_pool(max: u32) -> Option<Pool<sqlx::Postgres>> {
    let url = std::env::var("COVET_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    match sqlx::postgres::PgPoolOptions::new()
        .max_connections(max)
        .connect(&url)
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

async fn run_all() {
    println!("covet-txn vs hand-written sqlx: {}", machine());
    if scenario("latency") {
        println!(
            "{} rounds x {PER_ROUND} calls per side, interleaved; medians\n",
            rounds()
        );
        println!(
            "| backend | scenario | hand-written µs | covet-txn µs | ratio | queries sent, hand | queries sent, covet |"
        );
        println!("|---|---|---|---|---|---|---|");
        if backend("postgres")
            && let Some(pool) = postgres_pool(8).await
        {
            let options = pool.connect_options();
            let counter = QueryCounter::start(
                resolve(options.get_host(), options.get_port()),
                Protocol::Postgres,
            )
            .await;
            let through = (*options).clone().host("127.0.0.1").port(counter.port);
            let counting = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect_with(through)
                .await
                .expect("connects through the counter");
            postgres::run(pool, "PostgreSQL", Some((&counter, counting))).await;
        }
        if backend("mariadb")
            && let Some(pool) = mariadb_pool(8).await
        {
            let options = pool.connect_options();
            let counter = QueryCounter::start(
                resolve(options.get_host(), options.get_port()),
                Protocol::MySql,
            )
            .await;
            let through = (*options).clone().host("127.0.0.1").port(counter.port);
            let counting = sqlx::mysql::MySqlPoolOptions::new()
                .max_connections(1)
                .connect_with(through)
                .await
                .expect("connects through the counter");
            mariadb::run(pool, "MariaDB", Some((&counter, counting))).await;
        }
        if backend("sqlite") {
            sqlite::run(sqlite_memory().await, "SQLite (memory)", None).await;
            sqlite::run(sqlite_file(8).await, "SQLite (file)", None).await;
        }
    }

    if scenario("contended") {
        println!(
            "\nContended transfers: {CONTENDED_TASKS} tasks x {TRANSFERS_PER_TASK} transfers, {HOT_ROWS} hot rows, SERIALIZABLE, up to {MAX_RETRIES} retries; {CONTENDED_ROUNDS} rounds per side, interleaved\n"
        );
        println!("| backend | side | committed/s | retries | gave up | p99 ms |");
        println!("|---|---|---|---|---|---|");
        if backend("postgres")
            && let Some(pool) = postgres_pool(8).await
        {
            postgres::contended(pool, "PostgreSQL").await;
        }
        if backend("mariadb")
            && let Some(pool) = mariadb_pool(8).await
        {
            mariadb::contended(pool, "MariaDB").await;
        }
        if backend("sqlite") {
            sqlite::contended(sqlite_file(8).await, "SQLite (file)").await;
        }
    }

    if scenario("cost") {
        // In memory, the database's own work is small and runs on its
        // worker thread: what is left on this thread is sqlx and covet-txn.
        match sqlite::framework_cost(sqlite_memory().await).await {
            Some((hand, covet)) => println!(
                "\nClient CPU per transaction (SQLite in memory, BEGIN; UPDATE; COMMIT, on this thread): \
                 hand-written {hand:.1} µs, covet-txn {covet:.1} µs: covet-txn's own cost {:.1} µs",
                covet - hand
            ),
            None => println!(
                "\nClient CPU per transaction: unmeasured (no /proc/thread-self/schedstat)"
            ),
        }
    }

    if scenario("memory") {
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
}

fn resolve(host: &str, port: u16) -> std::net::SocketAddr {
    use std::net::ToSocketAddrs;
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .expect("the server's address resolves")
}

fn main() {
    pin_to_one_cpu();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run_all());
}
