use covet_txn::transactional;

#[derive(Debug)]
struct AppError;

#[transactional(retry = 3)]
async fn save(id: i64) -> Result<i64, AppError> {
    Ok(id)
}

fn main() {}
