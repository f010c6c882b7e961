use covet_txn::transactional;

#[transactional(retry = 0)]
async fn save() -> Result<(), covet_txn::Error> {
    Ok(())
}

fn main() {}
