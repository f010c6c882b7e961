//! `#[on_commit]`, `#[before_commit]`, `#[on_rollback]`, `#[before_rollback]`:
//! checking a handler's signature and generating what lets a
//! `#[transactional(on_commit = [handler])]` list find it.
//!
//! Next to the function, which stays as written, the attribute declares a
//! type of the same name (types and functions live in separate namespaces)
//! that carries the phase and a uniform, boxed way to call the handler.
//! Its only argument, `crate = "..."`, is checked in `valid.rs`, as
//! `#[transactional]`'s is.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::{FnArg, ItemFn, ReturnType, Type};

use crate::attr::RawArgs;
use crate::valid::{self, Errors};

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
    phase: &str,
    args: TokenStream,
    function: ItemFn,
) -> Result<TokenStream, syn::Error> {
    let mut errors = Errors::default();
    let krate = match RawArgs::parse(args, "crate = \"my_covet\"") {
        Ok(args) => Some(valid::validate_hook_args(phase, args, &mut errors)),
        Err(error) => {
            errors.push(error);
            None
        }
    };
    check_signature(phase, &function, &mut errors);
    let krate = errors.finish(krate)?;
    let private = quote!(#krate::__private);

    let name = &function.sig.ident;
    let vis = &function.vis;

    // An error type the runtime cannot keep is reported on the return type.
    let output_span = match &function.sig.output {
        ReturnType::Type(_, returned) => syn::spanned::Spanned::span(&**returned),
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
    let marker = format_ident!("{}", marker_trait(phase));
    let phase_variant = format_ident!("{}", phase_variant(phase));
    Ok(quote! {
        #function

        #[doc(hidden)]
        #[allow(non_camel_case_types, dead_code)]
        #vis struct #name {}

        impl #private::Hook for #name {
            const PHASE: #private::Phase = #private::Phase::#phase_variant;
            const NAME: &'static str =
                #private::concat!(#private::module_path!(), "::", #private::stringify!(#name));

            fn run(event: #private::TxEvent) -> #private::HookFuture {
                #private::boxed_hook(async move {
                    #into_result
                })
            }
        }

        impl #private::#marker for #name {}
    })
}

fn check_signature(phase: &str, function: &ItemFn, errors: &mut Errors) {
    let signature = &function.sig;
    if !signature.generics.params.is_empty() {
        errors.push(syn::Error::new_spanned(
            &signature.generics,
            format!("#[{phase}] handlers cannot be generic: the transaction calls them with the event only"),
        ));
    }
    let mut inputs = signature.inputs.iter();
    match inputs.next() {
        None => errors.push(syn::Error::new(
            signature.paren_token.span.join(),
            format!("#[{phase}] handlers receive the transaction's event: add `event: &covet_txn::TxEvent`"),
        )),
        Some(FnArg::Receiver(receiver)) => errors.push(syn::Error::new_spanned(
            receiver,
            format!("#[{phase}] handlers are free functions, not methods: take `event: &covet_txn::TxEvent` instead of `self`"),
        )),
        Some(FnArg::Typed(typed)) if !is_event_reference(&typed.ty) => errors.push(syn::Error::new_spanned(
            &typed.ty,
            format!("#[{phase}] handlers receive `&covet_txn::TxEvent`, the transaction's event"),
        )),
        Some(FnArg::Typed(_)) => {}
    }
    for extra in inputs {
        errors.push(syn::Error::new_spanned(
            extra,
            format!("#[{phase}] handlers take only the event; capture anything else in a hook registered from the body with `covet_txn::{phase}(...)`"),
        ));
    }
    if let ReturnType::Type(_, returned) = &signature.output {
        let returns_result = matches!(&**returned, Type::Path(path)
            if path.path.segments.last().is_some_and(|segment| segment.ident.to_string().ends_with("Result")));
        let returns_unit = matches!(&**returned, Type::Tuple(tuple) if tuple.elems.is_empty());
        if !returns_result && !returns_unit {
            errors.push(syn::Error::new_spanned(
                returned,
                format!("#[{phase}] handlers return nothing or `Result<(), E>` with `E: Display`"),
            ));
        }
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

fn marker_trait(phase: &str) -> &'static str {
    match phase {
        "before_commit" => "BeforeCommitHook",
        "on_commit" => "OnCommitHook",
        "before_rollback" => "BeforeRollbackHook",
        _ => "OnRollbackHook",
    }
}

fn phase_variant(phase: &str) -> &'static str {
    match phase {
        "before_commit" => "BeforeCommit",
        "on_commit" => "AfterCommit",
        "before_rollback" => "BeforeRollback",
        _ => "AfterRollback",
    }
}

/// The error spans a misplaced handler attribute on.
pub(crate) fn not_a_function(phase: &str, span: Span) -> syn::Error {
    syn::Error::new(
        span,
        format!("#[{phase}] goes on a function `fn handler(event: &covet_txn::TxEvent)`"),
    )
}
