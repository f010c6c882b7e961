//! `#[covet_txn::test]`: an `async fn` test that runs on a runtime of its
//! own (as `#[tokio::test]` does) inside a transaction that always rolls
//! back. The logic is the runtime's; this file only checks the test and
//! wraps its body.

use proc_macro2::TokenStream;
use quote::quote;
use syn::spanned::Spanned;
use syn::{AttrStyle, ItemFn, ReturnType};

use crate::args::{Args, Value};
use crate::errors::Errors;
use crate::rules;

// Input:
//
//     #[covet_txn::test(manager = test_db())]
//     async fn an_order_is_saved() -> Result<(), AppError> { body }
//
// Output:
//
//     #[::core::prelude::v1::test]
//     fn an_order_is_saved() -> Result<(), AppError> {
//         ::covet_txn::__private::test_runtime().block_on(
//             ::covet_txn::__private::test_transaction(test_db(), async move {
//                 if false {
//                     return ::covet_txn::__private::unreachable::<Result<(), AppError>>();
//                 }
//                 { body }
//             }),
//         )
//     }
pub(crate) fn test(args: TokenStream, function: ItemFn) -> Result<TokenStream, syn::Error> {
    let mut errors = Errors::default();
    let mut args = Args::parse(args, "covet_txn::test", rules::TEST_KEYS, &mut errors);
    let krate = rules::crate_path(&mut args);
    check(&function, &mut errors);
    let manager = match args.take("manager").map(|given| given.value) {
        Some(Value::Expression(manager)) => Some(manager),
        _ => None,
    };
    errors.finish(())?;
    let private = quote!(#krate::__private);

    let ItemFn {
        attrs,
        vis,
        mut sig,
        block,
    } = function;
    sig.asyncness = None;
    let (inner_attrs, outer_attrs): (Vec<_>, Vec<_>) = attrs
        .into_iter()
        .partition(|attribute| matches!(attribute.style, AttrStyle::Inner(_)));
    let hint = match &sig.output {
        ReturnType::Type(_, returned) => {
            quote!(if false { return #private::unreachable::<#returned>(); })
        }
        ReturnType::Default => TokenStream::new(),
    };
    let body = quote!(async move { #hint #block });
    let run = match manager {
        Some(manager) => quote!(#private::test_transaction(#manager, #body)),
        None => quote!(#private::default_test_transaction(#body)),
    };
    Ok(quote! {
        #(#outer_attrs)*
        #[::core::prelude::v1::test]
        #vis #sig {
            #(#inner_attrs)*
            #private::test_runtime().block_on(#run)
        }
    })
}

fn check(function: &ItemFn, errors: &mut Errors) {
    let signature = &function.sig;
    if signature.asyncness.is_none() {
        errors.at(
            signature.fn_token.span,
            "#[covet_txn::test] works on `async fn` tests only: write `async fn`",
        );
    }
    if !signature.inputs.is_empty() {
        errors.at(
            signature.inputs.span(),
            "a test takes no arguments: make what it needs inside it, or in the `manager = ...` future",
        );
    }
    for attribute in &function.attrs {
        let path = attribute.path();
        let is_test = path.is_ident("test")
            || path
                .segments
                .last()
                .is_some_and(|segment| segment.ident == "test");
        if is_test {
            errors.at(
                path.span(),
                "#[covet_txn::test] runs the test on a runtime of its own: remove this test attribute",
            );
        }
    }
}
