//! Checks on the function an attribute goes on: an `async fn` returning a
//! `Result`; and, for a function with `retry`, the arguments each attempt
//! re-uses and whether it can.

use syn::spanned::Spanned;
use syn::{FnArg, Ident, ItemFn, Pat, ReturnType, Token, Type};

use crate::errors::Errors;

/// Checks that `#[transactional]`'s function is an `async fn` that returns
/// a `Result`.
pub(crate) fn check_transactional(function: &ItemFn, errors: &mut Errors) {
    let signature = &function.sig;
    if signature.asyncness.is_none() {
        errors.at(
            signature.fn_token.span,
            "#[transactional] works on `async fn` only: write `async fn`",
        );
    }
    match &signature.output {
        ReturnType::Default => errors.at(
            signature.paren_token.span.join(),
            "a #[transactional] function must return `Result<T, E>` with `E: From<covet_txn::Error>`, so that a failure can roll the transaction back: add `-> Result<(), MyError>`",
        ),
        ReturnType::Type(_, returned) if !is_result(returned) => errors.at(
            returned.span(),
            "a #[transactional] function must return `Result<T, E>` with `E: From<covet_txn::Error>`, so that a failure can roll the transaction back",
        ),
        ReturnType::Type(..) => {}
    }
}

/// Whether the type is spelled as a `Result` (or an alias ending in `Result`,
/// such as `anyhow::Result<T>` or `AppResult<T>`).
pub(crate) fn is_result(returned: &Type) -> bool {
    match returned {
        Type::Path(path) => path
            .path
            .segments
            .last()
            .is_some_and(|segment| segment.ident.to_string().ends_with("Result")),
        Type::Group(group) => is_result(&group.elem),
        Type::Paren(paren) => is_result(&paren.elem),
        _ => false,
    }
}

/// Whether the type is `()`.
pub(crate) fn is_unit(returned: &Type) -> bool {
    matches!(returned, Type::Tuple(tuple) if tuple.elems.is_empty())
}

/// How an argument is made available to each attempt of a retrying
/// function.
pub(crate) enum Reuse {
    /// Cloned (by-value arguments).
    Clone,
    /// Reborrowed (`&mut T`).
    Reborrow,
    /// Copied (`mut` bindings of `&T`), so that a reassignment in one
    /// attempt does not carry over to the next.
    Copy,
}

/// An argument that each attempt of a retrying function binds afresh.
pub(crate) struct ReusedArgument {
    /// The `mut` of `mut items: Vec<i64>`, which belongs on the binding the
    /// body sees, the one made for each attempt.
    pub(crate) mutability: Option<Token![mut]>,
    pub(crate) ident: Ident,
    pub(crate) reuse: Reuse,
}

/// The arguments each attempt of a retrying function re-uses. An argument
/// that cannot be re-used is an error naming it.
pub(crate) fn reused_arguments(function: &ItemFn, errors: &mut Errors) -> Vec<ReusedArgument> {
    let mut arguments = Vec::new();
    for input in &function.sig.inputs {
        match input {
            FnArg::Receiver(receiver) => {
                if receiver.reference.is_none() {
                    errors.at(
                        receiver.self_token.span,
                        "`retry` runs the body once per attempt, but `self` is taken by value and is gone after the first: take `&self` or `&mut self`",
                    );
                }
            }
            FnArg::Typed(typed) => {
                let binding = match &*typed.pat {
                    Pat::Ident(binding) if binding.by_ref.is_none() && binding.subpat.is_none() => {
                        binding
                    }
                    Pat::Wild(_) => continue,
                    other => {
                        errors.at(
                            other.span(),
                            "`retry` re-uses every argument for each attempt: bind this argument to a plain name",
                        );
                        continue;
                    }
                };
                let reuse = match &*typed.ty {
                    Type::Reference(reference) if reference.mutability.is_some() => Reuse::Reborrow,
                    // A shared reference is `Copy`: each attempt uses it as
                    // it is, unless the body may reassign it.
                    Type::Reference(_) if binding.mutability.is_none() => continue,
                    Type::Reference(_) => Reuse::Copy,
                    _ => Reuse::Clone,
                };
                arguments.push(ReusedArgument {
                    // syn's tokens are not `Clone` without its "clone-impls".
                    mutability: binding
                        .mutability
                        .as_ref()
                        .map(|token| Token![mut](token.span)),
                    ident: binding.ident.clone(),
                    reuse,
                });
            }
        }
    }
    arguments
}
