use covet_txn::transactional;

#[transactional(conflict_key = [])]
async fn nothing() -> Result<(), covet_txn::Error> {
    Ok(())
}

#[transactional(conflict_key = [a, b, c, d, e, f, g, h, i])]
async fn too_many(
    a: i64, b: i64, c: i64, d: i64, e: i64, f: i64, g: i64, h: i64, i: i64,
) -> Result<(), covet_txn::Error> {
    let _ = (a, b, c, d, e, f, g, h, i);
    Ok(())
}

#[transactional(propagation = "mandatory", conflict_key = id, contention = "adaptive")]
async fn never_admitted(id: i64) -> Result<(), covet_txn::Error> {
    let _ = id;
    Ok(())
}

#[transactional(contention = "eager")]
async fn unknown_setting() -> Result<(), covet_txn::Error> {
    Ok(())
}

fn main() {}
