// The hook attributes take `crate = "..."`, as #[transactional] does, for a
// crate that reaches covet-txn by another path: a renamed dependency, or a
// facade crate that re-exports it.
#![deny(warnings)]

mod facade {
    pub use covet_txn::*;
}

use covet_txn as my_covet;
use covet_txn::TxEvent;

#[covet_txn::on_commit(crate = "my_covet")]
fn send_receipt(event: &TxEvent) {
    let _ = event.id;
}

#[covet_txn::before_commit(crate = "crate::facade")]
async fn validate(_: &TxEvent) -> Result<(), String> {
    Ok(())
}

#[covet_txn::on_rollback(crate = "::covet_txn")]
fn alert(_: &TxEvent) {}

#[covet_txn::before_rollback(crate = "facade")]
fn note(_: &TxEvent) {}

#[covet_txn::transactional(
    crate = "crate::facade",
    before_commit = [validate],
    on_commit = [send_receipt],
    before_rollback = [note],
    on_rollback = [alert],
)]
async fn place_order() -> Result<(), covet_txn::Error> {
    Ok(())
}

fn main() {
    let _ = place_order;
}
