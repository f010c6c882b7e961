use covet_txn::{TxEvent, transactional};

#[covet_txn::on_rollback]
fn alert(event: &TxEvent) {
    let _ = event;
}

#[transactional(on_commit = [alert])]
async fn save() -> Result<(), covet_txn::Error> {
    Ok(())
}

fn main() {}
