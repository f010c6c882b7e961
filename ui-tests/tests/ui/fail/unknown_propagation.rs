use covet_txn::transactional;

#[transactional(propagation = "requires-new-please")]
async fn save() -> Result<(), covet_txn::Error> {
    Ok(())
}

fn main() {}
