use covet_txn::transactional;

#[transactional]
async fn save() {}

fn main() {}
