use covet_txn::transactional;

#[transactional(isolation = "snapshot")]
async fn save() -> Result<(), covet_txn::Error> {
    Ok(())
}

fn main() {}
