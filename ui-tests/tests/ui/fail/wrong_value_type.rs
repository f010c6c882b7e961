use covet_txn::transactional;

#[transactional(read_only = "yes")]
async fn read() -> Result<(), covet_txn::Error> {
    Ok(())
}

#[transactional(isolation = 3)]
async fn save() -> Result<(), covet_txn::Error> {
    Ok(())
}

#[transactional(isolation)]
async fn bare() -> Result<(), covet_txn::Error> {
    Ok(())
}

fn main() {}
