use covet_txn::transactional;

#[transactional(isolation = "serializable", read_only = true, isolation = "read_committed")]
async fn save() -> Result<(), covet_txn::Error> {
    Ok(())
}

fn main() {}
