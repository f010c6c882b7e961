//! Attribute macros for [covet-txn](https://docs.rs/covet-txn). Depend on
//! `covet-txn`, which re-exports them; this crate is its compile-time half.
//!
//! `attr.rs` parses the arguments, `valid.rs` checks what they and the
//! function mean, `expand.rs` generates the wrapped function and
//! `fallback.rs` reports errors while keeping the function.

use proc_macro::TokenStream;

mod attr;
mod expand;
mod fallback;
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
    let config =
        syn::parse::<attr::RawArgs>(args).and_then(|args| valid::validate(args, &function));
    match config {
        Ok(config) => expand::expand(config, function).into(),
        Err(error) => fallback::emit(error, item).into(),
    }
}
