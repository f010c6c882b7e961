use covet_txn::transactional;

#[transactional(backoff = "5ms", max_backoff = "1s")]
async fn save() -> Result<(), covet_txn::Error> {
    Ok(())
}

#[transactional(retry = 3, backoff = "50ms", max_backoff = "10ms")]
async fn inverted() -> Result<(), covet_txn::Error> {
    Ok(())
}

fn main() {}
