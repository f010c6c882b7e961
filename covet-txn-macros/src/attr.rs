//! Parsing the arguments of `#[transactional(...)]` and of the hook
//! attributes (`#[on_commit(...)]` and the others): syntax only.
//!
//! Each argument becomes `key` or `key = value`, keeping its tokens for
//! spans. What the keys and values mean is `valid.rs`'s business, so that a
//! misspelt key or a wrong value still parses and gets a precise error there.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::{Expr, Ident, Lit, Path, Token, bracketed};

/// One argument as written.
pub(crate) struct RawArg {
    pub(crate) key: Ident,
    pub(crate) value: Option<RawValue>,
}

/// The value after `=`.
pub(crate) enum RawValue {
    /// A literal standing alone: `"serializable"`, `true`, `3`.
    Lit(Lit),
    /// `[a, b::c]`: a list of paths, as the hook lists take.
    List {
        bracket: Span,
        items: Punctuated<Path, Token![,]>,
    },
    /// Any other expression, as `manager = ...` takes.
    Expr(Expr),
}

impl RawValue {
    pub(crate) fn span(&self) -> Span {
        match self {
            RawValue::Lit(lit) => lit.span(),
            RawValue::List { bracket, .. } => *bracket,
            RawValue::Expr(expr) => syn::spanned::Spanned::span(expr),
        }
    }
}

/// All arguments, in order.
pub(crate) struct RawArgs(pub(crate) Vec<RawArg>);

impl RawArgs {
    /// Parses an attribute's arguments. `example` is an argument the
    /// attribute takes, shown when something that is not an argument stands
    /// where one should, so that each attribute suggests one of its own.
    pub(crate) fn parse(tokens: proc_macro2::TokenStream, example: &str) -> syn::Result<Self> {
        let parser = |input: ParseStream<'_>| {
            let mut args = Vec::new();
            while !input.is_empty() {
                args.push(RawArg::parse(input, example)?);
                if !input.is_empty() {
                    input.parse::<Token![,]>()?;
                }
            }
            Ok(RawArgs(args))
        };
        parser.parse2(tokens)
    }
}

impl RawArg {
    fn parse(input: ParseStream<'_>, example: &str) -> syn::Result<Self> {
        // `crate` is a keyword; `Ident::parse_any` accepts it as a key.
        let key = Ident::parse_any(input).map_err(|error| {
            syn::Error::new(
                error.span(),
                format!("expected an argument such as `{example}`"),
            )
        })?;
        if !input.peek(Token![=]) {
            return Ok(RawArg { key, value: None });
        }
        input.parse::<Token![=]>()?;
        let value = if input.peek(syn::token::Bracket) {
            let content;
            let bracket = bracketed!(content in input);
            RawValue::List {
                bracket: bracket.span.join(),
                items: Punctuated::parse_terminated(&content)?,
            }
        } else if input.peek(Lit) && (input.peek2(Token![,]) || input.peek2(syn::parse::End)) {
            RawValue::Lit(input.parse()?)
        } else {
            RawValue::Expr(input.parse()?)
        };
        Ok(RawArg {
            key,
            value: Some(value),
        })
    }
}
