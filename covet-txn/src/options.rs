//! What a transactional call asks for: isolation level, access mode and
//! propagation, gathered in [`TxOptions`].
//!
//! This module owns the vocabulary and its spelling rules. It knows nothing of
//! SQL: each backend module maps these values to its own statements.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::Error;
use crate::hooks::DeclaredHook;
use crate::retry::{RetryCount, RetryOverrides, RetryPredicate};

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
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let wanted = normalize(text);
        Isolation::ALL
            .into_iter()
            .find(|level| level.name() == wanted)
            .ok_or_else(|| {
                Error::InvalidOption(format!(
                    "unknown isolation level `{text}`; expected one of read_uncommitted, \
                     read_committed, repeatable_read, serializable"
                ))
            })
    }
}

/// How a transactional call relates to a transaction already running in the
/// same task. The names and meanings are Spring's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
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
    /// Join the running transaction; fail with [`Error::NoTransaction`] if
    /// there is none.
    Mandatory,
    /// Run without a transaction; fail with [`Error::TransactionActive`] if
    /// one is running.
    Never,
    /// Join the running transaction if there is one, else run on a pooled
    /// connection in autocommit mode.
    Supports,
}

impl Propagation {
    /// Every mode.
    pub const ALL: [Propagation; 6] = [
        Propagation::Nested,
        Propagation::Required,
        Propagation::RequiresNew,
        Propagation::Mandatory,
        Propagation::Never,
        Propagation::Supports,
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
        }
    }
}

impl fmt::Display for Propagation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Propagation {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let wanted = normalize(text);
        Propagation::ALL
            .into_iter()
            .find(|mode| mode.name() == wanted)
            .ok_or_else(|| {
                Error::InvalidOption(format!(
                    "unknown propagation `{text}`; expected one of nested, required, \
                     requires_new, mandatory, never, supports"
                ))
            })
    }
}

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

/// The isolation level and access mode a transaction begins with: what the
/// backends need to know of the options, and all a session keeps of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Access {
    pub(crate) isolation: Option<Isolation>,
    pub(crate) read_only: Option<bool>,
}

/// Everything a transactional call asks of the runtime.
///
/// Built with `const` methods so that `#[transactional]` can place its options
/// in a `const` and pay nothing to build them per call.
///
/// ```
/// use covet_txn::{Isolation, Propagation, TxOptions};
/// const OPTIONS: TxOptions = TxOptions::new()
///     .isolation(Isolation::Serializable)
///     .read_only(true)
///     .propagation(Propagation::Required);
/// assert_eq!(OPTIONS.isolation_level(), Some(Isolation::Serializable));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct TxOptions {
    pub(crate) isolation: Option<Isolation>,
    pub(crate) read_only: Option<bool>,
    pub(crate) propagation: Propagation,
    pub(crate) name: Option<&'static str>,
    pub(crate) retry: RetryOverrides,
    pub(crate) timeout: Option<Duration>,
    pub(crate) resolve_ambiguous_commit: bool,
    pub(crate) hooks: &'static [DeclaredHook],
}

impl TxOptions {
    /// The defaults: the server's isolation level, read-write, [`Propagation::Nested`].
    pub const fn new() -> Self {
        TxOptions {
            isolation: None,
            read_only: None,
            propagation: Propagation::Nested,
            name: None,
            retry: RetryOverrides::NONE,
            timeout: None,
            resolve_ambiguous_commit: false,
            hooks: &[],
        }
    }

    /// Ask for an isolation level. Inside a running transaction, asking for a
    /// different one is an error ([`Error::IsolationMismatch`]).
    pub const fn isolation(mut self, level: Isolation) -> Self {
        self.isolation = Some(level);
        self
    }

    /// Ask for a read-only (`true`) or read-write (`false`) transaction.
    pub const fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = Some(read_only);
        self
    }

    /// Choose how the call relates to a transaction already running.
    pub const fn propagation(mut self, propagation: Propagation) -> Self {
        self.propagation = propagation;
        self
    }

    /// Name the transaction for logs and metrics; `#[transactional]` uses the
    /// function's path.
    pub const fn name(mut self, name: &'static str) -> Self {
        self.name = Some(name);
        self
    }

    /// Retry the transaction with the manager's retry policy (see
    /// [`RetryPolicy`](crate::RetryPolicy)). Only the outermost transaction
    /// retries; inside a running one, retryable errors propagate to it.
    pub const fn retry(mut self) -> Self {
        if matches!(self.retry.retries, RetryCount::Off) {
            self.retry.retries = RetryCount::ManagerDefault;
        }
        self
    }

    /// Retry up to `retries` times after the first attempt.
    pub const fn retries(mut self, retries: u32) -> Self {
        self.retry.retries = RetryCount::Exactly(retries);
        self
    }

    /// The wait before the first retry, before jitter.
    pub const fn backoff(mut self, backoff: Duration) -> Self {
        self.retry.backoff = Some(backoff);
        self
    }

    /// The longest wait between attempts, before jitter.
    pub const fn max_backoff(mut self, max_backoff: Duration) -> Self {
        self.retry.max_backoff = Some(max_backoff);
        self
    }

    /// How much each wait grows over the previous one.
    pub const fn backoff_multiplier(mut self, multiplier: f64) -> Self {
        self.retry.multiplier = Some(multiplier);
        self
    }

    /// Decide for each failure whether to retry, instead of the built-in
    /// classification (which the predicate can consult).
    pub const fn retry_if(mut self, predicate: RetryPredicate) -> Self {
        self.retry.predicate = Some(predicate);
        self
    }

    /// A deadline for the whole call, retries and waits included. On expiry
    /// the body is dropped, the transaction rolled back and
    /// [`Error::Timeout`] returned; PostgreSQL and MariaDB are told to stop
    /// the transaction's statements and lock waits by then too. Inside a
    /// running transaction it can only shorten the deadline.
    pub const fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// If the connection fails while COMMIT is in flight, find out whether
    /// the transaction committed (PostgreSQL: one more statement before
    /// COMMIT takes the transaction id, and a fresh connection asks
    /// `pg_xact_status` about it). Elsewhere the outcome stays unknown.
    pub const fn resolve_ambiguous_commit(mut self, resolve: bool) -> Self {
        self.resolve_ambiguous_commit = resolve;
        self
    }

    /// The handlers a `#[transactional]` function lists (`on_commit = [...]`
    /// and the other phases).
    #[doc(hidden)]
    pub const fn declared_hooks(mut self, hooks: &'static [DeclaredHook]) -> Self {
        self.hooks = hooks;
        self
    }

    pub(crate) const fn access(&self) -> Access {
        Access {
            isolation: self.isolation,
            read_only: self.read_only,
        }
    }

    /// The isolation level asked for, if any.
    pub const fn isolation_level(&self) -> Option<Isolation> {
        self.isolation
    }

    /// Whether read-only (`Some(true)`) or read-write (`Some(false)`) was asked for.
    pub const fn access_mode(&self) -> Option<bool> {
        self.read_only
    }

    /// The propagation asked for.
    pub const fn propagation_mode(&self) -> Propagation {
        self.propagation
    }

    /// The name given, if any.
    pub const fn given_name(&self) -> Option<&'static str> {
        self.name
    }

    /// The timeout given, if any.
    pub const fn timeout_duration(&self) -> Option<Duration> {
        self.timeout
    }

    /// Whether the call retries.
    pub const fn retries_enabled(&self) -> bool {
        !matches!(self.retry.retries, RetryCount::Off)
    }
}

impl Default for TxOptions {
    fn default() -> Self {
        TxOptions::new()
    }
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
            assert_eq!(text.parse::<Isolation>().unwrap(), level, "{text}");
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
            assert_eq!(mode.name().parse::<Propagation>().unwrap(), mode);
        }
        assert_eq!(
            "REQUIRES NEW".parse::<Propagation>().unwrap(),
            Propagation::RequiresNew
        );
    }
}
