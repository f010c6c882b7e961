//! Generating the wrapped function from a validated [`Config`].
//!
//! The expansion is one short call into the runtime; all logic lives there.
//! Generated code reaches the runtime only through `<crate>::__private`.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{AttrStyle, FnArg, ItemFn, Pat, ReturnType, Signature};

use crate::valid::{Config, Retry, Reuse, ReusedArgument};

// Input:
//
//     #[transactional(isolation = "serializable")]
//     async fn transfer(from: i64, to: i64) -> Result<(), AppError> { body }
//
// Output:
//
//     async fn transfer(from: i64, to: i64) -> Result<(), AppError> {
//         ::covet_txn::__private::run(
//             ::covet_txn::__private::default_manager(),
//             ::covet_txn::__private::TxOptions::new()
//                 .isolation(::covet_txn::__private::Isolation::Serializable)
//                 .name(concat!(module_path!(), "::", "transfer")),
//             async move {
//                 if false {
//                     let __covet_return: Result<(), AppError> = loop {};
//                     return __covet_return;
//                 }
//                 { body }
//             },
//         )
//         .await
//     }
//
// The unreachable `if false` fixes the async block's output type before the
// body is checked, so that `?` converts into the declared error type and a
// type error points into the body, as it would without the macro.
//
// A body's inner attributes (`#![allow(...)]` as its first line) stay first
// in the generated body, so they still apply to the whole function.
//
// With `retry`, each attempt binds the arguments afresh, keeping their `mut`:
//
//     #[transactional(retry = 3)]
//     async fn place(mut items: Vec<i64>, counter: &mut u32) -> Result<(), AppError> { body }
//
// Output:
//
//     async fn place(items: Vec<i64>, counter: &mut u32) -> Result<(), AppError> {
//         let mut __covet_attempts = ::covet_txn::__private::Attempts::new(manager, options);
//         loop {
//             if let Some(__covet_result) = __covet_attempts
//                 .attempt(inspect, async {
//                     if false { /* the type hint, as above */ }
//                     let mut items = ::covet_txn::__private::reuse(&items);
//                     let counter = &mut *counter;
//                     { body }
//                 })
//                 .await
//             {
//                 return __covet_result;
//             }
//         }
//     }
//
// The parameter loses its `mut`: only the copy is ever changed, and an unused
// `mut` on the parameter would warn. The copy's `mut` is the user's token, so
// a `mut` the body does not need warns there, as it would without the macro.
pub(crate) fn expand(config: Config, function: ItemFn) -> TokenStream {
    let Config {
        krate,
        manager,
        isolation,
        read_only,
        propagation,
        name,
        retry,
        timeout,
        resolve_ambiguous_commit,
        hooks,
    } = config;
    let private = quote!(#krate::__private);

    let manager = match manager {
        Some(expr) => quote_spanned!(expr.span()=> #private::manager(&(#expr))),
        None => quote!(#private::default_manager()),
    };

    let mut options = quote!(#private::TxOptions::new());
    if let Some(level) = isolation {
        options.extend(quote!(.isolation(#private::Isolation::#level)));
    }
    if let Some(flag) = read_only {
        options.extend(quote!(.read_only(#flag)));
    }
    if let Some(mode) = propagation {
        options.extend(quote!(.propagation(#private::Propagation::#mode)));
    }
    let name = match name {
        Some(text) => text.into_token_stream(),
        None => {
            let function_name = function.sig.ident.to_string();
            quote!(#private::concat!(#private::module_path!(), "::", #function_name))
        }
    };
    options.extend(quote!(.name(#name)));
    if let Some(timeout) = timeout {
        let timeout = duration(&private, timeout);
        options.extend(quote!(.timeout(#timeout)));
    }
    if let Some(flag) = resolve_ambiguous_commit {
        options.extend(quote!(.resolve_ambiguous_commit(#flag)));
    }
    if let Some(retry) = &retry {
        options.extend(retry_options(&private, retry));
    }
    if !hooks.is_empty() {
        // Each handler is checked against the phase it is listed under, with
        // the error on the handler's name.
        let declared = hooks.iter().map(
            |(check, handler)| quote_spanned!(handler.span()=> #private::#check::<#handler>()),
        );
        options.extend(quote!(.declared_hooks(const { &[#(#declared),*] })));
    }

    // Finds a `std::error::Error` inside whatever error type the function
    // returns, for the retry classification.
    let inspect = quote! {
        |__covet_error| {
            #[allow(unused_imports)]
            use #private::{ViaDeref as _, ViaNothing as _, ViaPlainDeref as _, ViaStdError as _};
            (&&&&#private::Probe(__covet_error)).covet_error()
        }
    };

    let ItemFn {
        attrs,
        vis,
        mut sig,
        block,
    } = function;
    // syn keeps a body's inner attributes with the function's outer ones;
    // before `fn` they would not compile.
    let (inner_attrs, outer_attrs): (Vec<_>, Vec<_>) = attrs
        .into_iter()
        .partition(|attribute| matches!(attribute.style, AttrStyle::Inner(_)));
    let (hint, span) = match &sig.output {
        ReturnType::Type(_, returned) if !mentions_impl_trait(returned) => (
            quote! {
                #[allow(
                    unknown_lints,
                    unreachable_code,
                    clippy::diverging_sub_expression,
                    clippy::empty_loop,
                    clippy::needless_return,
                    clippy::unreachable
                )]
                if false {
                    let __covet_return: #returned = loop {};
                    return __covet_return;
                }
            },
            returned.span(),
        ),
        _ => (TokenStream::new(), proc_macro2::Span::call_site()),
    };

    let call = match &retry {
        None => {
            let body = quote!(async move { #hint #block });
            // Spanned on the return type, so that an error type that cannot
            // hold the runtime's errors is reported there.
            let run = respan(quote!(#private::run), span);
            let arguments = spanned_group(quote!(#manager, #options, #inspect, #body), span);
            quote!(#run #arguments .await)
        }
        Some(retry) => {
            move_mutability_into_attempts(&mut sig, retry);
            let reuse = retry.arguments.iter().map(
                |ReusedArgument {
                     mutability,
                     ident,
                     reuse,
                 }| {
                    let value = match reuse {
                        Reuse::Clone => quote_spanned!(ident.span()=> #private::reuse(&#ident)),
                        Reuse::Reborrow => quote_spanned!(ident.span()=> &mut *#ident),
                        Reuse::Copy => ident.to_token_stream(),
                    };
                    quote_spanned!(ident.span()=> let #mutability #ident = #value;)
                },
            );
            let body = quote!(async { #hint #(#reuse)* #block });
            let attempts = respan(quote!(#private::Attempts::new), span);
            let arguments = spanned_group(quote!(#manager, #options), span);
            quote! {
                let mut __covet_attempts = #attempts #arguments;
                loop {
                    if let #private::Option::Some(__covet_result) =
                        __covet_attempts.attempt(#inspect, #body).await
                    {
                        return __covet_result;
                    }
                }
            }
        }
    };

    quote! {
        #(#outer_attrs)*
        #vis #sig {
            #(#inner_attrs)*
            #call
        }
    }
}

/// Drops the `mut` of the parameters that each attempt rebinds: the
/// rebinding carries it instead, and the parameter itself is only read.
fn move_mutability_into_attempts(sig: &mut Signature, retry: &Retry) {
    for input in &mut sig.inputs {
        if let FnArg::Typed(typed) = input
            && let Pat::Ident(binding) = &mut *typed.pat
            && retry
                .arguments
                .iter()
                .any(|argument| argument.ident == binding.ident)
        {
            binding.mutability = None;
        }
    }
}

/// The options a retrying function adds.
fn retry_options(private: &TokenStream, retry: &Retry) -> TokenStream {
    let mut options = match retry.retries {
        Some(count) => quote!(.retries(#count)),
        None => quote!(.retry()),
    };
    if let Some(backoff) = retry.backoff {
        let backoff = duration(private, backoff);
        options.extend(quote!(.backoff(#backoff)));
    }
    if let Some(cap) = retry.max_backoff {
        let cap = duration(private, cap);
        options.extend(quote!(.max_backoff(#cap)));
    }
    if let Some(factor) = retry.multiplier {
        options.extend(quote!(.backoff_multiplier(#factor)));
    }
    if let Some(predicate) = &retry.predicate {
        options.extend(quote_spanned!(predicate.span()=> .retry_if(#predicate)));
    }
    options
}

/// A duration checked at compile time, as a constant expression.
fn duration(private: &TokenStream, duration: std::time::Duration) -> TokenStream {
    let seconds = duration.as_secs();
    let nanos = duration.subsec_nanos();
    quote!(#private::Duration::new(#seconds, #nanos))
}

/// Parentheses around `tokens` carrying `span`, so that errors about the
/// call they belong to point there.
fn spanned_group(tokens: TokenStream, span: proc_macro2::Span) -> proc_macro2::Group {
    let mut group = proc_macro2::Group::new(proc_macro2::Delimiter::Parenthesis, tokens);
    group.set_span(span);
    group
}

/// Gives every token the same span, so that errors about the tokens point
/// at that place in the user's code.
pub(crate) fn respan(tokens: TokenStream, span: proc_macro2::Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let proc_macro2::TokenTree::Group(group) = &token {
                let mut respanned =
                    proc_macro2::Group::new(group.delimiter(), respan(group.stream(), span));
                respanned.set_span(span);
                token = proc_macro2::TokenTree::Group(respanned);
            } else {
                token.set_span(span);
            }
            token
        })
        .collect()
}

/// `impl Trait` cannot be named in a turbofish, so such return types go
/// without the type hint.
fn mentions_impl_trait(returned: &syn::Type) -> bool {
    struct Finder(bool);
    impl Visit<'_> for Finder {
        fn visit_type_impl_trait(&mut self, _: &syn::TypeImplTrait) {
            self.0 = true;
        }
    }
    let mut finder = Finder(false);
    finder.visit_type(returned);
    finder.0
}
