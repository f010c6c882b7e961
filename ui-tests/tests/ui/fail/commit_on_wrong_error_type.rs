use covet_txn::transactional;

fn is_refusal(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::Other
}

#[transactional(commit_on = is_refusal)]
async fn reserve() -> Result<(), covet_txn::Error> {
    Ok(())
}

fn main() {}
