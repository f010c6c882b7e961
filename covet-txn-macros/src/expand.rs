//! Generating the wrapped function from a checked [`Config`]: one short
//! call into the runtime, which holds all the logic. Generated code reaches
//! the runtime only through `<crate>::__private`, and its own names start
//! with `__covet_`.

use proc_macro2::{Delimiter, Group, Span, TokenStream, TokenTree};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{AttrStyle, FnArg, ItemFn, Pat, ReturnType, Signature};

use crate::item::Reuse;
use crate::rules::{Config, Retry};

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
//             ::covet_txn::__private::inspect!(::covet_txn::__private),
//             async move {
//                 if false {
//                     return ::covet_txn::__private::unreachable::<Result<(), AppError>>();
//                 }
//                 { body }
//             },
//         )
//         .await
//     }
//
// The `if false` return fixes the async block's output type before the body
// is checked, so that `?` converts into the declared error type and a type
// error points into the body, as it would without the macro. `inspect!`
// finds the `std::error::Error` inside the error type, for the retry
// classification. A body's inner attributes (`#![allow(...)]` as its first
// line) stay first in the generated body, so they still apply to it.
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
    let krate = &config.krate;
    let private = quote!(#krate::__private);
    let manager = match &config.manager {
        Some(expr) => quote_spanned!(expr.span()=> #private::manager(&(#expr))),
        None => quote!(#private::default_manager()),
    };
    let options = options(&private, &config, &function.sig);
    let two_phase_options = two_phase_options(&private, &config, &function.sig);
    let inspect = quote!(#private::inspect!(#private));

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
    // Errors about the call (an error type that cannot hold the runtime's
    // errors) are reported on the return type.
    let (hint, span) = match &sig.output {
        ReturnType::Type(_, returned) if !mentions_impl_trait(returned) => (
            quote!(if false { return #private::unreachable::<#returned>(); }),
            returned.span(),
        ),
        _ => (TokenStream::new(), Span::call_site()),
    };

    let call = match (&config.two_phase, &config.retry) {
        (Some(coordinator), None) => {
            let attempts = quote_spanned!(coordinator.span()=> #private::TwoPhaseAttempts::new(&(#coordinator), #two_phase_options));
            let once = respan(quote!(.once), span);
            let hint = respan(hint.clone(), span);
            let inspect = respan(inspect.clone(), span);
            quote_spanned!(span=> #attempts #once(#inspect, async move { #hint #block }).await)
        }
        (Some(coordinator), Some(retry)) => {
            move_mutability_into_attempts(&mut sig, retry);
            let reuse = rebind_arguments(&private, retry);
            let attempts = quote_spanned!(coordinator.span()=> #private::TwoPhaseAttempts::new(&(#coordinator), #two_phase_options));
            let hint = respan(hint.clone(), span);
            let inspect = respan(inspect.clone(), span);
            let attempt = quote_spanned!(span=> __covet_attempts.attempt(#inspect, async { #hint #(#reuse)* #block }).await);
            quote! {
                let mut __covet_attempts = #attempts;
                loop {
                    if let #private::Option::Some(__covet_result) = #attempt {
                        return __covet_result;
                    }
                }
            }
        }
        (None, None) => {
            let run = respan(quote!(#private::run), span);
            let hint = respan(hint.clone(), span);
            let inspect = respan(inspect.clone(), span);
            quote_spanned!(span=> #run(#manager, #options, #inspect, async move { #hint #block }).await)
        }
        (None, Some(retry)) => {
            move_mutability_into_attempts(&mut sig, retry);
            let reuse = rebind_arguments(&private, retry);
            let attempts = respan(quote!(#private::Attempts::new), span);
            let arguments = spanned_group(quote!(#manager, #options), span, Delimiter::Parenthesis);
            let hint = respan(hint.clone(), span);
            let inspect = respan(inspect.clone(), span);
            let attempt = quote_spanned!(span=> __covet_attempts.attempt(#inspect, async { #hint #(#reuse)* #block }).await);
            quote! {
                let mut __covet_attempts = #attempts #arguments;
                loop {
                    if let #private::Option::Some(__covet_result) = #attempt {
                        return __covet_result;
                    }
                }
            }
        }
    };

    let body = spanned_group(quote!(#(#inner_attrs)* #call), span, Delimiter::Brace);
    quote! {
        #(#outer_attrs)*
        #vis #sig #body
    }
}

/// The options of the call, as a chain of the runtime's `const` builders.
fn options(private: &TokenStream, config: &Config, signature: &Signature) -> TokenStream {
    let mut options = quote!(#private::TxOptions::new());
    if let Some(level) = &config.isolation {
        options.extend(quote!(.isolation(#private::Isolation::#level)));
    }
    if let Some(flag) = config.read_only {
        options.extend(quote!(.read_only(#flag)));
    }
    if let Some(mode) = &config.propagation {
        options.extend(quote!(.propagation(#private::Propagation::#mode)));
    }
    if config.durable {
        options.extend(quote!(.durable(true)));
    }
    let name = call_name(private, config, signature);
    options.extend(quote!(.name(#name)));
    if let Some(timeout) = config.timeout {
        let timeout = duration(private, timeout);
        options.extend(quote!(.timeout(#timeout)));
    }
    if let Some(flag) = config.resolve_ambiguous_commit {
        options.extend(quote!(.resolve_ambiguous_commit(#flag)));
    }
    if let Some(retry) = &config.retry {
        options.extend(retry_options(private, retry));
    }
    if !config.hooks.is_empty() {
        // Each handler is checked against the phase it is listed under, with
        // the error on the handler's name.
        let declared = config.hooks.iter().map(|(phase, handler)| {
            let check = syn::Ident::new(phase.declared, Span::call_site());
            quote_spanned!(handler.span()=> #private::#check::<#handler>())
        });
        options.extend(quote!(.declared_hooks(const { &[#(#declared),*] })));
    }
    if let Some(contention) = &config.contention {
        options.extend(quote!(.contention(#private::Contention::#contention)));
    }
    if !config.conflict_keys.is_empty() {
        // Each key is borrowed, not moved (the body still owns the
        // arguments), and checked for `Hash` with the error on the key.
        let keys = config.conflict_keys.iter().fold(
            quote!(#private::ConflictKeys::new()),
            |keys, key| quote_spanned!(key.span()=> #private::conflict_key(#keys, &(#key))),
        );
        options.extend(quote!(.conflict_keys(#keys)));
    }
    if let Some(predicate) = &config.commit_on {
        // Checked against the declared error type where there is one, so a
        // predicate on another type is one error, on the predicate.
        let predicate = match &signature.output {
            ReturnType::Type(_, returned) if !mentions_impl_trait(returned) => {
                quote_spanned!(predicate.span()=> #private::commit_on_predicate::<#returned>(#predicate))
            }
            _ => predicate.to_token_stream(),
        };
        options.extend(quote!(.commit_on(#predicate)));
    }
    options
}

/// Each attempt's fresh bindings of the function's arguments.
fn rebind_arguments(private: &TokenStream, retry: &Retry) -> Vec<TokenStream> {
    retry
        .arguments
        .iter()
        .map(|argument| {
            let (mutability, ident) = (&argument.mutability, &argument.ident);
            let value = match argument.reuse {
                Reuse::Clone => quote_spanned!(ident.span()=> #private::reuse(&#ident)),
                Reuse::Reborrow => quote_spanned!(ident.span()=> &mut *#ident),
                Reuse::Copy => ident.to_token_stream(),
            };
            quote_spanned!(ident.span()=> let #mutability #ident = #value;)
        })
        .collect()
}

/// The options of a two-phase call: its name, isolation, timeout and
/// retry policy (bare `retry` is the policy's defaults).
fn two_phase_options(private: &TokenStream, config: &Config, signature: &Signature) -> TokenStream {
    let name = call_name(private, config, signature);
    let mut options = quote!(#private::TwoPhaseOptions::new().name(#name));
    if let Some(level) = &config.isolation {
        options.extend(quote!(.isolation(#private::Isolation::#level)));
    }
    if let Some(timeout) = config.timeout {
        let timeout = duration(private, timeout);
        options.extend(quote!(.timeout(#timeout)));
    }
    if let Some(retry) = &config.retry {
        let mut policy = quote!(#private::RetryPolicy::new());
        if let Some(count) = retry.retries {
            policy.extend(quote!(.retries(#count)));
        }
        if let Some(backoff) = retry.backoff {
            let backoff = duration(private, backoff);
            policy.extend(quote!(.backoff(#backoff)));
        }
        if let Some(cap) = retry.max_backoff {
            let cap = duration(private, cap);
            policy.extend(quote!(.max_backoff(#cap)));
        }
        if let Some(factor) = retry.multiplier {
            policy.extend(quote!(.multiplier(#factor)));
        }
        if let Some(predicate) = &retry.predicate {
            policy.extend(quote_spanned!(predicate.span()=> .retry_if(#predicate)));
        }
        options.extend(quote!(.retry(#policy)));
    }
    options
}

/// The name the call is counted and traced under.
fn call_name(private: &TokenStream, config: &Config, signature: &Signature) -> TokenStream {
    match &config.name {
        Some(text) => text.into_token_stream(),
        None => {
            let function = signature.ident.to_string();
            quote!(#private::concat!(#private::module_path!(), "::", #function))
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

/// A duration checked at compile time, as a constant expression.
pub(crate) fn duration(private: &TokenStream, duration: std::time::Duration) -> TokenStream {
    let seconds = duration.as_secs();
    let nanos = duration.subsec_nanos();
    quote!(#private::Duration::new(#seconds, #nanos))
}

/// `delimiter` around `tokens`, carrying `span`, so that errors about what
/// they enclose point there.
fn spanned_group(tokens: TokenStream, span: Span, delimiter: Delimiter) -> Group {
    let mut group = Group::new(delimiter, tokens);
    group.set_span(span);
    group
}

/// Gives every token the same span, so that errors about the tokens point
/// at that place in the user's code.
pub(crate) fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let TokenTree::Group(group) = &token {
                let mut respanned = Group::new(group.delimiter(), respan(group.stream(), span));
                respanned.set_span(span);
                token = TokenTree::Group(respanned);
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
