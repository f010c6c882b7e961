//! Attribute macros for [covet-txn](https://docs.rs/covet-txn). Depend on
//! `covet-txn`, which re-exports them; this crate is its compile-time half.
//!
//! `attr.rs` parses the arguments, `valid.rs` checks what they and the
//! function mean, `expand.rs` generates the wrapped function and
//! `fallback.rs` reports errors while keeping the function. `hooks.rs` checks
//! and declares the handlers of `#[on_commit]` and the other phases.

use proc_macro::TokenStream;

mod attr;
mod expand;
mod fallback;
mod hooks;
mod valid;

/// Runs an `async fn` in a transaction. See `covet_txn::transactional`.
#[proc_macro_attribute]
pub fn transactional(args: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    let function = match syn::parse2::<syn::ItemFn>(item.clone()) {
        Ok(function) => function,
        Err(error) => {
            let error = syn::Error::new(
                error.span(),
                "#[transactional] goes on an `async fn` with a body",
            );
            return fallback::emit(error, item).into();
        }
    };
    let config = attr::RawArgs::parse(args.into(), "isolation = \"serializable\"")
        .and_then(|args| valid::validate(args, &function));
    match config {
        Ok(config) => expand::expand(config, function).into(),
        Err(error) => fallback::emit(error, item).into(),
    }
}

/// Declares a handler that runs after the outermost COMMIT. See
/// `covet_txn::on_commit`. Each hook attribute takes one optional argument,
/// `crate = "..."`, as `#[transactional]` does.
#[proc_macro_attribute]
pub fn on_commit(args: TokenStream, item: TokenStream) -> TokenStream {
    hook("on_commit", args, item)
}

/// Declares a handler that runs inside the transaction just before COMMIT.
#[proc_macro_attribute]
pub fn before_commit(args: TokenStream, item: TokenStream) -> TokenStream {
    hook("before_commit", args, item)
}

/// Declares a handler that runs after a rollback.
#[proc_macro_attribute]
pub fn on_rollback(args: TokenStream, item: TokenStream) -> TokenStream {
    hook("on_rollback", args, item)
}

/// Declares a handler that runs inside the transaction just before a
/// rollback.
#[proc_macro_attribute]
pub fn before_rollback(args: TokenStream, item: TokenStream) -> TokenStream {
    hook("before_rollback", args, item)
}

fn hook(phase: &str, args: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    let function = match syn::parse2::<syn::ItemFn>(item.clone()) {
        Ok(function) => function,
        Err(error) => {
            return fallback::emit(hooks::not_a_function(phase, error.span()), item).into();
        }
    };
    match hooks::declare(phase, args.into(), function) {
        Ok(tokens) => tokens.into(),
        Err(error) => fallback::emit(error, item).into(),
    }
}
