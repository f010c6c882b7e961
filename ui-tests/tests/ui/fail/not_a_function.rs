use covet_txn::transactional;

#[transactional]
struct Account {
    balance: i64,
}

fn main() {}
