use covet_txn::transactional;

struct Amount(f64);

#[transactional(conflict_key = amount)]
async fn pay(amount: Amount) -> Result<(), covet_txn::Error> {
    let _ = amount.0;
    Ok(())
}

fn main() {}
