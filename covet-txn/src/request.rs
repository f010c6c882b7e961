//! Everything a transactional call asks of the runtime: [`TxOptions`], and
//! [`CallOptions`], which adds the rules that depend on the function's own
//! error type.
//!
//! Built with `const` methods, so that `#[transactional]` pays nothing to
//! build them per call. What a request *means* next to what is already
//! running is `call::plan`'s business.

use std::hash::Hash;
use std::time::Duration;

use crate::admission::keys::ConflictKeys;
use crate::event::DeclaredHook;
use crate::options::{Access, Contention, Isolation, Propagation};
use crate::retry::{RetryCount, RetryOverrides, RetryPredicate};

/// Everything a transactional call asks of the runtime.
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
    pub(crate) durable: bool,
    pub(crate) name: Option<&'static str>,
    pub(crate) retry: RetryOverrides,
    pub(crate) timeout: Option<Duration>,
    pub(crate) resolve_ambiguous_commit: bool,
    pub(crate) hooks: &'static [DeclaredHook],
    /// The call's own contention setting, over the manager's.
    pub(crate) contention: Option<Contention>,
    pub(crate) conflict_keys: ConflictKeys,
    /// A test transaction, which always rolls back (see `testing`).
    pub(crate) test: bool,
}

impl TxOptions {
    /// The defaults: the server's isolation level, read-write,
    /// [`Propagation::Nested`].
    pub const fn new() -> Self {
        TxOptions {
            isolation: None,
            read_only: None,
            propagation: Propagation::Nested,
            durable: false,
            name: None,
            retry: RetryOverrides::NONE,
            timeout: None,
            resolve_ambiguous_commit: false,
            hooks: &[],
            contention: None,
            conflict_keys: ConflictKeys::new(),
            test: false,
        }
    }

    /// Ask for an isolation level. Inside a running transaction a weaker or
    /// equal level joins it; a stronger one is an error
    /// ([`Error::IsolationMismatch`](crate::Error::IsolationMismatch)).
    pub const fn isolation(mut self, level: Isolation) -> Self {
        self.isolation = Some(level);
        self
    }

    /// Ask for a read-only (`true`) or read-write (`false`) transaction.
    /// Inside a running transaction a read-only request joins a read-write
    /// one; a read-write request inside a read-only one is an error.
    pub const fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = Some(read_only);
        self
    }

    /// Choose how the call relates to a transaction already running.
    pub const fn propagation(mut self, propagation: Propagation) -> Self {
        self.propagation = propagation;
        self
    }

    /// Require the call to be the outermost transaction (Django's
    /// `atomic(durable=True)`): when it returns `Ok`, its work is committed
    /// for good. Inside a running transaction it fails with
    /// [`Error::NotOutermost`](crate::Error::NotOutermost), except in a test
    /// transaction, where it nests.
    pub const fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
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
    /// [`Error::Timeout`](crate::Error::Timeout) returned; PostgreSQL and
    /// MariaDB are told to stop the transaction's statements and lock waits
    /// by then too. Inside a running transaction it can only shorten the
    /// deadline.
    pub const fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Manage this call's contention as `contention` says, whatever the
    /// manager's setting (see [`Contention`]).
    pub const fn contention(mut self, contention: Contention) -> Self {
        self.contention = Some(contention);
        self
    }

    /// Wait, before each attempt, until no other call of this manager in
    /// this process holds one of these keys (see [`ConflictKeys`]). Only
    /// the outermost call waits; a nested call's keys are not waited for.
    pub const fn conflict_keys(mut self, keys: ConflictKeys) -> Self {
        self.conflict_keys = keys;
        self
    }

    /// [`conflict_keys`](Self::conflict_keys) with one more key.
    pub fn conflict_key<K: Hash + ?Sized>(mut self, key: &K) -> Self {
        self.conflict_keys = self.conflict_keys.with(key);
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

    /// Commit instead of rolling back when the function's error passes
    /// `predicate` (Spring's `noRollbackFor`): the work done so far is kept,
    /// and the error is still returned. For an expected refusal whose work
    /// (an audit row, a counter) should stand. A transaction that cannot
    /// commit (rollback-only, doomed by a deadlock) still rolls back.
    ///
    /// ```
    /// use covet_txn::TxOptions;
    ///
    /// #[derive(Debug)]
    /// enum OrderError { OutOfStock, Database(covet_txn::Error) }
    ///
    /// fn is_refusal(error: &OrderError) -> bool {
    ///     matches!(error, OrderError::OutOfStock)
    /// }
    ///
    /// let options = TxOptions::new().commit_on(is_refusal);
    /// # let _ = options;
    /// ```
    pub const fn commit_on<E>(self, predicate: fn(&E) -> bool) -> CallOptions<E> {
        CallOptions {
            options: self,
            commit_on: Some(predicate),
        }
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

    /// Whether the call must be the outermost transaction.
    pub const fn is_durable(&self) -> bool {
        self.durable
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

/// [`TxOptions`] with the rules that depend on the function's error type
/// `E`; made by [`TxOptions::commit_on`]. Every `TxOptions` converts into
/// one, so the closure API takes either.
#[derive(Debug)]
pub struct CallOptions<E> {
    pub(crate) options: TxOptions,
    pub(crate) commit_on: Option<fn(&E) -> bool>,
}

impl<E> Clone for CallOptions<E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E> Copy for CallOptions<E> {}

impl<E> From<TxOptions> for CallOptions<E> {
    fn from(options: TxOptions) -> Self {
        CallOptions {
            options,
            commit_on: None,
        }
    }
}

impl<E> CallOptions<E> {
    /// The options without the error-type rules.
    pub const fn options(&self) -> &TxOptions {
        &self.options
    }

    /// Whether an error `error` commits instead of rolling back.
    pub(crate) fn commits_on(&self, error: &E) -> bool {
        self.commit_on.is_some_and(|predicate| predicate(error))
    }
}
