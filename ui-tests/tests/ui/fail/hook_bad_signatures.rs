use covet_txn::TxEvent;

#[covet_txn::on_commit]
async fn no_event() {}

#[covet_txn::on_commit]
fn by_value(event: TxEvent) {
    let _ = event;
}

#[covet_txn::on_rollback]
fn extra(event: &TxEvent, mailer: &str) {
    let _ = (event, mailer);
}

#[covet_txn::before_commit]
fn generic<T: Default>(event: &TxEvent) {
    let _ = (event, T::default());
}

#[covet_txn::before_rollback]
fn counts(event: &TxEvent) -> i64 {
    let _ = event;
    1
}

fn main() {}
