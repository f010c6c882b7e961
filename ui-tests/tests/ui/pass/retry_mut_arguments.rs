// A retrying function binds its arguments afresh for each attempt; a `mut`
// argument stays mutable there, and no `mut` warns.
#![deny(warnings)]

use covet_txn::transactional;

#[transactional(retry = 3)]
async fn append(mut items: Vec<i64>, item: i64) -> Result<Vec<i64>, covet_txn::Error> {
    items.push(item);
    Ok(items)
}

#[transactional(retry)]
async fn shorten(
    mut note: &str,
    mut total: &mut u32,
    other: &mut u32,
) -> Result<usize, covet_txn::Error> {
    note = note.trim();
    *total += 1;
    total = other;
    *total += 1;
    Ok(note.len())
}

struct Cart {
    items: Vec<i64>,
}

impl Cart {
    #[transactional(retry = 2)]
    async fn merge(&mut self, mut extra: Vec<i64>) -> Result<usize, covet_txn::Error> {
        extra.sort();
        self.items.append(&mut extra);
        Ok(self.items.len())
    }
}

fn main() {
    let _ = append;
    let _ = shorten;
    let _ = Cart::merge;
}
