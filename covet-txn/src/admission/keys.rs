//! Declared conflict keys: the values a call says its transaction touches
//! (an account, an order), and the bounded table of in-process locks that
//! makes attempts with an equal key take turns before they reach the
//! database.
//!
//! A key is hashed to one of [`KEY_SLOTS`] slots, each a first-come,
//! first-served lock; a call never waits while holding a slot, so that two
//! calls never wait for each other in a circle.
//!
//! A slot is two locks: its turn, held while a call runs, and its settling
//! lock, held while a call that gave its turn on as its COMMIT went out
//! waits for the answer. A call whose every read waits for a committing
//! transaction's locks (the dialect says when) needs only the turn, so that
//! its BEGIN overlaps the flush of the previous COMMIT; it gives its own
//! turn on the same way if the settling locks are free as its COMMIT goes
//! out, and otherwise keeps the turn until its attempt ends, as any other
//! call does: nothing waits before a COMMIT. Any other call, once it has
//! the turn, waits for the settling lock to be free: it begins only once
//! that COMMIT has been answered. That wait is short, counts against the
//! call's deadline (it is part of admission) and cannot form a circle: the
//! lock's holder is a COMMIT in flight, which waits for nothing in the
//! table. Different keys that share a slot take turns too (rarely: one
//! chance in [`KEY_SLOTS`] per pair). Keys are a way to avoid conflicts,
//! not a guarantee of isolation: the database still isolates every
//! transaction, so a key past the [`MAX_KEYS`]th is not waited for, and a
//! process that does not declare keys still runs correctly.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher, Hash};
use std::sync::{Arc, OnceLock};

use tokio::sync::{Mutex, OwnedMutexGuard};

/// Slots in a manager's key table.
pub const KEY_SLOTS: usize = 1024;

/// Keys one call can declare.
pub const MAX_KEYS: usize = 8;

/// The conflict keys of a call, as the slots of the key table they take.
///
/// ```
/// use covet_txn::{ConflictKeys, TxOptions};
/// let keys = ConflictKeys::new().with(&"account-1").with(&42_i64);
/// assert_eq!(keys.len(), 2);
/// let options = TxOptions::new().conflict_keys(keys);
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConflictKeys {
    /// Ascending, without repeats.
    slots: [u16; MAX_KEYS],
    len: u8,
}

impl ConflictKeys {
    /// No keys.
    pub const fn new() -> Self {
        ConflictKeys {
            slots: [0; MAX_KEYS],
            len: 0,
        }
    }

    /// These keys and `key`. Equal values (by `Hash`) are one key; a key
    /// past the eighth is not waited for.
    pub fn with<K: Hash + ?Sized>(mut self, key: &K) -> Self {
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
        // The remainder is below KEY_SLOTS, which fits a u16.
        let slot = (hash % KEY_SLOTS as u64) as u16;
        let len = usize::from(self.len);
        let (Err(at), true) = (self.slots[..len].binary_search(&slot), len < MAX_KEYS) else {
            return self;
        };
        self.slots.copy_within(at..len, at + 1);
        self.slots[at] = slot;
        self.len += 1;
        self
    }

    /// The number of distinct slots the keys take.
    pub const fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether there are no keys.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn slots(&self) -> &[u16] {
        &self.slots[..usize::from(self.len)]
    }
}

/// A manager's key table, made on the first call that declares a key.
#[derive(Debug, Default)]
pub(crate) struct KeyTable {
    slots: OnceLock<Box<[Slot]>>,
}

/// One slot: its turn and its settling lock.
#[derive(Debug, Default)]
struct Slot {
    turn: Arc<Mutex<()>>,
    settling: Arc<Mutex<()>>,
}

/// The slots a call holds, given back when dropped.
#[derive(Debug)]
pub(crate) struct HeldKeys {
    /// The turns.
    guards: Vec<OwnedMutexGuard<()>>,
    /// The settling locks to take when giving the turns on: empty for a call
    /// that may not.
    to_settle: Vec<Arc<Mutex<()>>>,
    /// The settling locks taken, held until the COMMIT is answered.
    settling: Vec<OwnedMutexGuard<()>>,
}

impl HeldKeys {
    fn new(turns: Vec<OwnedMutexGuard<()>>, to_settle: Vec<Arc<Mutex<()>>>) -> Self {
        HeldKeys {
            guards: turns,
            to_settle,
            settling: Vec::new(),
        }
    }

    /// Gives the turns on as the COMMIT goes out, keeping the slots'
    /// settling locks until it is answered. It never waits: if a COMMIT
    /// given on before is still unanswered on one of the slots, the call
    /// keeps its turns until its attempt ends, as a call that may not give
    /// them on early does. (Waiting here, before a COMMIT, would
    /// be unbounded by the call's deadline, and could wait on a COMMIT
    /// whose lost answer is being resolved on a connection of the pool the
    /// waiting calls hold.)
    pub(crate) fn pass_on(&mut self) {
        if self.to_settle.is_empty() {
            return;
        }
        let to_settle = std::mem::take(&mut self.to_settle);
        let settling: Option<Vec<_>> = to_settle
            .into_iter()
            .map(|lock| lock.try_lock_owned().ok())
            .collect();
        if let Some(settling) = settling {
            self.settling = settling;
            self.guards.clear();
        }
    }

    /// The COMMIT was answered: whoever waits for it may begin.
    pub(crate) fn settled(&mut self) {
        self.settling.clear();
    }
}

impl KeyTable {
    /// Takes all of the call's slots at once, and says whether it had to
    /// wait. It never waits while holding a slot: it takes what is free,
    /// and when one is taken it gives back the rest and waits in that
    /// slot's queue alone, then tries the others again with that one held.
    /// Holding some keys while queued for another would make every call
    /// that needs one of them wait too (convoys, measured on the contended
    /// benchmark). Dropping the future gives back what it took and leaves
    /// the queue it was in.
    ///
    /// `overlaps`: the call's reads all wait for a committing transaction's
    /// locks, so it may begin while a COMMIT given on is in flight, and give
    /// its own turns on the same way when no such COMMIT is still in flight
    /// as its own goes out. Any other call, once it holds the turns, waits
    /// for such a COMMIT to be answered (holding the turns, so that a stream
    /// of calls giving them on cannot starve it).
    pub(crate) async fn hold(&self, keys: &ConflictKeys, overlaps: bool) -> (HeldKeys, bool) {
        let table = self
            .slots
            .get_or_init(|| (0..KEY_SLOTS).map(|_| Slot::default()).collect());
        let slots: Vec<&Slot> = keys
            .slots()
            .iter()
            .map(|slot| &table[usize::from(*slot)])
            .collect();
        let locks: Vec<&Arc<Mutex<()>>> = slots.iter().map(|slot| &slot.turn).collect();
        let mut queued = false;
        let mut waited_for: Option<(usize, OwnedMutexGuard<()>)> = None;
        let turns = loop {
            let mut held = Vec::with_capacity(locks.len());
            let mut blocked = None;
            for (index, lock) in locks.iter().enumerate() {
                if waited_for
                    .as_ref()
                    .is_some_and(|(waited, _)| *waited == index)
                {
                    continue;
                }
                match Arc::clone(lock).try_lock_owned() {
                    Ok(guard) => held.push(guard),
                    Err(_) => {
                        blocked = Some(index);
                        break;
                    }
                }
            }
            let Some(index) = blocked else {
                held.extend(waited_for.map(|(_, guard)| guard));
                break held;
            };
            drop(held);
            drop(waited_for.take());
            queued = true;
            waited_for = Some((index, Arc::clone(locks[index]).lock_owned().await));
        };
        if overlaps {
            let to_settle = slots
                .iter()
                .map(|slot| Arc::clone(&slot.settling))
                .collect();
            return (HeldKeys::new(turns, to_settle), queued);
        }
        // With the turns held no new COMMIT can start giving them on: wait
        // for one still in flight, whose holder waits for nothing here.
        for slot in &slots {
            let settled = match slot.settling.try_lock() {
                Ok(free) => free,
                Err(_) => {
                    queued = true;
                    slot.settling.lock().await
                }
            };
            drop(settled);
        }
        (HeldKeys::new(turns, Vec::new()), queued)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn equal_keys_are_one_and_slots_stay_sorted() {
        let keys = ConflictKeys::new().with(&7_i64).with(&3_i64).with(&7_i64);
        assert_eq!(keys.len(), 2);
        assert!(keys.slots().windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(keys, ConflictKeys::new().with(&3_i64).with(&7_i64));
    }

    #[test]
    fn keys_past_the_limit_are_not_kept() {
        let keys = (0..100_i64).fold(ConflictKeys::new(), |keys, key| keys.with(&key));
        assert_eq!(keys.len(), MAX_KEYS);
    }

    #[tokio::test]
    async fn a_call_waiting_for_one_key_holds_none_of_its_others() {
        let table = Arc::new(KeyTable::default());
        let (first, second) = (
            ConflictKeys::new().with(&1_i64),
            ConflictKeys::new().with(&2_i64),
        );
        assert_ne!(first, second);
        let (holding_first, _) = table.hold(&first, false).await;
        let waiting = waiting_call(&table, first.with(&2_i64), false);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiting.is_finished(),
            "both keys were taken while one was held"
        );
        let (_, queued) =
            tokio::time::timeout(Duration::from_millis(20), table.hold(&second, false))
                .await
                .expect("the free key is not held by the waiting call");
        assert!(!queued);
        drop(holding_first);
        assert!(waiting.await.expect("no panic"), "the call waited");
    }

    /// A call taking `key` in a task of its own; its result says whether
    /// it queued.
    fn waiting_call(
        table: &Arc<KeyTable>,
        key: ConflictKeys,
        overlaps: bool,
    ) -> tokio::task::JoinHandle<bool> {
        let table = Arc::clone(table);
        tokio::spawn(async move { table.hold(&key, overlaps).await.1 })
    }

    #[tokio::test]
    async fn a_turn_given_on_at_commit_lets_in_only_calls_whose_reads_wait() {
        let table = Arc::new(KeyTable::default());
        let key = ConflictKeys::new().with(&7_i64);
        let (mut committing, _) = table.hold(&key, true).await;
        committing.pass_on();
        let (mut next, queued) =
            tokio::time::timeout(Duration::from_millis(20), table.hold(&key, true))
                .await
                .expect("a call whose reads wait begins during the COMMIT");
        assert!(!queued);
        let snapshot_reader = waiting_call(&table, key, false);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !snapshot_reader.is_finished(),
            "a call reading a snapshot began before the COMMIT was answered"
        );
        next.pass_on();
        let third = waiting_call(&table, key, true);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !third.is_finished(),
            "the next call gave its turn on before the COMMIT it follows was answered"
        );
        committing.settled();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !snapshot_reader.is_finished() && !third.is_finished(),
            "a call began during the COMMIT of a call that kept its turn"
        );
        next.settled();
        drop(next);
        assert!(snapshot_reader.await.expect("no panic"), "it waited");
        assert!(third.await.expect("no panic"), "it waited");
    }

    #[tokio::test]
    async fn a_call_whose_reads_may_not_wait_keeps_its_turn_through_commit() {
        let table = KeyTable::default();
        let key = ConflictKeys::new().with(&8_i64);
        let (mut committing, _) = table.hold(&key, false).await;
        committing.pass_on();
        let next = tokio::time::timeout(Duration::from_millis(20), table.hold(&key, true)).await;
        assert!(
            next.is_err(),
            "a call began during the COMMIT of a call that may not give its turn on"
        );
    }

    #[tokio::test]
    async fn calls_giving_their_turn_on_cannot_starve_one_that_waits_for_answers() {
        let table = Arc::new(KeyTable::default());
        let key = ConflictKeys::new().with(&9_i64);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let streams: Vec<_> = (0..2)
            .map(|_| {
                let (table, stop) = (Arc::clone(&table), Arc::clone(&stop));
                tokio::spawn(async move {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let (mut held, _) = table.hold(&key, true).await;
                        held.pass_on();
                        tokio::task::yield_now().await;
                        held.settled();
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let admitted = tokio::time::timeout(Duration::from_secs(5), table.hold(&key, false)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(
            admitted.is_ok(),
            "a call reading snapshots never got the key"
        );
        drop(admitted);
        for stream in streams {
            stream.await.expect("no panic");
        }
    }
}
