use covet_txn::transactional;

#[transactional]
fn save() -> Result<(), covet_txn::Error> {
    Ok(())
}

fn main() {}
