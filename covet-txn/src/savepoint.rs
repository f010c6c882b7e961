//! Savepoints the user creates by hand inside a transaction: create, roll
//! back to, release. Names are checked identifiers, so nothing the user
//! passes is ever put into SQL unchecked.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::context::{self, Frame};
use crate::dialect::{SavepointAction, SavepointName};
use crate::error::Error;

/// A savepoint in the current transaction.
///
/// Roll back to it as often as needed with [`rollback_to`](Self::rollback_to);
/// end it with [`release`](Self::release) (keep the work) or
/// [`rollback`](Self::rollback) (undo it). A savepoint that is simply dropped
/// stays until its transactional scope ends, which releases or rolls back
/// everything inside it.
///
/// ```
/// # async fn demo() -> Result<(), covet_txn::Error> {
/// let before_import = covet_txn::named_savepoint("before_import").await?;
/// # let import_failed = true;
/// if import_failed {
///     before_import.rollback().await?;
/// } else {
///     before_import.release().await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Savepoint {
    frame: Arc<Frame>,
    name: String,
}

/// Creates a savepoint with a generated name in the innermost running
/// transaction.
pub async fn savepoint() -> Result<Savepoint, Error> {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let name = format!("covet_usp_{}", NEXT.fetch_add(1, Ordering::Relaxed));
    create(name).await
}

/// Creates a savepoint named `name` in the innermost running transaction.
///
/// The name must be 1 to 63 ASCII letters, digits or underscores, start with
/// a letter or underscore, and not start with `covet_` (reserved for the
/// runtime's own savepoints); otherwise [`Error::InvalidSavepointName`].
pub async fn named_savepoint(name: &str) -> Result<Savepoint, Error> {
    validate_name(name)?;
    create(name.to_owned()).await
}

async fn create(name: String) -> Result<Savepoint, Error> {
    let frame = context::head().ok_or(Error::NoTransaction)?;
    if !frame.session.core().transactional {
        return Err(Error::NoTransaction);
    }
    frame.ensure_no_child()?;
    frame
        .session
        .savepoint(SavepointAction::Create, SavepointName::Named(&name))
        .await?;
    Ok(Savepoint { frame, name })
}

fn validate_name(name: &str) -> Result<(), Error> {
    let mut chars = name.chars();
    let starts_well = chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    let reserved = name.to_ascii_lowercase().starts_with("covet_");
    if starts_well && rest_ok && name.len() <= 63 && !reserved {
        Ok(())
    } else {
        Err(Error::InvalidSavepointName(name.to_owned()))
    }
}

impl Savepoint {
    /// The savepoint's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Undoes everything since the savepoint was created and keeps it, to
    /// roll back to again.
    pub async fn rollback_to(&self) -> Result<(), Error> {
        self.act(SavepointAction::RollbackTo).await
    }

    /// Undoes everything since the savepoint was created and frees it.
    pub async fn rollback(self) -> Result<(), Error> {
        self.act(SavepointAction::RollbackAndRelease).await
    }

    /// Keeps everything since the savepoint was created and frees it.
    pub async fn release(self) -> Result<(), Error> {
        self.act(SavepointAction::Release).await
    }

    async fn act(&self, action: SavepointAction) -> Result<(), Error> {
        let head = context::head().ok_or_else(|| Error::ForeignSavepoint(self.name.clone()))?;
        let in_scope = head
            .chain()
            .any(|frame| std::ptr::eq(frame, Arc::as_ptr(&self.frame)));
        if !in_scope {
            return Err(Error::ForeignSavepoint(self.name.clone()));
        }
        head.ensure_no_child()?;
        self.frame
            .session
            .savepoint(action, SavepointName::Named(&self.name))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::validate_name;

    #[test]
    fn savepoint_names_are_plain_identifiers() {
        for good in ["before_import", "_x", "A1", &"a".repeat(63)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "1abc",
            "a-b",
            "a b",
            "x; DROP TABLE t",
            "covet_sp_1",
            "COVET_x",
            &"a".repeat(64),
            "é",
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
