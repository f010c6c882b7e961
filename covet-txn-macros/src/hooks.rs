//! `#[on_commit]`, `#[before_commit]`, `#[on_rollback]`, `#[before_rollback]`:
//! checking a handler's signature and generating what lets a
//! `#[transactional(on_commit = [handler])]` list find it.
//!
//! Next to the function, which stays as written, the attribute declares a
//! type of the same name (types and functions live in separate namespaces)
//! that carries the phase and a uniform, boxed way to call the handler.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, ReturnType, Type};

use crate::args::Args;
use crate::errors::Errors;
use crate::item;
use crate::phases::Phase;
use crate::rules;

// Input:
//
//     #[on_commit]
//     async fn send_receipt(event: &TxEvent) -> Result<(), MailError> { body }
//
// Output:
//
//     async fn send_receipt(event: &TxEvent) -> Result<(), MailError> { body }
//
//     struct send_receipt {}
//
//     impl ::covet_txn::__private::Hook for send_receipt {
//         const PHASE: ::covet_txn::__private::Phase =
//             ::covet_txn::__private::Phase::AfterCommit;
//         const NAME: &'static str =
//             ::covet_txn::__private::concat!(/* module path */, "::", "send_receipt");
//
//         fn run(event: ::covet_txn::__private::TxEvent) -> ::covet_txn::__private::HookFuture {
//             ::covet_txn::__private::boxed_hook(async move {
//                 ::covet_txn::__private::HookOutput::into_hook_result(send_receipt(&event).await)
//             })
//         }
//     }
//
//     impl ::covet_txn::__private::OnCommitHook for send_receipt {}
//
// With `crate = "my_covet"`, `my_covet::__private` replaces
// `::covet_txn::__private`.
/// Checks a handler and generates its declaration, or the errors.
pub(crate) fn declare(
    phase: &Phase,
    args: TokenStream,
    function: ItemFn,
) -> Result<TokenStream, syn::Error> {
    let mut errors = Errors::default();
    let mut args = Args::parse(args, phase.attribute, rules::HOOK_KEYS, &mut errors);
    let krate = rules::crate_path(&mut args);
    check_signature(phase.attribute, &function, &mut errors);
    errors.finish(())?;
    let private = quote!(#krate::__private);

    let name = &function.sig.ident;
    let vis = &function.vis;
    // An error type the runtime cannot keep is reported on the return type.
    let output_span = match &function.sig.output {
        ReturnType::Type(_, returned) => returned.span(),
        ReturnType::Default => Span::call_site(),
    };
    let call = if function.sig.asyncness.is_some() {
        quote_spanned!(output_span=> #name(&event).await)
    } else {
        quote_spanned!(output_span=> #name(&event))
    };
    let convert =
        crate::expand::respan(quote!(#private::HookOutput::into_hook_result), output_span);
    let into_result = quote_spanned!(output_span=> #convert(#call));
    let marker = format_ident!("{}", phase.marker);
    let variant = format_ident!("{}", phase.variant);
    Ok(quote! {
        #function

        #[doc(hidden)]
        #[allow(non_camel_case_types, dead_code)]
        #vis struct #name {}

        impl #private::Hook for #name {
            const PHASE: #private::Phase = #private::Phase::#variant;
            const NAME: &'static str =
                #private::concat!(#private::module_path!(), "::", #private::stringify!(#name));

            fn run(event: #private::TxEvent) -> #private::HookFuture {
                #private::boxed_hook(async move { #into_result })
            }
        }

        impl #private::#marker for #name {}
    })
}

fn check_signature(attribute: &str, function: &ItemFn, errors: &mut Errors) {
    let signature = &function.sig;
    if !signature.generics.params.is_empty() {
        errors.push(syn::Error::new_spanned(
            &signature.generics,
            format!("#[{attribute}] handlers cannot be generic: the transaction calls them with the event only"),
        ));
    }
    let mut inputs = signature.inputs.iter();
    match inputs.next() {
        None => errors.at(
            signature.paren_token.span.join(),
            format!("#[{attribute}] handlers receive the transaction's event: add `event: &covet_txn::TxEvent`"),
        ),
        Some(FnArg::Receiver(receiver)) => errors.push(syn::Error::new_spanned(
            receiver,
            format!("#[{attribute}] handlers are free functions, not methods: take `event: &covet_txn::TxEvent` instead of `self`"),
        )),
        Some(FnArg::Typed(typed)) if !is_event_reference(&typed.ty) => errors.push(syn::Error::new_spanned(
            &typed.ty,
            format!("#[{attribute}] handlers receive `&covet_txn::TxEvent`, the transaction's event"),
        )),
        Some(FnArg::Typed(_)) => {}
    }
    for extra in inputs {
        errors.push(syn::Error::new_spanned(
            extra,
            format!("#[{attribute}] handlers take only the event; capture anything else in a hook registered from the body with `covet_txn::{attribute}(...)`"),
        ));
    }
    if let ReturnType::Type(_, returned) = &signature.output
        && !item::is_result(returned)
        && !item::is_unit(returned)
    {
        errors.push(syn::Error::new_spanned(
            returned,
            format!(
                "#[{attribute}] handlers return nothing or `Result<(), E>` with `E` an error type"
            ),
        ));
    }
}

/// Whether the type is `&TxEvent` (by any path).
fn is_event_reference(ty: &Type) -> bool {
    match ty {
        Type::Reference(reference) if reference.mutability.is_none() => {
            matches!(&*reference.elem, Type::Path(path)
            if path.path.segments.last().is_some_and(|segment| segment.ident == "TxEvent"))
        }
        _ => false,
    }
}

/// The error spans a misplaced handler attribute on.
pub(crate) fn not_a_function(attribute: &str, span: Span) -> syn::Error {
    syn::Error::new(
        span,
        format!("#[{attribute}] goes on a function `fn handler(event: &covet_txn::TxEvent)`"),
    )
}
