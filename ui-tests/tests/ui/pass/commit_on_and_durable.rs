// `commit_on` takes a predicate over the function's own error type, with or
// without `retry`; `durable` and `not_supported` are propagation choices.
#![deny(warnings)]

#[derive(Debug)]
enum OrderError {
    OutOfStock,
    Transaction(covet_txn::Error),
}

impl From<covet_txn::Error> for OrderError {
    fn from(error: covet_txn::Error) -> Self {
        OrderError::Transaction(error)
    }
}

fn is_refusal(error: &OrderError) -> bool {
    matches!(error, OrderError::OutOfStock)
}

#[covet_txn::transactional(commit_on = is_refusal)]
async fn reserve(quantity: i64) -> Result<i64, OrderError> {
    if quantity > 10 { Err(OrderError::OutOfStock) } else { Ok(quantity) }
}

#[covet_txn::transactional(commit_on = is_refusal, retry = 2)]
async fn reserve_with_retry(quantity: i64) -> Result<i64, OrderError> {
    reserve(quantity).await
}

#[covet_txn::transactional(durable)]
async fn settle_the_books() -> Result<(), covet_txn::Error> {
    Ok(())
}

#[covet_txn::transactional(propagation = "not_supported")]
async fn write_audit_log() -> Result<(), covet_txn::Error> {
    Ok(())
}

fn main() {
    let _ = (reserve_with_retry, settle_the_books, write_audit_log);
}
