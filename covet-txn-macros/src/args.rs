//! Parsing an attribute's arguments: first the syntax (`key` or
//! `key = value`, keeping every token's span), then each value as its key's
//! entry in the attribute's key table says. The table is the one list of the
//! keys an attribute takes: it drives parsing, the set-once check, and the
//! suggestions for a misspelt key.
//!
//! What the values mean together is `rules.rs`' business.

use std::time::Duration;

use proc_macro2::{Span, TokenStream};
use syn::ext::IdentExt;
use syn::parse::discouraged::Speculative;
use syn::parse::{ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, Ident, Lit, LitStr, Path, Token, bracketed};

use crate::errors::Errors;

/// How a key's value is read.
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    /// `key`, `key = true` or `key = false`.
    Flag,
    /// A string naming one of `values` (the attribute's spelling and the
    /// runtime's variant); the SQL spelling and any case work too.
    Choice {
        what: &'static str,
        values: &'static [(&'static str, &'static str)],
        also: &'static str,
    },
    /// A string that is not empty.
    Text,
    /// A string holding a path.
    PathText,
    /// Any expression.
    Expression,
    /// A whole number of retries of at least 1, or nothing.
    Retries,
    /// A string such as `"250ms"` or `"30s"`.
    Duration,
    /// A number of at least 1.
    Factor,
    /// A list of paths in brackets.
    Handlers,
}

/// One key of an attribute.
pub(crate) struct Key {
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
    /// What the key takes, in words, for error messages.
    pub(crate) takes: &'static str,
    /// The key with a value, as a user would write it.
    pub(crate) example: &'static str,
}

/// A value, as its key's kind reads it.
pub(crate) enum Value {
    Flag(bool),
    Choice(&'static str),
    Text(LitStr),
    Path(Path),
    Expression(Expr),
    Retries(Option<u32>),
    Duration(Duration),
    Factor(f64),
    Handlers(Vec<Path>),
}

/// A value given, with where its key and value stand.
pub(crate) struct Given {
    pub(crate) value: Value,
    pub(crate) key: Span,
    pub(crate) span: Span,
}

/// The arguments of one attribute, each read as its key says.
#[derive(Default)]
pub(crate) struct Args(Vec<(&'static str, Given)>);

impl Args {
    /// Reads `tokens` as arguments of the attribute `attribute`, whose keys
    /// are `keys`. Problems go to `errors`; the arguments that could be read
    /// are kept, so that the rest of the checks still run.
    pub(crate) fn parse(
        tokens: TokenStream,
        attribute: &str,
        keys: &'static [Key],
        errors: &mut Errors,
    ) -> Args {
        let raw = match RawArg::parse_all(tokens, keys[0].example) {
            Ok(raw) => raw,
            Err(error) => {
                errors.push(error);
                return Args::default();
            }
        };
        let mut args = Args::default();
        for RawArg { key, value } in raw {
            let name = key.to_string();
            let Some(entry) = keys.iter().find(|entry| entry.name == name) else {
                errors.at(key.span(), unknown_key(&name, attribute, keys));
                continue;
            };
            if args.0.iter().any(|(given, _)| *given == entry.name) {
                errors.at(
                    key.span(),
                    format!("`{name}` is set more than once; keep one of them"),
                );
                continue;
            }
            let span = value.as_ref().map_or(key.span(), RawValue::span);
            if let Some(value) = read(entry, &key, value, errors) {
                args.0.push((
                    entry.name,
                    Given {
                        value,
                        key: key.span(),
                        span,
                    },
                ));
            }
        }
        args
    }

    pub(crate) fn given(&self, name: &str) -> Option<&Given> {
        self.0
            .iter()
            .find(|(given, _)| *given == name)
            .map(|(_, given)| given)
    }

    /// Takes a value out, leaving the rest.
    pub(crate) fn take(&mut self, name: &str) -> Option<Given> {
        let index = self.0.iter().position(|(given, _)| *given == name)?;
        Some(self.0.remove(index).1)
    }
}

/// Reads one value as `key`'s kind says.
fn read(key: &Key, ident: &Ident, value: Option<RawValue>, errors: &mut Errors) -> Option<Value> {
    let name = key.name;
    let wrong = |errors: &mut Errors, span: Span| {
        errors.at(
            span,
            format!(
                "`{name}` takes {}, for example `{}`",
                key.takes, key.example
            ),
        );
    };
    let Some(value) = value else {
        return match key.kind {
            Kind::Flag => Some(Value::Flag(true)),
            Kind::Retries => Some(Value::Retries(None)),
            _ => {
                errors.at(
                    ident.span(),
                    format!("`{name}` needs a value, for example `{}`", key.example),
                );
                None
            }
        };
    };
    let span = value.span();
    match (key.kind, value) {
        (Kind::Flag, RawValue::Lit(Lit::Bool(flag))) => Some(Value::Flag(flag.value)),
        (Kind::Choice { what, values, also }, RawValue::Lit(Lit::Str(text))) => {
            match lookup(values, &text.value()) {
                Some(variant) => Some(Value::Choice(variant)),
                None => {
                    errors.at(
                        text.span(),
                        format!(
                            "unknown {what} `{}`; expected one of {}{also}",
                            text.value(),
                            listed(values)
                        ),
                    );
                    None
                }
            }
        }
        (Kind::Text, RawValue::Lit(Lit::Str(text))) if text.value().trim().is_empty() => {
            errors.at(text.span(), format!("`{name}` cannot be empty"));
            None
        }
        (Kind::Text, RawValue::Lit(Lit::Str(text))) => Some(Value::Text(text)),
        (Kind::PathText, RawValue::Lit(Lit::Str(text))) => match text.parse::<Path>() {
            Ok(path) => Some(Value::Path(path)),
            Err(_) => {
                errors.at(
                    text.span(),
                    format!(
                        "`{}` is not a path; give {}, for example `{}`",
                        text.value(),
                        key.takes,
                        key.example
                    ),
                );
                None
            }
        },
        (Kind::Expression, RawValue::Expr(expr)) => Some(Value::Expression(expr)),
        (Kind::Expression, RawValue::List { bracket, items }) => {
            let items = items.into_iter().map(|path| {
                Expr::Path(syn::ExprPath {
                    attrs: Vec::new(),
                    qself: None,
                    path,
                })
            });
            Some(Value::Expression(array(bracket, items.collect())))
        }
        (Kind::Expression, RawValue::Exprs { bracket, items }) => {
            Some(Value::Expression(array(bracket, items)))
        }
        (Kind::Expression, RawValue::Lit(lit)) => {
            Some(Value::Expression(Expr::Lit(syn::ExprLit {
                attrs: Vec::new(),
                lit,
            })))
        }
        (Kind::Retries, RawValue::Lit(Lit::Int(count))) => match count.base10_parse::<u32>() {
            Ok(0) => {
                errors.at(
                    count.span(),
                    "`retry = 0` would never retry: remove `retry`, or give the number of retries after the first attempt",
                );
                None
            }
            Ok(count) => Some(Value::Retries(Some(count))),
            Err(_) => {
                wrong(errors, count.span());
                None
            }
        },
        (Kind::Duration, RawValue::Lit(Lit::Str(text))) => match parse_duration(&text.value()) {
            Ok(duration) => Some(Value::Duration(duration)),
            Err(problem) => {
                errors.at(text.span(), format!("`{name}`: {problem}"));
                None
            }
        },
        (Kind::Factor, RawValue::Lit(Lit::Float(number))) => match number.base10_parse::<f64>() {
            Ok(factor) if factor >= 1.0 && factor.is_finite() => Some(Value::Factor(factor)),
            _ => at_least_one(name, key.example, number.span(), errors),
        },
        (Kind::Factor, RawValue::Lit(Lit::Int(number))) => match number.base10_parse::<u32>() {
            Ok(factor) if factor >= 1 => Some(Value::Factor(f64::from(factor))),
            _ => at_least_one(name, key.example, number.span(), errors),
        },
        (Kind::Handlers, RawValue::List { items, .. }) => {
            Some(Value::Handlers(items.into_iter().collect()))
        }
        (Kind::Handlers, _) => {
            wrong(errors, ident.span());
            None
        }
        _ => {
            wrong(errors, span);
            None
        }
    }
}

/// `[items]` as an array expression whose brackets stand at `bracket`.
fn array(bracket: Span, items: Punctuated<Expr, Token![,]>) -> Expr {
    Expr::Array(syn::ExprArray {
        attrs: Vec::new(),
        bracket_token: syn::token::Bracket(bracket),
        elems: items,
    })
}

fn at_least_one(name: &str, example: &str, span: Span, errors: &mut Errors) -> Option<Value> {
    errors.at(
        span,
        format!("`{name}` must be a number of at least 1, for example `{example}`"),
    );
    None
}

/// The message for a key the attribute does not take.
fn unknown_key(key: &str, attribute: &str, keys: &[Key]) -> String {
    if attribute != "transactional"
        && crate::rules::TRANSACTIONAL_KEYS
            .iter()
            .any(|known| known.name == key)
    {
        let takes: Vec<String> = keys
            .iter()
            .map(|known| format!("`{}`", known.example))
            .collect();
        return format!(
            "`{key}` is an argument of #[transactional], not of #[{attribute}], which takes only {}",
            takes.join(", ")
        );
    }
    match nearest(key, keys) {
        Some(candidate) => format!("unknown argument `{key}`; did you mean `{candidate}`?"),
        // A short list reads best as examples, a long one as names.
        None if keys.len() <= 2 => {
            let examples: Vec<String> = keys
                .iter()
                .map(|known| format!("`{}`", known.example))
                .collect();
            format!(
                "unknown argument `{key}`; #[{attribute}] takes only {}",
                examples.join(" and ")
            )
        }
        None => {
            let names: Vec<String> = keys
                .iter()
                .map(|known| format!("`{}`", known.name))
                .collect();
            format!(
                "unknown argument `{key}`; #[{attribute}] takes {}",
                names.join(", ")
            )
        }
    }
}

/// The key a misspelt `key` most likely means, if any is close enough.
fn nearest(key: &str, keys: &[Key]) -> Option<&'static str> {
    keys.iter()
        .map(|candidate| (edit_distance(key, candidate.name), candidate.name))
        .min()
        .filter(|(distance, candidate)| *distance <= candidate.len().max(key.len()) / 2)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance, for suggesting the argument the user meant.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, left) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, right) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(left != *right);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

/// Finds a name in a table, folding case, spaces, dashes and underscores.
fn lookup(table: &[(&str, &'static str)], text: &str) -> Option<&'static str> {
    let wanted = text
        .split(|c: char| c.is_whitespace() || c == '_' || c == '-')
        .filter(|word| !word.is_empty())
        .map(str::to_ascii_lowercase)
        .collect::<Vec<_>>()
        .join("_");
    table
        .iter()
        .find(|(name, _)| *name == wanted)
        .map(|(_, variant)| *variant)
}

fn listed(table: &[(&str, &str)]) -> String {
    table
        .iter()
        .map(|(name, _)| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses `"250ms"`, `"30s"`, `"1.5s"`, `"2m"`, `"1h"`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    const EXAMPLES: &str = "write for example \"250ms\", \"30s\", \"2m\" or \"1h\"";
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!("`{text}` is not a duration; {EXAMPLES}"));
    }
    let seconds_per_unit = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "" => return Err(format!("`{text}` has no unit; {EXAMPLES}")),
        other => return Err(format!("unknown unit `{other}`; use `ms`, `s`, `m` or `h`")),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration; {EXAMPLES}"))?;
    let duration = Duration::try_from_secs_f64(value * seconds_per_unit)
        .map_err(|_| format!("`{text}` is too long"))?;
    if duration.is_zero() {
        return Err(format!(
            "`{text}` is zero and would expire at once; give a positive duration"
        ));
    }
    Ok(duration)
}

/// One argument as written.
struct RawArg {
    key: Ident,
    value: Option<RawValue>,
}

/// The value after `=`, as written.
enum RawValue {
    /// A literal standing alone: `"serializable"`, `true`, `3`.
    Lit(Lit),
    /// `[a, b::c]`: a list of paths.
    List {
        bracket: Span,
        items: Punctuated<Path, Token![,]>,
    },
    /// `[a.id, (b, c)]`: a list of expressions, not all of them paths.
    Exprs {
        bracket: Span,
        items: Punctuated<Expr, Token![,]>,
    },
    /// Any other expression.
    Expr(Expr),
}

impl RawValue {
    fn span(&self) -> Span {
        match self {
            RawValue::Lit(lit) => lit.span(),
            RawValue::List { bracket, .. } | RawValue::Exprs { bracket, .. } => *bracket,
            RawValue::Expr(expr) => expr.span(),
        }
    }
}

impl RawArg {
    /// Every argument, in order. `example` is shown when something that is
    /// not an argument stands where one should.
    fn parse_all(tokens: TokenStream, example: &str) -> syn::Result<Vec<RawArg>> {
        let parser = |input: ParseStream<'_>| {
            let mut args = Vec::new();
            while !input.is_empty() {
                args.push(RawArg::parse(input, example)?);
                if !input.is_empty() {
                    input.parse::<Token![,]>()?;
                }
            }
            Ok(args)
        };
        parser.parse2(tokens)
    }

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
            let bracket = bracketed!(content in input).span.join();
            let paths = content.fork();
            match Punctuated::parse_terminated(&paths) {
                Ok(items) => {
                    content.advance_to(&paths);
                    RawValue::List { bracket, items }
                }
                Err(_) => RawValue::Exprs {
                    bracket,
                    items: Punctuated::parse_terminated(&content)?,
                },
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
