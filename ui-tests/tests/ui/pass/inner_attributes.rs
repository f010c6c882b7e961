// A body's inner attributes (`#![...]` as its first line) apply to the whole
// function, with or without retry, and in hook handlers.
#![deny(warnings)]

use covet_txn::{TxEvent, transactional};

#[covet_txn::on_commit]
fn audit(event: &TxEvent) {
    #![allow(unused_variables)]
    let name = event.name;
}

#[transactional(on_commit = [audit])]
async fn save() -> Result<(), covet_txn::Error> {
    #![allow(unused_variables)]
    let unused = 1;
    Ok(())
}

#[transactional(retry = 3)]
async fn save_again(id: i64) -> Result<(), covet_txn::Error> {
    #![allow(unused_variables)]
    //! Inner doc comments are inner attributes too.
    let unused = id;
    Ok(())
}

fn main() {
    let _ = save;
    let _ = save_again;
}
