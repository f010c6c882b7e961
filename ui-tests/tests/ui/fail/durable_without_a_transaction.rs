use covet_txn::transactional;

#[transactional(durable, propagation = "supports")]
async fn settle() -> Result<(), covet_txn::Error> {
    Ok(())
}

fn is_refusal(_: &covet_txn::Error) -> bool {
    true
}

#[transactional(propagation = "not_supported", commit_on = is_refusal, isolation = "serializable")]
async fn audit() -> Result<(), covet_txn::Error> {
    Ok(())
}

fn main() {}
