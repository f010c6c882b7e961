//! Generating the wrapped function from a validated [`Config`].
//!
//! The expansion is one short call into the runtime; all logic lives there.
//! Generated code reaches the runtime only through `<crate>::__private`.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{ItemFn, ReturnType};

use crate::valid::Config;

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
pub(crate) fn expand(config: Config, function: ItemFn) -> TokenStream {
    let Config {
        krate,
        manager,
        isolation,
        read_only,
        propagation,
        name,
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

    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = function;
    let (body, span) = match &sig.output {
        ReturnType::Type(_, returned) if !mentions_impl_trait(returned) => (
            quote! {
                async move {
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
                    #block
                }
            },
            returned.span(),
        ),
        _ => (quote!(async move #block), proc_macro2::Span::call_site()),
    };
    // The call is spanned on the return type, so that an error type that
    // cannot hold the runtime's errors is reported there.
    let run = respan(quote!(#private::run), span);
    let mut arguments = proc_macro2::Group::new(
        proc_macro2::Delimiter::Parenthesis,
        quote!(#manager, #options, #body),
    );
    arguments.set_span(span);

    quote! {
        #(#attrs)*
        #vis #sig {
            #run #arguments .await
        }
    }
}

/// Gives every token the same span, so that errors about the tokens point
/// at that place in the user's code.
fn respan(tokens: TokenStream, span: proc_macro2::Span) -> TokenStream {
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
