use covet_txn::transactional;

#[transactional(timeout = "30")]
async fn no_unit() -> Result<(), covet_txn::Error> {
    Ok(())
}

#[transactional(timeout = "0s")]
async fn zero() -> Result<(), covet_txn::Error> {
    Ok(())
}

#[transactional(timeout = "ten seconds")]
async fn words() -> Result<(), covet_txn::Error> {
    Ok(())
}

#[transactional(retry = 3, backoff = "5 weeks")]
async fn unknown_unit() -> Result<(), covet_txn::Error> {
    Ok(())
}

#[transactional(timeout = 30)]
async fn not_a_string() -> Result<(), covet_txn::Error> {
    Ok(())
}

fn main() {}
