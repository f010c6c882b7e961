#[covet_txn::test(manager = manager(), manager = manager())]
fn not_async() {}

#[covet_txn::test]
async fn takes_arguments(id: i64) {
    let _ = id;
}

#[covet_txn::test]
#[tokio::test]
async fn twice_a_test() {}

#[covet_txn::test(isolation = "serializable")]
async fn asks_for_isolation() {}

async fn manager() -> covet_txn::TxManager<sqlx::Sqlite> {
    unimplemented!()
}

fn main() {}
