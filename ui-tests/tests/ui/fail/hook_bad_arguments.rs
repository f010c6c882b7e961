use covet_txn::TxEvent;

#[covet_txn::on_commit(retry = 3)]
fn transactional_argument(_: &TxEvent) {}

#[covet_txn::on_rollback(krate = "my_covet")]
fn misspelt(_: &TxEvent) {}

#[covet_txn::before_commit(times = 2)]
fn unknown(_: &TxEvent) {}

#[covet_txn::before_rollback(crate = "not a path")]
fn bad_path(_: &TxEvent) {}

#[covet_txn::on_commit(crate)]
fn no_value(_: &TxEvent) {}

#[covet_txn::on_commit(crate = my_covet)]
fn not_a_string(_: &TxEvent) {}

#[covet_txn::on_commit(crate = "a", crate = "b")]
fn twice(_: &TxEvent) {}

#[covet_txn::on_rollback("my_covet")]
fn not_an_argument(_: &TxEvent) {}

// Argument and signature errors are reported together.
#[covet_txn::on_commit(retry = 3)]
fn both(event: TxEvent) {
    let _ = event;
}

fn main() {}
