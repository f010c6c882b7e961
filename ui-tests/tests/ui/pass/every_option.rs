use covet_txn::{TxManager, transactional};
use sqlx::Sqlite;

struct Service {
    db: TxManager<Sqlite>,
}

impl Service {
    #[transactional(
        manager = self.db,
        isolation = "REPEATABLE READ",
        read_only,
        propagation = "requires_new",
        name = "service.report",
        crate = "covet_txn",
    )]
    async fn report(&self) -> Result<i64, covet_txn::Error> {
        Ok(1)
    }
}

#[transactional(isolation = "read uncommitted", read_only = false, propagation = "supports")]
async fn lookup() -> Result<(), covet_txn::Error> {
    Ok(())
}

fn main() {
    let _ = lookup;
    let _ = Service::report;
}
