use covet_txn::{TxEvent, transactional};

#[derive(Debug)]
pub struct MailError;

impl std::fmt::Display for MailError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mail server down")
    }
}

impl std::error::Error for MailError {}

#[covet_txn::on_commit]
pub async fn send_receipt(event: &TxEvent) -> Result<(), MailError> {
    let _ = event.id;
    Ok(())
}

#[covet_txn::before_commit]
fn validate(event: &covet_txn::TxEvent) -> Result<(), String> {
    let _ = event.depth;
    Ok(())
}

#[covet_txn::on_rollback]
fn alert(_event: &TxEvent) {}

#[covet_txn::before_rollback]
async fn note(_: &TxEvent) -> () {}

mod audit {
    #[covet_txn::on_commit]
    pub fn record(_: &covet_txn::TxEvent) {}
}

#[transactional(
    before_commit = [validate],
    on_commit = [send_receipt, audit::record],
    before_rollback = [note],
    on_rollback = [alert],
)]
async fn place_order() -> Result<(), covet_txn::Error> {
    covet_txn::on_commit(|| async {}).await;
    Ok(())
}

fn main() {
    let _ = place_order;
    let _ = send_receipt;
}
