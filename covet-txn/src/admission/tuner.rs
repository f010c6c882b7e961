//! Choosing a function's admission limit by what it yields: the limit at
//! which the function finishes the most attempts per second without a
//! conflict (its goodput), found by trying a neighbouring limit now and
//! then and keeping whichever measured better (by a clear margin, to leave
//! the pool's size: see `outyields`).
//!
//! Counting conflicts alone cannot find that limit, because what a conflict
//! costs depends on the server: a serialization failure on PostgreSQL costs
//! one attempt, a PostgreSQL deadlock stalls both transactions, and every
//! one queued behind their rows, for `deadlock_timeout` (1 s by default),
//! while MariaDB breaks a deadlock at once and flushes the commits of
//! concurrent transactions together, so that it gains from concurrency that
//! PostgreSQL loses to stalls. Measured on the contended-transfer benchmark
//! (10 hot rows, 8 tasks, SERIALIZABLE) on one machine: one attempt at a
//! time committed 17 times what the hand-written loop did on PostgreSQL and
//! 0.72 times on MariaDB.
//!
//! The tuner is pure bookkeeping: it is told when each attempt starts and
//! ends, and answers with the limit to admit at; the permits are `limit`'s
//! business.

use std::time::{Duration, Instant};

/// Attempts a window counts before it is judged, at least, and per attempt
/// admitted at once: enough that one slow attempt does not decide.
const WINDOW_ATTEMPTS: u32 = 16;
const WINDOW_ATTEMPTS_PER_LIMIT: u32 = 4;

/// The most windows between two trials: a limit's neighbours that keep
/// measuring worse are tried ever more rarely, down to this, so that a
/// trial that stalls the function (a deadlock) costs little of its time,
/// while a change in the workload is still noticed within a few thousand
/// attempts.
const MAX_TRIAL_SPACING: u32 = 256;

/// How many seconds at one limit its average spans before older windows
/// count half.
const YIELD_HORIZON_SECONDS: f64 = 10.0;

/// How long a limit's yield is remembered after its last window, in the
/// function's busy time (time with none of its attempts running changes
/// nothing it could measure): a limit that measured worse is tried again
/// after this, however rarely trials come, and a limit never measured is
/// worth a trial whatever its neighbours yielded.
const YIELD_MEMORY: Duration = Duration::from_secs(30);

/// The share of a window's attempt time that attempts ending in a conflict
/// must take for a lower limit to be worth a trial: below it, conflicts
/// are too rare for fewer attempts at once to gain, and a trial would
/// only measure noise.
const CONFLICT_TIME_SHARE: f64 = 0.1;

/// The share of a window's attempt time lost to conflicts past which the
/// next lower trial is a limit of 1.
const MOSTLY_CONFLICTS: f64 = 0.5;

/// How many times home's goodput another limit must have measured for a
/// trial to come at once, and how many times one limit must have measured
/// the other's for a trial to be judged before its `TRIAL_WINDOWS`: far
/// past a window's noise (±20 % on the benchmark), so that only a collapse
/// (a deadlock stall) hurries either.
const OUTDONE: f64 = 1.5;

/// Windows a trial runs before it is judged, unless one limit has already
/// measured `OUTDONE` times the other: one window is a few milliseconds of
/// a busy function, and a trial judged on it (±20 % noise) often kept a
/// limit below the best for as long as the worse reading was remembered
/// (measured on the contended benchmark's MariaDB 10 × 8 cell: runs that
/// settled low committed 0.94× the hand-written loop, others 1.13×).
const TRIAL_WINDOWS: u32 = 4;

/// How many times the ceiling's goodput a lower limit must measure to be
/// preferred to it, either way a trial goes. A trial's reading is noisy (a
/// few windows of a few dozen attempts), and under plain "more wins" a
/// function whose limits all yield about the same left the ceiling on a
/// lucky reading and stayed below it: on the contended benchmark's 100 × 8
/// cell on PostgreSQL, where one attempt in twelve fails serialization but
/// fewer at once gains nothing (the server flushes concurrent commits
/// together), the limit wandered between 6 and 8 and committed 0.91× the
/// hand-written loop, against 0.95× with management off in the same run.
/// Leaving the ceiling, which is what the function would run at unmanaged,
/// now takes a clear gain.
const LEAVE_CEILING_GAIN: f64 = 1.1;

/// Below the ceiling, how much of a higher limit's goodput a lower one must
/// measure to be preferred to it. Less than all of it: a function that left
/// the ceiling has shown that its conflicts cost it, and of two limits that
/// read about the same, the lower wastes fewer attempts on conflicts (the
/// contended benchmark's MariaDB 10 × 8 cell gains a few per cent a step
/// from 6 down to 3 at once, inside a trial's noise).
const BELOW_CEILING_GAIN: f64 = 0.97;

/// A function's limit and what the tuner has measured of it.
#[derive(Debug)]
pub(crate) struct Tuner {
    ceiling: u32,
    /// The limit admitted at now: `home`, or a neighbour on trial.
    current: u32,
    /// The limit that has measured best.
    home: u32,
    /// What each limit has yielded (index: limit − 1), over every window
    /// spent at it lately: a rare stall weighs in the average of the limit
    /// it happened at, and not only in the one window that saw it.
    yields: Vec<Yield>,
    /// Windows at home between two trials; doubles each time a trial loses.
    spacing: u32,
    /// Windows at home before the next trial.
    countdown: u32,
    /// Whether the next trial lowers the limit, when both ways are open:
    /// trials alternate, and a trial that won is followed at once by one
    /// further the same way.
    lower_next: bool,
    /// Windows the limit on trial has run.
    trial_windows: u32,
    window: Window,
    /// Attempts admitted and not yet ended.
    in_flight: u32,
    /// When the last attempt started or ended.
    last_event: Instant,
    /// All the time any attempt of the function ran.
    busy_total: Duration,
}

/// Useful attempts and the time they took, at one limit.
#[derive(Debug, Clone, Copy, Default)]
struct Yield {
    useful: f64,
    seconds: f64,
    /// The function's busy time when a window last added to it; `None` for
    /// a limit never measured.
    measured: Option<Duration>,
}

impl Yield {
    fn add(&mut self, useful: u32, elapsed: Duration, busy: Duration) {
        if self.is_stale(busy) {
            *self = Yield::default();
        }
        // Halving what was before keeps the average recent without
        // forgetting a stall after one window.
        if self.seconds > YIELD_HORIZON_SECONDS {
            self.useful /= 2.0;
            self.seconds /= 2.0;
        }
        self.useful += f64::from(useful);
        self.seconds += elapsed.as_secs_f64();
        self.measured = Some(busy);
    }

    /// Whether what it says is too old to go by: the workload may have
    /// changed since.
    fn is_stale(&self, busy: Duration) -> bool {
        self.measured
            .is_none_or(|measured| busy.saturating_sub(measured) > YIELD_MEMORY)
    }

    /// Useful attempts per second; `None` when nothing was measured lately.
    fn rate(&self, busy: Duration) -> Option<f64> {
        (!self.is_stale(busy) && self.seconds > 0.0).then(|| self.useful / self.seconds)
    }
}

/// The attempts that ended since the window started, and the time in it
/// that any attempt of the function was running: time with none running
/// (the function idle) says nothing about its limit.
#[derive(Debug, Default)]
struct Window {
    busy: Duration,
    useful: u32,
    conflicts: u32,
    /// The time attempts ran, all of them and those that ended in a
    /// conflict.
    attempt_time: Duration,
    conflict_time: Duration,
}

impl Tuner {
    /// A tuner that admits `ceiling` attempts at first: with nothing
    /// measured, the function runs as it would without a limit.
    pub(crate) fn new(ceiling: u32, now: Instant) -> Self {
        let ceiling = ceiling.max(1);
        Tuner {
            ceiling,
            current: ceiling,
            home: ceiling,
            yields: vec![Yield::default(); ceiling as usize],
            spacing: 1,
            countdown: 1,
            lower_next: true,
            trial_windows: 0,
            window: Window::default(),
            in_flight: 0,
            last_event: now,
            busy_total: Duration::ZERO,
        }
    }

    /// The limit to admit at.
    pub(crate) fn limit(&self) -> u32 {
        self.current
    }

    /// The highest limit: the pool's size.
    pub(crate) fn ceiling(&self) -> u32 {
        self.ceiling
    }

    /// An attempt was admitted.
    pub(crate) fn attempt_started(&mut self, now: Instant) {
        self.count_busy(now);
        self.in_flight += 1;
    }

    /// An attempt that `ran` for so long ended: in a conflict or not (a
    /// commit, or a rollback that no other transaction caused), or unknown
    /// (it was dropped). Returns the new limit when it changes.
    pub(crate) fn attempt_finished(
        &mut self,
        conflict: Option<bool>,
        ran: Duration,
        now: Instant,
    ) -> Option<u32> {
        self.count_busy(now);
        self.in_flight = self.in_flight.saturating_sub(1);
        match conflict {
            Some(true) => {
                self.window.conflicts += 1;
                self.window.conflict_time += ran;
            }
            Some(false) => self.window.useful += 1,
            None => return None,
        }
        self.window.attempt_time += ran;
        let ended = self.window.useful + self.window.conflicts;
        if ended < WINDOW_ATTEMPTS.max(WINDOW_ATTEMPTS_PER_LIMIT * self.current) {
            return None;
        }
        let elapsed = self.window.busy.max(Duration::from_micros(1));
        let conflict_share = if self.window.attempt_time.is_zero() {
            0.0
        } else {
            self.window.conflict_time.as_secs_f64() / self.window.attempt_time.as_secs_f64()
        };
        let useful = self.window.useful;
        let busy = self.busy_total;
        self.yield_at(self.current).add(useful, elapsed, busy);
        self.window = Window::default();
        let before = self.current;
        if self.current == self.home {
            self.judge_home(conflict_share, busy);
        } else {
            self.judge_trial(conflict_share, busy);
        }
        (self.current != before).then_some(self.current)
    }

    fn count_busy(&mut self, now: Instant) {
        if self.in_flight > 0 {
            let busy = now.saturating_duration_since(self.last_event);
            self.window.busy += busy;
            self.busy_total += busy;
        }
        self.last_event = now;
    }

    fn yield_at(&mut self, limit: u32) -> &mut Yield {
        &mut self.yields[limit as usize - 1]
    }

    fn rate_at(&self, limit: u32, busy: Duration) -> Option<f64> {
        self.yields[limit as usize - 1].rate(busy)
    }

    /// A window at home: when it is time, a limit goes on trial, and at
    /// once when another limit has measured far better than home now does
    /// (a stall at home, after a trial of that limit lost to home's good
    /// windows).
    fn judge_home(&mut self, conflict_share: f64, busy: Duration) {
        self.countdown = self.countdown.saturating_sub(1);
        let home_rate = self.rate_at(self.home, busy).unwrap_or(0.0);
        let outdone = (1..=self.ceiling)
            .filter(|limit| *limit != self.home)
            .any(|limit| {
                self.rate_at(limit, busy)
                    .is_some_and(|rate| rate > home_rate * OUTDONE)
            });
        if outdone || self.countdown == 0 {
            self.start_trial(conflict_share, busy);
        }
    }

    /// Puts a limit on trial, if one is worth it. A lower limit only after
    /// a window whose conflicts took a real share of its time (without
    /// them, fewer attempts at once cannot gain); after one that lost most
    /// of its time to them, a limit of 1 first, where attempts of the
    /// function cannot conflict with one another at all (on PostgreSQL,
    /// where a deadlock stalls for a second, every limit above 1 may
    /// stall, and stepping down through them costs a stall each). Going
    /// down, a limit that measured no better than home lately (see
    /// `outyields`) is passed over for the next one beyond it; going
    /// up, one that collapsed ends the search.
    fn start_trial(&mut self, conflict_share: f64, busy: Duration) {
        let home_rate = self.rate_at(self.home, busy).unwrap_or(0.0);
        let promising = |limit: &u32| {
            self.rate_at(*limit, busy)
                .is_none_or(|rate| outyields(*limit, rate, self.home, home_rate, self.ceiling))
        };
        let serial_first = conflict_share >= MOSTLY_CONFLICTS && promising(&1);
        let lower = (1..=lowered(self.home).min(self.home - 1))
            .rev()
            .find(promising)
            .map(|lower| if serial_first { 1 } else { lower })
            .filter(|_| conflict_share >= CONFLICT_TIME_SHARE);
        // Upwards only the next limit, and not one that collapsed (measured
        // `OUTDONE` times worse than home yields now: a stall) while that
        // is remembered: every try of a limit that stalls costs a stall.
        // One that merely read worse is noise, and is tried again.
        let higher = Some(self.home + 1).filter(|higher| {
            *higher <= self.ceiling
                && self
                    .rate_at(*higher, busy)
                    .is_none_or(|rate| rate * OUTDONE > home_rate)
        });
        let trial = match (lower, higher) {
            (Some(lower), Some(_)) if self.lower_next => Some(lower),
            (Some(lower), None) => Some(lower),
            (_, higher) => higher,
        };
        match trial {
            Some(trial) => {
                self.lower_next = trial > self.home;
                self.current = trial;
                self.trial_windows = 0;
            }
            None if self.countdown == 0 => self.countdown = self.spacing,
            None => {}
        }
    }

    /// A window at a limit on trial: once the trial has run its windows
    /// (or at once, if one of the two has measured far better), it becomes
    /// home if it has yielded more, and the next limit the same way goes
    /// on trial at once; otherwise home is kept and tried away from more
    /// rarely.
    fn judge_trial(&mut self, conflict_share: f64, busy: Duration) {
        self.trial_windows += 1;
        let trial = self.rate_at(self.current, busy).unwrap_or(0.0);
        let home = self.rate_at(self.home, busy);
        let decided = home.is_none_or(|home| trial > home * OUTDONE || home > trial * OUTDONE);
        if self.trial_windows < TRIAL_WINDOWS && !decided {
            return;
        }
        if home.is_none_or(|home| outyields(self.current, trial, self.home, home, self.ceiling)) {
            self.lower_next = self.current < self.home;
            self.home = self.current;
            self.spacing = 1;
            self.countdown = 0;
            self.start_trial(conflict_share, busy);
        } else {
            self.current = self.home;
            self.spacing = (self.spacing * 2).min(MAX_TRIAL_SPACING);
            self.countdown = self.spacing;
        }
    }
}

/// Whether limit `one`, yielding `rate`, is to be preferred to limit
/// `other`, yielding `other_rate`, under a function's `ceiling`.
fn outyields(one: u32, rate: f64, other: u32, other_rate: f64, ceiling: u32) -> bool {
    let gain = if one.max(other) == ceiling {
        LEAVE_CEILING_GAIN
    } else {
        BELOW_CEILING_GAIN
    };
    if one < other {
        rate > other_rate * gain
    } else {
        rate * gain > other_rate
    }
}

/// The lower neighbour of `limit`: a quarter less, at least one less.
fn lowered(limit: u32) -> u32 {
    (limit - limit.div_ceil(4)).max(1)
}

#[cfg(test)]
mod tests;
