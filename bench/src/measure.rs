//! Timing two sides interleaved, reading client CPU from the kernel, and
//! counting allocations per call in a pass of their own.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::alloc;

/// How many rounds each scenario runs (`COVET_BENCH_ROUNDS`, default 10).
pub fn rounds() -> usize {
    std::env::var("COVET_BENCH_ROUNDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(10)
}

/// Calls per side in a round.
pub const PER_ROUND: i64 = 150;

/// Nanoseconds the calling thread has spent on a CPU (Linux schedstat).
pub fn thread_cpu_nanos() -> Option<u64> {
    schedstat_nanos("/proc/thread-self/schedstat")
}

/// Nanoseconds every thread of this process has spent on a CPU: the
/// calling thread and any worker (SQLite runs each connection's statements
/// on a thread of its own).
pub fn process_cpu_nanos() -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let path = task.ok()?.path().join("schedstat");
        // A thread may end between listing and reading it.
        total += schedstat_nanos(&path.to_string_lossy()).unwrap_or(0);
    }
    Some(total)
}

/// Nanoseconds every CPU of the machine has spent busy (neither idle nor
/// waiting for I/O), the database servers' work included: `/proc/stat`
/// counts in ticks of 1/100 s (`USER_HZ`, fixed at 100 on Linux for this
/// file), so only a span of many transactions reads meaningfully.
pub fn machine_busy_nanos() -> Option<u64> {
    const NANOS_PER_TICK: u64 = 10_000_000;
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let mut busy = 0;
    for (index, field) in cpu.split_whitespace().enumerate() {
        // The fourth and fifth fields are idle and iowait.
        if index != 3 && index != 4 {
            busy += field.parse::<u64>().ok()?;
        }
    }
    Some(busy * NANOS_PER_TICK)
}

fn schedstat_nanos(path: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// One side's passes of a scenario.
#[derive(Default)]
pub struct Side {
    /// Each call's wall time.
    pub times: Vec<Duration>,
    /// CPU of the calling thread over its passes, if the kernel tells.
    pub thread_cpu: Option<u64>,
    /// CPU of the whole process over its passes.
    pub process_cpu: Option<u64>,
}

impl Side {
    /// The median call, in microseconds.
    pub fn median_us(&mut self) -> f64 {
        micros(percentile(&mut self.times, 0.5))
    }

    /// Calling-thread and whole-process CPU per call, in microseconds.
    pub fn cpu_per_call_us(&self) -> (Option<f64>, Option<f64>) {
        let calls = self.times.len() as f64;
        let per_call = |nanos: Option<u64>| nanos.map(|nanos| nanos as f64 / calls / 1000.0);
        (per_call(self.thread_cpu), per_call(self.process_cpu))
    }
}

/// Both sides of a scenario.
pub struct Comparison {
    /// Hand-written sqlx.
    pub hand: Side,
    /// covet-txn.
    pub covet: Side,
    /// covet-txn's median over the hand-written median, per round: the two
    /// sides of a round ran back to back, so drift cancels out.
    pub round_ratios: Vec<f64>,
}

impl Comparison {
    /// The median of the per-round ratios.
    pub fn ratio(&mut self) -> f64 {
        median(&mut self.round_ratios)
    }
}

/// Adds what a pass `spent` to a side's `total`: `None` while no pass has
/// been read, and a pass the kernel could not read is left out (on Linux
/// each read succeeds or none does).
pub fn add(total: &mut Option<u64>, spent: Option<u64>) {
    if let Some(spent) = spent {
        *total = Some(total.unwrap_or(0) + spent);
    }
}

/// What a counter read `before` and `after` a pass says the pass spent.
pub fn spent(before: Option<u64>, after: Option<u64>) -> Option<u64> {
    Some(after?.saturating_sub(before?))
}

/// Times `hand` and `covet` call by call, interleaved round by round, the
/// side that goes first alternating; CPU is read around each pass, never
/// inside a timed call.
pub async fn interleaved<H, HF, C, CF>(mut hand: H, mut covet: C) -> Comparison
where
    H: FnMut(i64) -> HF,
    HF: Future<Output = ()>,
    C: FnMut(i64) -> CF,
    CF: Future<Output = ()>,
{
    let mut sides = [Side::default(), Side::default()];
    let mut round_ratios = Vec::new();
    for round in 0..rounds() {
        let mut medians = [0.0; 2];
        for side in [round % 2, 1 - round % 2] {
            let mut times = Vec::with_capacity(PER_ROUND as usize);
            let (thread_before, process_before) = (thread_cpu_nanos(), process_cpu_nanos());
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
            add(
                &mut sides[side].thread_cpu,
                spent(thread_before, thread_cpu_nanos()),
            );
            add(
                &mut sides[side].process_cpu,
                spent(process_before, process_cpu_nanos()),
            );
            medians[side] = micros(percentile(&mut times, 0.5));
            sides[side].times.extend(times);
        }
        round_ratios.push(medians[1] / medians[0]);
    }
    let [hand, covet] = sides;
    Comparison {
        hand,
        covet,
        round_ratios,
    }
}

/// Allocations per call of each side, counted over `calls` calls after the
/// timed passes.
pub async fn allocations_per_call<H, HF, C, CF>(mut hand: H, mut covet: C) -> (f64, f64)
where
    H: FnMut(i64) -> HF,
    HF: Future<Output = ()>,
    C: FnMut(i64) -> CF,
    CF: Future<Output = ()>,
{
    const CALLS: i64 = 200;
    alloc::start();
    for call in 0..CALLS {
        hand(1 + call % 100).await;
    }
    let hand_counts = alloc::stop();
    alloc::start();
    for call in 0..CALLS {
        covet(1 + call % 100).await;
    }
    let covet_counts = alloc::stop();
    let per_call = |counts: alloc::Counts| counts.allocations as f64 / CALLS as f64;
    (per_call(hand_counts), per_call(covet_counts))
}

/// The median of `values`.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The `q` quantile of `times` (0 to 1).
pub fn percentile(times: &mut [Duration], q: f64) -> Duration {
    times.sort();
    let index = ((times.len() as f64 - 1.0) * q).round() as usize;
    times.get(index).copied().unwrap_or_default()
}

/// `duration` in microseconds.
pub fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}
