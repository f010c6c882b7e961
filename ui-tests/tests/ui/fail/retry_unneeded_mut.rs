// A `mut` the body does not need is reported on the user's `mut`, once, as it
// would be without the macro.
#![deny(unused_mut)]

use covet_txn::transactional;

#[transactional(retry = 3)]
async fn total(mut items: Vec<i64>) -> Result<i64, covet_txn::Error> {
    Ok(items.iter().sum())
}

fn main() {}
