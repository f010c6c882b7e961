use covet_txn::transactional;

struct NotAManager;

#[transactional(manager = NotAManager)]
async fn save() -> Result<(), covet_txn::Error> {
    Ok(())
}

fn main() {}
