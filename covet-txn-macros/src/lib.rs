//! Attribute macros for [covet-txn](https://docs.rs/covet-txn). Depend on
//! `covet-txn`, which re-exports them; this crate is its compile-time half.
//!
//! Each attribute goes through the same steps, one file each: `args.rs`
//! reads the arguments as the attribute's key table says, `item.rs` checks
//! the function, `rules.rs` checks the arguments against each other and
//! gathers them, `expand.rs` generates the code, and `fallback.rs` reports
//! errors while keeping the function. `hooks.rs` declares the handlers of
//! `#[on_commit]` and the other phases (listed in `phases.rs`), and
//! `testing.rs` wraps a test in a transaction that always rolls back.

use proc_macro::TokenStream;

mod args;
mod errors;
mod expand;
mod fallback;
mod hooks;
mod item;
mod phases;
mod rules;
mod testing;

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
    let mut errors = errors::Errors::default();
    let args = args::Args::parse(
        args.into(),
        "transactional",
        rules::TRANSACTIONAL_KEYS,
        &mut errors,
    );
    let config = rules::transactional(args, &function, &mut errors);
    match errors.finish(config) {
        Ok(config) => expand::expand(config, function).into(),
        Err(error) => fallback::emit(error, item).into(),
    }
}

/// Runs an `async fn` test in a transaction that always rolls back. See
/// `covet_txn::test`.
#[proc_macro_attribute]
pub fn test(args: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    let function = match syn::parse2::<syn::ItemFn>(item.clone()) {
        Ok(function) => function,
        Err(error) => {
            let error = syn::Error::new(
                error.span(),
                "#[covet_txn::test] goes on an `async fn` test",
            );
            return fallback::emit(error, item).into();
        }
    };
    match testing::test(args.into(), function) {
        Ok(tokens) => tokens.into(),
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

fn hook(attribute: &str, args: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    let Some(phase) = phases::named(attribute) else {
        let error = syn::Error::new(proc_macro2::Span::call_site(), "not a hook phase");
        return fallback::emit(error, item).into();
    };
    let function = match syn::parse2::<syn::ItemFn>(item.clone()) {
        Ok(function) => function,
        Err(error) => {
            return fallback::emit(hooks::not_a_function(attribute, error.span()), item).into();
        }
    };
    match hooks::declare(phase, args.into(), function) {
        Ok(tokens) => tokens.into(),
        Err(error) => fallback::emit(error, item).into(),
    }
}
