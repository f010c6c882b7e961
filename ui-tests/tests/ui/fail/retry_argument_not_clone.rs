use covet_txn::transactional;

struct Ticket {
    seat: u32,
}

#[transactional(retry = 3)]
async fn book(ticket: Ticket, note: String) -> Result<u32, covet_txn::Error> {
    Ok(ticket.seat + note.len() as u32)
}

fn main() {}
