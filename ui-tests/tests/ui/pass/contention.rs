use covet_txn::transactional;

struct Accounts {
    region: String,
}

impl Accounts {
    #[transactional(conflict_key = (self.region.as_str(), id), contention = "adaptive", retry = 3)]
    async fn touch(&self, id: i64, note: String) -> Result<usize, covet_txn::Error> {
        Ok(note.len() + usize::try_from(id).unwrap_or(0))
    }
}

#[transactional(conflict_key = [from, to], contention = "off", isolation = "serializable")]
async fn transfer(from: i64, to: i64, memo: String) -> Result<String, covet_txn::Error> {
    let _ = (from, to);
    Ok(memo)
}

fn main() {
    let accounts = Accounts { region: "eu".to_owned() };
    let _ = accounts.touch(1, String::new());
    let _ = transfer(1, 2, String::new());
}
