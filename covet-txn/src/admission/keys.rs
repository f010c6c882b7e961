//! Declared conflict keys: the values a call says its transaction touches
//! (an account, an order), and the bounded table of in-process locks that
//! makes attempts with an equal key take turns before they reach the
//! database.
//!
//! A key is hashed to one of [`KEY_SLOTS`] slots, each a first-come,
//! first-served lock; a call takes its slots in ascending order, so that two
//! calls never wait for each other in a circle. Different keys that share a
//! slot take turns too (rarely: one chance in [`KEY_SLOTS`] per pair). Keys
//! are a way to avoid conflicts, not a guarantee of isolation: the database
//! still isolates every transaction, so a key past the [`MAX_KEYS`]th is
//! not waited for, and a process that does not declare keys still runs
//! correctly.

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
    slots: OnceLock<Box<[Arc<Mutex<()>>]>>,
}

/// The slots a call holds, given back when dropped.
#[derive(Debug)]
pub(crate) struct HeldKeys {
    _guards: Vec<OwnedMutexGuard<()>>,
}

impl KeyTable {
    /// Waits for each of the call's slots, in ascending order, and says
    /// whether any was taken. Dropping the future gives back what it took
    /// and leaves the queue it was in.
    pub(crate) async fn hold(&self, keys: &ConflictKeys) -> (HeldKeys, bool) {
        let table = self
            .slots
            .get_or_init(|| (0..KEY_SLOTS).map(|_| Arc::new(Mutex::new(()))).collect());
        let mut held = Vec::with_capacity(keys.len());
        let mut queued = false;
        for slot in keys.slots() {
            let lock = Arc::clone(&table[usize::from(*slot)]);
            let guard = match Arc::clone(&lock).try_lock_owned() {
                Ok(guard) => guard,
                Err(_) => {
                    queued = true;
                    lock.lock_owned().await
                }
            };
            held.push(guard);
        }
        (HeldKeys { _guards: held }, queued)
    }
}

#[cfg(test)]
mod tests {
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
}
