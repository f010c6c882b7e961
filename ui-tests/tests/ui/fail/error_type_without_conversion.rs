use covet_txn::transactional;

#[transactional]
async fn save() -> Result<(), String> {
    Ok(())
}

fn main() {}
