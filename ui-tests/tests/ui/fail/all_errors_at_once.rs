use covet_txn::transactional;

#[transactional(isolation = "snapshot", propagation = "sometimes", timeout_after = 3)]
fn save() {}

fn main() {}
