//! Boxing a future in place. `Box::pin(future)` builds the future on the
//! stack and then copies all of it into the heap, and an unstarted future is
//! as large as its largest state: sqlx's wait for a pooled connection is
//! about 8 KiB, so every transaction copied that much (and the whole call,
//! a few hundred bytes more) for a few bytes of content. Allocating first
//! and building the future in the allocation lets the compiler write only
//! the bytes the future starts with; callgrind counted 9,000 fewer
//! instructions per PostgreSQL transaction, of the 22,000 that covet-txn
//! added to hand-written sqlx's 61,000.

use std::pin::Pin;

/// `Box::pin(make())`, with what `make` returns built in the allocation
/// instead of copied into it. Taking a closure matters: a value passed in
/// has already been built elsewhere.
#[inline(always)]
pub(crate) fn pinned<T>(make: impl FnOnce() -> T) -> Pin<Box<T>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}
