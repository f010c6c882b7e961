use covet_txn::transactional;

struct Order;

impl Order {
    #[transactional(retry = 3)]
    async fn submit(self) -> Result<(), covet_txn::Error> {
        Ok(())
    }
}

fn main() {}
