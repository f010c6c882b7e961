//! Where hooks wait for their phase: the hooks registered in one
//! transaction, each with the depth of the scope that registered it, and
//! the hooks a manager runs for every transaction.
//!
//! A released savepoint hands its hooks to the enclosing scope; a
//! rolled-back one takes its own out. Running them is `hooks::run`'s
//! business; registering from a body is `hooks`'.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::event::{DeclaredHook, HookFuture, Phase, TxEvent};

/// What a registered hook runs.
pub(crate) enum Runnable {
    /// Registered from the body: runs once, without the event.
    Once(Box<dyn FnOnce() -> HookFuture + Send>),
    /// Listed on the function: runs with the event.
    Declared(DeclaredHook),
}

/// A hook waiting for its phase.
pub(crate) struct Registered {
    /// The depth of the scope that registered it.
    pub(crate) depth: u32,
    pub(crate) phase: Phase,
    pub(crate) name: &'static str,
    pub(crate) run: Runnable,
}

/// The hooks registered in one transaction.
#[derive(Default)]
pub(crate) struct HookList(Mutex<Vec<Registered>>);

impl fmt::Debug for HookList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookList")
            .field("registered", &self.lock().len())
            .finish()
    }
}

impl HookList {
    fn lock(&self) -> MutexGuard<'_, Vec<Registered>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn push(&self, registered: Registered) {
        self.lock().push(registered);
    }

    /// Registers the handlers a function lists, for its scope at `depth`.
    pub(crate) fn declare(&self, depth: u32, hooks: &'static [DeclaredHook]) {
        if hooks.is_empty() {
            return;
        }
        self.lock().extend(hooks.iter().map(|hook| Registered {
            depth,
            phase: hook.phase,
            name: hook.name,
            run: Runnable::Declared(*hook),
        }));
    }

    /// A savepoint at `depth` was released: its hooks now belong to the
    /// enclosing scope.
    pub(crate) fn release_scope(&self, depth: u32) {
        for registered in self
            .lock()
            .iter_mut()
            .filter(|registered| registered.depth >= depth)
        {
            registered.depth = depth - 1;
        }
    }

    /// Takes the hooks of `phase` registered at `depth` or deeper.
    pub(crate) fn take(&self, phase: Phase, depth: u32) -> Vec<Registered> {
        let mut list = self.lock();
        if list.is_empty() {
            return Vec::new();
        }
        let (taken, kept) = std::mem::take(&mut *list)
            .into_iter()
            .partition(|registered| registered.depth >= depth && registered.phase == phase);
        *list = kept;
        taken
    }

    /// Drops the hooks of the scope at `depth` and deeper: it rolled back.
    pub(crate) fn discard_scope(&self, depth: u32) {
        self.lock().retain(|registered| registered.depth < depth);
    }

    /// Drops every hook: the transaction's fate cannot be known.
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }

    /// Whether any hook is registered.
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// A hook a manager runs for every transaction, with the event.
pub(crate) type EventHook = Arc<dyn Fn(TxEvent) -> HookFuture + Send + Sync>;

/// The hooks that run for every transaction of a manager.
#[derive(Default, Clone)]
pub(crate) struct ManagerHooks(Vec<(Phase, EventHook)>);

impl ManagerHooks {
    pub(crate) fn add(&mut self, phase: Phase, hook: EventHook) {
        self.0.push((phase, hook));
    }

    pub(crate) fn of(&self, phase: Phase) -> impl Iterator<Item = &EventHook> {
        self.0
            .iter()
            .filter(move |(hook_phase, _)| *hook_phase == phase)
            .map(|(_, hook)| hook)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered(depth: u32, phase: Phase, name: &'static str) -> Registered {
        Registered {
            depth,
            phase,
            name,
            run: Runnable::Once(Box::new(|| Box::pin(async { Ok(()) }))),
        }
    }

    fn names(list: Vec<Registered>) -> Vec<&'static str> {
        list.into_iter().map(|registered| registered.name).collect()
    }

    #[test]
    fn a_released_savepoint_hands_its_hooks_to_the_enclosing_scope() {
        let list = HookList::default();
        list.push(registered(1, Phase::AfterCommit, "outer"));
        list.push(registered(2, Phase::AfterCommit, "released"));
        list.release_scope(2);
        list.push(registered(2, Phase::AfterCommit, "sibling"));
        list.push(registered(2, Phase::AfterRollback, "sibling rollback"));
        // The sibling savepoint rolls back: only its own hooks go.
        assert_eq!(
            names(list.take(Phase::AfterRollback, 2)),
            ["sibling rollback"]
        );
        list.discard_scope(2);
        assert_eq!(
            names(list.take(Phase::AfterCommit, 0)),
            ["outer", "released"]
        );
    }
}
