//! covet-txn against the best hand-written sqlx a careful user would write,
//! side by side in one process: `cargo bench -p covet-txn-bench`. The
//! scenarios are in `benches/compare.rs`; this crate holds the harness.
//!
//! What makes the comparison fair:
//!
//! - Same pool, same statements, same round trips a careful hand would make
//!   (MariaDB's SERIALIZABLE begins with one `SET TRANSACTION ...; START
//!   TRANSACTION` request on both sides).
//! - The covet-txn side is the code users write: `#[transactional]` without
//!   `manager = ...` (the manager is the task's default) and the typed
//!   `covet_txn::<backend>::conn()`.
//! - Latency scenarios use a pool of one connection, warm up before each
//!   scenario, interleave the two sides round by round and alternate which
//!   goes first; the ratio is the median of the per-round ratios.
//! - The hand-written retry loop uses covet-txn's jittered backoff and its
//!   classification (MariaDB's 1205 included), so the contended table
//!   compares implementations, not policies.
//! - Allocations are counted in a pass of their own; the timed passes pay
//!   one relaxed load per allocation, on both sides.
//! - Client CPU is read per pass from the kernel, for the calling thread and
//!   for the whole process (SQLite's worker thread included).
//!
//! ```sh
//! cargo bench -p covet-txn-bench                         # everything, a few minutes
//! COVET_BENCH_ROUNDS=4 cargo bench -p covet-txn-bench    # quicker, noisier
//! COVET_BENCH_BACKENDS=sqlite COVET_BENCH_SCENARIOS=latency cargo bench -p covet-txn-bench
//! ```
//!
//! In-process SQLite timings on a 2-core machine swing between two modes
//! unless the process stays on one CPU, so the harness re-executes itself
//! under `taskset -c 0` when `taskset` is available (`COVET_BENCH_PINNED=1`
//! skips that). PostgreSQL at `COVET_PG_URL` and MariaDB at `COVET_MYSQL_URL`
//! are skipped, with a notice, when unreachable.

pub mod alloc;
pub mod measure;
pub mod proxy;
pub mod retry;
