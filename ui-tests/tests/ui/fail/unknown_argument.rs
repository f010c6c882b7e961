use covet_txn::transactional;

#[transactional(isolaton = "serializable")]
async fn save() -> Result<(), covet_txn::Error> {
    Ok(())
}

#[transactional(retries = 3)]
async fn retry_later() -> Result<(), covet_txn::Error> {
    Ok(())
}

fn main() {}
