// A crate that renamed its covet-txn dependency (here `renamed_covet`) says
// so with `crate = "..."`; the generated code then never names `covet_txn`.
#![deny(warnings)]

// Cargo refuses one package under two names in one manifest, so the rename
// is made here, where the macros see it the same way.
extern crate covet_txn as renamed_covet;

#[renamed_covet::on_commit(crate = "renamed_covet")]
fn receipt(_: &renamed_covet::TxEvent) {}

#[renamed_covet::transactional(crate = "renamed_covet", retry = 2, on_commit = [receipt])]
async fn place(id: i64) -> Result<i64, renamed_covet::Error> {
    Ok(id)
}

#[renamed_covet::test(crate = "renamed_covet", manager = manager())]
async fn a_test() -> Result<(), renamed_covet::Error> {
    Ok(())
}

async fn manager() -> renamed_covet::TxManager<sqlx::Sqlite> {
    let pool = sqlx::SqlitePool::connect("sqlite::memory:").await;
    renamed_covet::TxManager::new(pool.unwrap_or_else(|error| panic!("{error}")))
}

fn main() {
    let _ = place;
}
