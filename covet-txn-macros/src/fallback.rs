//! What to emit when the attribute or the function is wrong: the errors,
//! plus the function exactly as written, so that the user sees the one
//! mistake and not a cascade of errors from a missing function.

use proc_macro2::TokenStream;

pub(crate) fn emit(error: syn::Error, item: TokenStream) -> TokenStream {
    let mut output = error.to_compile_error();
    output.extend(item);
    output
}
