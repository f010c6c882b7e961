use covet_txn::transactional;

struct Amount(f64);

#[transactional(conflict_key = amount)]
async fn pay(amount: Amount) -> Result<(), covet_txn::Error> {
    let _ = amount.0;
    Ok(())
}

#[transactional(conflict_key = missing)]
async fn unknown_argument(id: i64) -> Result<(), covet_txn::Error> {
    let _ = id;
    Ok(())
}

fn main() {}
