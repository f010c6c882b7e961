//! The hook phases, in one table: the attribute that declares a handler,
//! the runtime's `Phase` variant, the marker trait a declared handler gets,
//! and the runtime's function that checks a listed handler's phase. The
//! runtime keeps the matching table in `__private`.

/// One hook phase, as the macros name it.
pub(crate) struct Phase {
    /// The attribute and the `#[transactional]` key: `on_commit`.
    pub(crate) attribute: &'static str,
    /// The runtime's `Phase` variant: `AfterCommit`.
    pub(crate) variant: &'static str,
    /// The marker trait a handler declared for the phase implements.
    pub(crate) marker: &'static str,
    /// The runtime's `const fn` that takes a handler listed under the phase.
    pub(crate) declared: &'static str,
}

pub(crate) const PHASES: [Phase; 4] = [
    Phase {
        attribute: "before_commit",
        variant: "BeforeCommit",
        marker: "BeforeCommitHook",
        declared: "declared_before_commit",
    },
    Phase {
        attribute: "on_commit",
        variant: "AfterCommit",
        marker: "OnCommitHook",
        declared: "declared_on_commit",
    },
    Phase {
        attribute: "before_rollback",
        variant: "BeforeRollback",
        marker: "BeforeRollbackHook",
        declared: "declared_before_rollback",
    },
    Phase {
        attribute: "on_rollback",
        variant: "AfterRollback",
        marker: "OnRollbackHook",
        declared: "declared_on_rollback",
    },
];

/// The phase an attribute or key names.
pub(crate) fn named(attribute: &str) -> Option<&'static Phase> {
    PHASES.iter().find(|phase| phase.attribute == attribute)
}
