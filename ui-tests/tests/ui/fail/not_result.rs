use covet_txn::transactional;

#[transactional]
async fn count() -> Option<i64> {
    Some(1)
}

fn main() {}
