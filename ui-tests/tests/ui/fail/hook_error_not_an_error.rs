use covet_txn::TxEvent;

/// Displays, but is not an error type: the runtime could not keep it as
/// the `source()` of `Error::HookFailed`.
struct MailError;

impl std::fmt::Display for MailError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mail server down")
    }
}

#[covet_txn::before_commit]
fn check(_: &TxEvent) -> Result<(), MailError> {
    Err(MailError)
}

fn main() {}
