use covet_txn::transactional;

#[transactional]
async fn count() -> Result<i64, covet_txn::Error> {
    Ok("not a number")
}

fn main() {}
