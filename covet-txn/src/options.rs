//! The vocabulary of what a transaction may ask for: isolation levels,
//! access modes and propagation modes, with their spelling rules.
//!
//! A leaf: it imports nothing from the crate. It knows nothing of SQL (each
//! dialect maps these values to its own statements) nor of the options a
//! call gathers ([`TxOptions`](crate::TxOptions) lives in `request`).

use std::fmt;
use std::str::FromStr;

/// The SQL isolation levels, weakest first.
///
/// Parsed from either spelling, in any case: `"serializable"`,
/// `"repeatable_read"`, `"REPEATABLE READ"`, `"Read Committed"`.
///
/// ```
/// use covet_txn::Isolation;
/// assert_eq!("REPEATABLE READ".parse::<Isolation>().unwrap(), Isolation::RepeatableRead);
/// assert_eq!("read_committed".parse::<Isolation>().unwrap(), Isolation::ReadCommitted);
/// assert!("snapshot".parse::<Isolation>().is_err());
/// assert!(Isolation::ReadCommitted < Isolation::Serializable);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isolation {
    /// `READ UNCOMMITTED`. PostgreSQL runs it as `READ COMMITTED`.
    ReadUncommitted,
    /// `READ COMMITTED`.
    ReadCommitted,
    /// `REPEATABLE READ`.
    RepeatableRead,
    /// `SERIALIZABLE`.
    Serializable,
}

impl Isolation {
    /// Every level, weakest first.
    pub const ALL: [Isolation; 4] = [
        Isolation::ReadUncommitted,
        Isolation::ReadCommitted,
        Isolation::RepeatableRead,
        Isolation::Serializable,
    ];

    /// The level as SQL writes it, for example `REPEATABLE READ`.
    pub const fn sql(self) -> &'static str {
        match self {
            Isolation::ReadUncommitted => "READ UNCOMMITTED",
            Isolation::ReadCommitted => "READ COMMITTED",
            Isolation::RepeatableRead => "REPEATABLE READ",
            Isolation::Serializable => "SERIALIZABLE",
        }
    }

    /// The level as the attribute writes it, for example `repeatable_read`.
    pub const fn name(self) -> &'static str {
        match self {
            Isolation::ReadUncommitted => "read_uncommitted",
            Isolation::ReadCommitted => "read_committed",
            Isolation::RepeatableRead => "repeatable_read",
            Isolation::Serializable => "serializable",
        }
    }
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Isolation {
    type Err = UnknownName;

    fn from_str(text: &str) -> Result<Self, UnknownName> {
        let wanted = normalize(text);
        Isolation::ALL
            .into_iter()
            .find(|level| level.name() == wanted)
            .ok_or_else(|| UnknownName {
                what: "isolation level",
                text: text.to_owned(),
                expected: "read_uncommitted, read_committed, repeatable_read, serializable",
            })
    }
}

/// How a transactional call relates to a transaction already running in the
/// same task. The names and meanings are Spring's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Propagation {
    /// Nest inside the running transaction in a SAVEPOINT, or begin one.
    /// An error rolls back to the savepoint only.
    #[default]
    Nested,
    /// Join the running transaction without a savepoint, or begin one. An
    /// error marks the whole transaction rollback-only.
    Required,
    /// Suspend the running transaction and run a new one on a second pooled
    /// connection.
    RequiresNew,
    /// Join the running transaction; fail with
    /// [`Error::NoTransaction`](crate::Error::NoTransaction) if there is none.
    Mandatory,
    /// Run without a transaction; fail with
    /// [`Error::TransactionActive`](crate::Error::TransactionActive) if one
    /// is running.
    Never,
    /// Join the running transaction if there is one, else run on a pooled
    /// connection in autocommit mode.
    Supports,
    /// Suspend the running transaction, if any, and run on a second pooled
    /// connection in autocommit mode.
    NotSupported,
}

impl Propagation {
    /// Every mode.
    pub const ALL: [Propagation; 7] = [
        Propagation::Nested,
        Propagation::Required,
        Propagation::RequiresNew,
        Propagation::Mandatory,
        Propagation::Never,
        Propagation::Supports,
        Propagation::NotSupported,
    ];

    /// The mode as the attribute writes it, for example `requires_new`.
    pub const fn name(self) -> &'static str {
        match self {
            Propagation::Nested => "nested",
            Propagation::Required => "required",
            Propagation::RequiresNew => "requires_new",
            Propagation::Mandatory => "mandatory",
            Propagation::Never => "never",
            Propagation::Supports => "supports",
            Propagation::NotSupported => "not_supported",
        }
    }
}

impl fmt::Display for Propagation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Propagation {
    type Err = UnknownName;

    fn from_str(text: &str) -> Result<Self, UnknownName> {
        let wanted = normalize(text);
        Propagation::ALL
            .into_iter()
            .find(|mode| mode.name() == wanted)
            .ok_or_else(|| UnknownName {
                what: "propagation",
                text: text.to_owned(),
                expected: "nested, required, requires_new, mandatory, never, supports, \
                           not_supported",
            })
    }
}

/// A name that is not one of an option's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownName {
    what: &'static str,
    text: String,
    expected: &'static str,
}

impl fmt::Display for UnknownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown {} `{}`; expected one of {}",
            self.what, self.text, self.expected
        )
    }
}

impl std::error::Error for UnknownName {}

/// Lower-case, with runs of spaces, dashes and underscores folded to one `_`.
fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text
        .split(|c: char| c.is_whitespace() || c == '_' || c == '-')
        .filter(|word| !word.is_empty())
    {
        if !out.is_empty() {
            out.push('_');
        }
        out.extend(word.chars().map(|c| c.to_ascii_lowercase()));
    }
    out
}

/// The isolation level and access mode a transaction begins with: all a
/// dialect needs to know of a call's options to begin it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Access {
    /// The level asked for; `None`: the server's default.
    pub isolation: Option<Isolation>,
    /// `Some(true)`: read-only; `Some(false)`: read-write; `None`: the
    /// server's default (read-write).
    pub read_only: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolation_accepts_sql_and_attribute_spellings_in_any_case() {
        for (text, level) in [
            ("serializable", Isolation::Serializable),
            ("SERIALIZABLE", Isolation::Serializable),
            ("read uncommitted", Isolation::ReadUncommitted),
            ("Read_Committed", Isolation::ReadCommitted),
            ("  repeatable   read ", Isolation::RepeatableRead),
            ("repeatable-read", Isolation::RepeatableRead),
        ] {
            assert_eq!(text.parse::<Isolation>(), Ok(level), "{text}");
        }
    }

    #[test]
    fn unknown_isolation_lists_the_valid_names() {
        let message = "snapshot".parse::<Isolation>().unwrap_err().to_string();
        assert!(message.contains("`snapshot`"), "{message}");
        assert!(message.contains("repeatable_read"), "{message}");
    }

    #[test]
    fn propagation_round_trips_through_its_name() {
        for mode in Propagation::ALL {
            assert_eq!(mode.name().parse::<Propagation>(), Ok(mode));
        }
        assert_eq!(
            "REQUIRES NEW".parse::<Propagation>(),
            Ok(Propagation::RequiresNew)
        );
        assert_eq!(
            "not supported".parse::<Propagation>(),
            Ok(Propagation::NotSupported)
        );
    }
}

/// Whether a manager, or one function, manages contention: runs at most a
/// limit of each function's attempts at once, the limit tuned to what the
/// function yields; gives a retry whose attempt ends with no turn free the
/// function's next turn, ahead of first attempts, instead of its backoff
/// (with a turn free it sleeps its backoff, then queues ahead of first
/// attempts); and on SQLite admits one write transaction per database file
/// at a time (see the README's "Contention" section).
///
/// ```
/// use covet_txn::{Contention, TxOptions};
/// let options = TxOptions::new().retries(5).contention(Contention::Adaptive);
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Contention {
    /// Every attempt goes straight to the database (declared conflict keys
    /// are still waited for).
    #[default]
    Off,
    /// Attempts are admitted as conflicts are observed.
    Adaptive,
}
