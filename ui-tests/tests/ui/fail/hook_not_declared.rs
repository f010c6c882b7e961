use covet_txn::{TxEvent, transactional};

fn send_receipt(event: &TxEvent) {
    let _ = event;
}

#[transactional(on_commit = [send_receipt])]
async fn save() -> Result<(), covet_txn::Error> {
    Ok(())
}

fn main() {}
