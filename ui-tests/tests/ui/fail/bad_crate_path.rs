#[covet_txn::transactional(crate = "not a path")]
async fn save() -> Result<(), covet_txn::Error> {
    Ok(())
}

fn main() {}
