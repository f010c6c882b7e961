use covet_txn::transactional;

#[transactional(propagation = "never", isolation = "serializable")]
async fn report() -> Result<(), covet_txn::Error> {
    Ok(())
}

fn main() {}
