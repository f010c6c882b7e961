//! Admission: what an outermost transaction waits for, in this process,
//! before its attempt reaches the database. Three gates, each first come,
//! first served, each left without a trace by a waiter whose future is
//! dropped:
//!
//! - its declared conflict keys (`keys`), always when declared;
//! - with contention management on, one of its function's `limit` turns,
//!   a retry ahead of first attempts; the limit is tuned to what the
//!   function yields (`tuner`);
//! - with contention management on, on SQLite, the database file's one
//!   writer turn for a read-write transaction (`writers`).
//!
//! Taken in that order, so that no two attempts wait for each other in a
//! circle, and given back when the attempt ends, except that where the
//! dialect allows it the function's turn and the keys go on as the COMMIT
//! goes out (see `keys` and `limit`). This module decides nothing about which
//! calls are admitted (the call does: only one that begins a transaction
//! with no other of its task open) and counts nothing (the call reports the
//! wait to its observer); it holds the queues and the limits.

pub(crate) mod keys;
pub(crate) mod limit;
mod tuner;
pub(crate) mod writers;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OwnedSemaphorePermit;

use self::keys::{ConflictKeys, HeldKeys, KeyTable};
use self::limit::{FunctionGate, GatePermit, Queue, lock};
use self::writers::WriterGate;
use crate::options::Contention;
use crate::quick_map::QuickMap;

/// A manager's admission state.
#[derive(Debug)]
pub(crate) struct Admission {
    mode: Contention,
    /// The most attempts a function's limit admits: the pool's size.
    ceiling: u32,
    functions: Mutex<QuickMap<&'static str, Arc<FunctionGate>>>,
    keys: KeyTable,
    /// The database file's writer gate (SQLite files only).
    writers: Option<WriterGate>,
}

/// What an attempt asks to be admitted for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ask<'a> {
    pub(crate) function: &'static str,
    /// The call's own setting, over the manager's.
    pub(crate) contention: Option<Contention>,
    pub(crate) queue: Queue,
    pub(crate) keys: &'a ConflictKeys,
    /// Whether the transaction may write.
    pub(crate) writes: bool,
    /// Whether every read of the transaction waits for the locks of one
    /// whose COMMIT is in flight, so that it may begin during that COMMIT
    /// and give its own turns (its function's, its keys) on as its COMMIT
    /// goes out.
    pub(crate) overlaps: bool,
}

/// An admitted attempt's turns, given back when dropped.
#[derive(Debug)]
pub(crate) struct Ticket {
    gate: Option<GatePermit>,
    keys: Option<HeldKeys>,
    _writer: Option<OwnedSemaphorePermit>,
    /// Whether its turns go on as its COMMIT goes out ([`Ask::overlaps`]).
    overlaps: bool,
    /// How long the attempt waited, if it waited at all.
    pub(crate) waited: Option<Duration>,
}

/// How one function's admission stands now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct GateReading {
    /// `None` for a function whose calls only declared keys.
    pub(crate) limit: Option<f64>,
    pub(crate) waiting: u32,
}

impl Admission {
    pub(crate) fn new(mode: Contention, ceiling: u32, writers: Option<WriterGate>) -> Self {
        Admission {
            mode,
            ceiling,
            functions: Mutex::default(),
            keys: KeyTable::default(),
            writers,
        }
    }

    /// Whether an attempt asking for this has anything to wait for.
    pub(crate) fn applies(&self, ask: &Ask<'_>) -> bool {
        !ask.keys.is_empty() || ask.contention.unwrap_or(self.mode) == Contention::Adaptive
    }

    /// Waits for the attempt's turns. Cancel-safe: dropping the future
    /// gives back whatever it had taken.
    pub(crate) async fn admit(&self, ask: Ask<'_>) -> Ticket {
        let started = Instant::now();
        let gate = self.gate(ask.function);
        let waiting = gate.waiting_guard();
        let mut waited = false;
        let keys = if ask.keys.is_empty() {
            None
        } else {
            let (held, queued) = self.keys.hold(ask.keys, ask.overlaps).await;
            waited |= queued;
            Some(held)
        };
        let managed = ask.contention.unwrap_or(self.mode) == Contention::Adaptive;
        let permit = if managed {
            waited |= gate.would_wait(ask.queue);
            Some(gate.admit(ask.queue).await)
        } else {
            None
        };
        let writer = match (&self.writers, managed && ask.writes) {
            (Some(writers), true) => {
                let (turn, queued) = writers.turn().await;
                waited |= queued;
                turn
            }
            _ => None,
        };
        drop(waiting);
        Ticket {
            gate: permit,
            keys,
            _writer: writer,
            overlaps: ask.overlaps,
            waited: waited.then(|| started.elapsed()),
        }
    }

    /// The function's gate, made on its first attempt.
    fn gate(&self, function: &'static str) -> Arc<FunctionGate> {
        Arc::clone(
            lock(&self.functions)
                .entry(function)
                .or_insert_with(|| Arc::new(FunctionGate::new(self.ceiling))),
        )
    }

    /// Each function's limit and waiters, for metrics.
    pub(crate) fn readings(&self) -> Vec<(&'static str, GateReading)> {
        let mut readings: Vec<_> = lock(&self.functions)
            .iter()
            .map(|(function, gate)| {
                let reading = GateReading {
                    limit: gate.limit(),
                    waiting: gate.waiting(),
                };
                (*function, reading)
            })
            .collect();
        readings.sort_by_key(|(function, _)| *function);
        readings
    }
}

impl Ticket {
    /// The attempt ended, in a conflict with another transaction or not:
    /// its function's limit learns from it, and its turns are given back.
    /// Says whether a retry would now wait in its function's lane (see
    /// `limit`): false when a turn is free at once, or when the attempt did
    /// not go through its function's limit.
    pub(crate) fn end(mut self, conflict: bool) -> bool {
        self.gate.take().is_some_and(|permit| permit.end(conflict))
    }

    /// Whether the attempt gives any of its turns on as its COMMIT goes out.
    pub(crate) fn gives_on_at_commit(&self) -> bool {
        self.overlaps && (self.gate.is_some() || self.keys.is_some())
    }

    /// The attempt's COMMIT is about to go out: where its admission allowed
    /// it, its function's turn and its keys go on to the next attempts now
    /// (see `limit` and `keys`); the tuner still learns how it ends.
    pub(crate) fn commit_going_out(&mut self) {
        if !self.overlaps {
            return;
        }
        if let Some(gate) = &mut self.gate {
            gate.give_on_at_commit();
        }
        if let Some(keys) = &mut self.keys {
            keys.pass_on();
        }
    }

    /// The attempt's COMMIT was answered.
    pub(crate) fn commit_answered(&mut self) {
        if let Some(keys) = &mut self.keys {
            keys.settled();
        }
    }
}
