// Generated code names everything it uses by absolute path: user code that
// shadows `core`, `std`, `Result`, `Option`, `Ok` and `Some` changes nothing.
#![deny(warnings)]
#![allow(dead_code, non_snake_case)]

mod core {}
mod std {}
struct Result;
struct Option;
fn Ok() {}
fn Some() {}

#[covet_txn::on_commit]
fn receipt(_: &covet_txn::TxEvent) {}

#[covet_txn::transactional(
    isolation = "serializable",
    retry = 3,
    timeout = "5s",
    on_commit = [receipt],
)]
async fn place(id: i64, name: String) -> ::std::result::Result<i64, covet_txn::Error> {
    let _ = name;
    ::std::result::Result::Ok(id)
}

fn main() {
    let _ = place;
}
