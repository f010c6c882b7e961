use covet_txn::transactional;

#[transactional(retry = 3)]
async fn move_money((from, to): (i64, i64)) -> Result<i64, covet_txn::Error> {
    Ok(from + to)
}

fn main() {}
