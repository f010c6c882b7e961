// A transactional function's future is `Send` whenever its arguments and its
// error type are, so that it can be spawned on a multi-threaded runtime: the
// error type need not be `Sync`.
#![deny(warnings)]

use std::cell::Cell;

use covet_txn::transactional;

/// An error that can move between threads but not be shared by them.
#[derive(Debug)]
struct Unshared(Cell<u32>);

impl std::fmt::Display for Unshared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "failed {} time(s)", self.0.get())
    }
}

impl std::error::Error for Unshared {}

impl From<covet_txn::Error> for Unshared {
    fn from(_: covet_txn::Error) -> Self {
        Unshared(Cell::new(1))
    }
}

#[transactional(retry = 2)]
async fn retrying() -> Result<(), Unshared> {
    Err(Unshared(Cell::new(1)))
}

#[transactional]
async fn nested() -> Result<(), Unshared> {
    Err(Unshared(Cell::new(1)))
}

#[transactional(on_rollback = [note_rollback])]
async fn with_hooks() -> Result<(), Unshared> {
    nested().await
}

#[covet_txn::on_rollback]
fn note_rollback(_: &covet_txn::TxEvent) {}

fn spawnable<T: Send>(_: T) {}

fn main() {
    spawnable(retrying());
    spawnable(nested());
    spawnable(with_hooks());
}
