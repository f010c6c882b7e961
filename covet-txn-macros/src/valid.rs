//! Checking what the arguments and the function mean, and turning them into
//! a [`Config`] for expansion; and checking the arguments of the hook
//! attributes, which share `crate = "..."` with `#[transactional]`.
//!
//! Every problem becomes a `syn::Error` spanned on the token the user has to
//! change, with the fix in the message. All problems are collected and
//! reported together.

use std::time::Duration;

use proc_macro2::Span;
use syn::{Expr, FnArg, Ident, ItemFn, Lit, LitStr, Pat, Path, ReturnType, Token, Type};

use crate::attr::{RawArg, RawArgs, RawValue};

/// The isolation levels: attribute name and runtime variant.
const ISOLATIONS: [(&str, &str); 4] = [
    ("read_uncommitted", "ReadUncommitted"),
    ("read_committed", "ReadCommitted"),
    ("repeatable_read", "RepeatableRead"),
    ("serializable", "Serializable"),
];

/// The propagation modes: attribute name and runtime variant.
const PROPAGATIONS: [(&str, &str); 6] = [
    ("nested", "Nested"),
    ("required", "Required"),
    ("requires_new", "RequiresNew"),
    ("mandatory", "Mandatory"),
    ("never", "Never"),
    ("supports", "Supports"),
];

/// Every argument `#[transactional]` takes.
const KEYS: [&str; 17] = [
    "manager",
    "isolation",
    "read_only",
    "propagation",
    "name",
    "crate",
    "retry",
    "backoff",
    "max_backoff",
    "backoff_multiplier",
    "retry_if",
    "timeout",
    "resolve_ambiguous_commit",
    "before_commit",
    "on_commit",
    "before_rollback",
    "on_rollback",
];

/// Every argument the hook attributes (`#[on_commit]` and the others) take.
const HOOK_KEYS: [&str; 1] = ["crate"];

/// The hook phases: attribute key, and the runtime's const fn that checks a
/// handler was declared for that phase.
const HOOK_PHASES: [(&str, &str); 4] = [
    ("before_commit", "declared_before_commit"),
    ("on_commit", "declared_on_commit"),
    ("before_rollback", "declared_before_rollback"),
    ("on_rollback", "declared_on_rollback"),
];

/// How a by-value argument is made available to each attempt of a retrying
/// function.
pub(crate) enum Reuse {
    /// Cloned (by-value arguments).
    Clone,
    /// Reborrowed (`&mut T`).
    Reborrow,
    /// Copied (`mut` bindings of `&T`), so that a reassignment in one
    /// attempt does not carry over to the next.
    Copy,
}

/// An argument that each attempt of a retrying function binds afresh.
pub(crate) struct ReusedArgument {
    /// The `mut` of `mut items: Vec<i64>`, which belongs on the binding the
    /// body sees, the one made for each attempt.
    pub(crate) mutability: Option<Token![mut]>,
    pub(crate) ident: Ident,
    pub(crate) reuse: Reuse,
}

/// The retry settings a function asked for.
pub(crate) struct Retry {
    /// `None`: bare `retry`, the manager's policy.
    pub(crate) retries: Option<u32>,
    pub(crate) backoff: Option<Duration>,
    pub(crate) max_backoff: Option<Duration>,
    pub(crate) multiplier: Option<f64>,
    pub(crate) predicate: Option<Expr>,
    /// The arguments each attempt re-uses, and how.
    pub(crate) arguments: Vec<ReusedArgument>,
}

/// Validated arguments.
pub(crate) struct Config {
    /// The path the generated code reaches the runtime through.
    pub(crate) krate: Path,
    pub(crate) manager: Option<Expr>,
    /// The runtime's `Isolation` variant.
    pub(crate) isolation: Option<Ident>,
    pub(crate) read_only: Option<bool>,
    /// The runtime's `Propagation` variant.
    pub(crate) propagation: Option<Ident>,
    pub(crate) name: Option<LitStr>,
    pub(crate) retry: Option<Retry>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) resolve_ambiguous_commit: Option<bool>,
    /// Declared handlers: the runtime's checking function, and the handler.
    pub(crate) hooks: Vec<(Ident, Path)>,
}

/// Collects errors so that all of them are reported at once.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(existing) => existing.combine(error),
            None => self.0 = Some(error),
        }
    }

    fn at(&mut self, span: Span, message: impl std::fmt::Display) {
        self.push(syn::Error::new(span, message));
    }

    pub(crate) fn finish<T>(self, value: T) -> Result<T, syn::Error> {
        match self.0 {
            Some(error) => Err(error),
            None => Ok(value),
        }
    }
}

/// An argument that may be given once, remembering where it was given.
struct Once<T> {
    value: Option<(T, Span)>,
}

impl<T> Once<T> {
    fn new() -> Self {
        Once { value: None }
    }

    fn set(&mut self, key: &Ident, value: T, errors: &mut Errors) {
        if self.value.is_some() {
            errors.at(
                key.span(),
                format!("`{key}` is set more than once; keep one of them"),
            );
        } else {
            self.value = Some((value, key.span()));
        }
    }

    fn get(self) -> Option<T> {
        self.value.map(|(value, _)| value)
    }

    fn span(&self) -> Option<Span> {
        self.value.as_ref().map(|(_, span)| *span)
    }
}

/// Checks the arguments and the function, returning the configuration or
/// every error found.
pub(crate) fn validate(args: RawArgs, function: &ItemFn) -> Result<Config, syn::Error> {
    let mut errors = Errors::default();
    check_function(function, &mut errors);

    let mut krate = Once::new();
    let mut manager = Once::new();
    let mut isolation = Once::new();
    let mut read_only = Once::new();
    let mut propagation = Once::new();
    let mut runs_without_transaction = false;
    let mut name = Once::new();
    let mut retry: Once<Option<u32>> = Once::new();
    let mut backoff = Once::new();
    let mut max_backoff = Once::new();
    let mut multiplier = Once::new();
    let mut predicate = Once::new();
    let mut timeout = Once::new();
    let mut resolve = Once::new();
    let mut hook_lists: Vec<Once<Vec<Path>>> = HOOK_PHASES.iter().map(|_| Once::new()).collect();

    for RawArg { key, value } in args.0 {
        let key_text = key.to_string();
        match key_text.as_str() {
            "manager" => match value {
                Some(RawValue::Expr(expr)) => manager.set(&key, expr, &mut errors),
                Some(RawValue::Lit(lit)) => manager.set(
                    &key,
                    Expr::Lit(syn::ExprLit {
                        attrs: Vec::new(),
                        lit,
                    }),
                    &mut errors,
                ),
                Some(list @ RawValue::List { .. }) => errors.at(
                    list.span(),
                    "`manager` takes one expression that evaluates to a `TxManager`, for example `manager = DB`",
                ),
                None => errors.at(
                    key.span(),
                    "`manager` needs a value, for example `manager = DB` or `manager = self.db`",
                ),
            },
            "isolation" => {
                if let Some(text) =
                    string_value(&key, value, "isolation = \"serializable\"", &mut errors)
                {
                    match lookup(&ISOLATIONS, &text.value()) {
                        Some(variant) => isolation.set(&key, variant, &mut errors),
                        None => errors.at(
                            text.span(),
                            format!(
                                "unknown isolation level `{}`; expected one of {} (the SQL spellings, such as \"REPEATABLE READ\", work too)",
                                text.value(),
                                list(&ISOLATIONS)
                            ),
                        ),
                    }
                }
            }
            "read_only" => match value {
                None => read_only.set(&key, true, &mut errors),
                Some(RawValue::Lit(Lit::Bool(flag))) => {
                    read_only.set(&key, flag.value, &mut errors)
                }
                Some(other) => errors.at(
                    other.span(),
                    "`read_only` takes `true` or `false`, for example `read_only = true`",
                ),
            },
            "propagation" => {
                if let Some(text) =
                    string_value(&key, value, "propagation = \"requires_new\"", &mut errors)
                {
                    match lookup(&PROPAGATIONS, &text.value()) {
                        Some(variant) => {
                            runs_without_transaction |= variant == "Never";
                            propagation.set(&key, variant, &mut errors);
                        }
                        None => errors.at(
                            text.span(),
                            format!(
                                "unknown propagation `{}`; expected one of {}",
                                text.value(),
                                list(&PROPAGATIONS)
                            ),
                        ),
                    }
                }
            }
            "name" => {
                if let Some(text) = string_value(&key, value, "name = \"checkout\"", &mut errors) {
                    if text.value().trim().is_empty() {
                        errors.at(text.span(), "`name` cannot be empty");
                    } else {
                        name.set(&key, text, &mut errors);
                    }
                }
            }
            "crate" => set_crate_path(&key, value, &mut krate, &mut errors),
            "retry" => match value {
                None => retry.set(&key, None, &mut errors),
                Some(RawValue::Lit(Lit::Int(count))) => match count.base10_parse::<u32>() {
                    Ok(0) => errors.at(count.span(), "`retry = 0` would never retry: remove `retry`, or give the number of retries after the first attempt"),
                    Ok(count) => retry.set(&key, Some(count), &mut errors),
                    Err(_) => errors.at(count.span(), "`retry` takes a whole number of retries, for example `retry = 3`"),
                },
                Some(other) => errors.at(other.span(), "`retry` takes a whole number of retries, for example `retry = 3`, or stands alone to use the manager's policy"),
            },
            "backoff" | "max_backoff" | "timeout" => {
                let example = format!("{key_text} = \"{}\"", if key_text == "timeout" { "30s" } else { "5ms" });
                if let Some(text) = string_value(&key, value, &example, &mut errors) {
                    match parse_duration(&text.value()) {
                        Ok(duration) => match key_text.as_str() {
                            "backoff" => backoff.set(&key, (duration, text.span()), &mut errors),
                            "max_backoff" => max_backoff.set(&key, (duration, text.span()), &mut errors),
                            _ => timeout.set(&key, duration, &mut errors),
                        },
                        Err(problem) => errors.at(text.span(), format!("`{key_text}`: {problem}")),
                    }
                }
            }
            "backoff_multiplier" => match value {
                Some(RawValue::Lit(Lit::Float(number))) => match number.base10_parse::<f64>() {
                    Ok(factor) if factor >= 1.0 && factor.is_finite() => multiplier.set(&key, factor, &mut errors),
                    _ => errors.at(number.span(), "`backoff_multiplier` must be a number of at least 1, for example `backoff_multiplier = 2.0`"),
                },
                Some(RawValue::Lit(Lit::Int(number))) => match number.base10_parse::<u32>() {
                    Ok(factor) if factor >= 1 => multiplier.set(&key, f64::from(factor), &mut errors),
                    _ => errors.at(number.span(), "`backoff_multiplier` must be a number of at least 1, for example `backoff_multiplier = 2.0`"),
                },
                Some(other) => errors.at(other.span(), "`backoff_multiplier` takes a number, for example `backoff_multiplier = 2.0`"),
                None => errors.at(key.span(), "`backoff_multiplier` needs a value, for example `backoff_multiplier = 2.0`"),
            },
            "retry_if" => match value {
                Some(RawValue::Expr(expr)) => predicate.set(&key, expr, &mut errors),
                Some(other) => errors.at(other.span(), "`retry_if` takes a function `fn(&covet_txn::Failure<'_>) -> bool`, for example `retry_if = retry_unique_violations`"),
                None => errors.at(key.span(), "`retry_if` needs a function, for example `retry_if = retry_unique_violations`"),
            },
            phase if HOOK_PHASES.iter().any(|(key, _)| *key == phase) => {
                let index = HOOK_PHASES.iter().position(|(key, _)| *key == phase).unwrap_or_default();
                match value {
                    Some(RawValue::List { items, .. }) => {
                        hook_lists[index].set(&key, items.into_iter().collect(), &mut errors);
                    }
                    _ => errors.at(
                        key.span(),
                        format!("`{phase}` takes a list of handlers declared with #[{phase}], for example `{phase} = [send_receipt, audit]`"),
                    ),
                }
            }
            "resolve_ambiguous_commit" => match value {
                None => resolve.set(&key, true, &mut errors),
                Some(RawValue::Lit(Lit::Bool(flag))) => resolve.set(&key, flag.value, &mut errors),
                Some(other) => errors.at(other.span(), "`resolve_ambiguous_commit` takes `true` or `false`"),
            },
            _ => errors.at(key.span(), unknown_key_message(&key_text)),
        }
    }

    let wants_retry = retry.span().is_some();
    for (given, key) in [
        (backoff.span(), "backoff"),
        (max_backoff.span(), "max_backoff"),
        (multiplier.span(), "backoff_multiplier"),
        (predicate.span(), "retry_if"),
    ] {
        if let Some(span) = given.filter(|_| !wants_retry) {
            errors.at(span, format!("`{key}` has no effect without `retry`: add `retry = 3` (or bare `retry` for the manager's policy)"));
        }
    }
    let backoff = backoff.get();
    let max_backoff = max_backoff.get();
    if let (Some((low, _)), Some((high, high_span))) = (backoff, max_backoff)
        && high < low
    {
        errors.at(
            high_span,
            "`max_backoff` is shorter than `backoff`: the cap must be at least the first wait",
        );
    }
    let retry = retry.get().map(|retries| Retry {
        retries,
        backoff: backoff.map(|(duration, _)| duration),
        max_backoff: max_backoff.map(|(duration, _)| duration),
        multiplier: multiplier.get(),
        predicate: predicate.get(),
        arguments: reusable_arguments(function, &mut errors),
    });

    if runs_without_transaction {
        for (given, what) in [
            (isolation.span(), "an isolation level"),
            (read_only.span(), "an access mode"),
        ] {
            if let Some(span) = given {
                errors.at(span, format!("`propagation = \"never\"` runs without a transaction, so {what} has no effect; remove one of them"));
            }
        }
    }

    errors.finish(Config {
        krate: crate_path_or_default(krate),
        manager: manager.get(),
        isolation: isolation
            .get()
            .map(|variant| Ident::new(variant, Span::call_site())),
        read_only: read_only.get(),
        propagation: propagation
            .get()
            .map(|variant| Ident::new(variant, Span::call_site())),
        name: name.get(),
        retry,
        timeout: timeout.get(),
        resolve_ambiguous_commit: resolve.get(),
        hooks: HOOK_PHASES
            .iter()
            .zip(hook_lists)
            .flat_map(|((_, check), list)| {
                let check = Ident::new(check, Span::call_site());
                list.get()
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |handler| (check.clone(), handler))
            })
            .collect(),
    })
}

/// Checks the arguments of a hook attribute, `#[{phase}(...)]`, and returns
/// the path its declaration reaches the runtime through. Problems go to
/// `errors`, with those of the handler's signature.
pub(crate) fn validate_hook_args(phase: &str, args: RawArgs, errors: &mut Errors) -> Path {
    let mut krate = Once::new();
    for RawArg { key, value } in args.0 {
        let key_text = key.to_string();
        match key_text.as_str() {
            "crate" => set_crate_path(&key, value, &mut krate, errors),
            // Said apart from a misspelling: the user knows the argument,
            // from the other attribute.
            setting if KEYS.contains(&setting) => errors.at(
                key.span(),
                format!("`{setting}` is an argument of #[transactional], not of #[{phase}], which takes only `crate = \"my_covet\"`"),
            ),
            _ => errors.at(
                key.span(),
                match nearest_key(&key_text, &HOOK_KEYS) {
                    Some(candidate) => format!("unknown argument `{key_text}`; did you mean `{candidate}`?"),
                    None => format!("unknown argument `{key_text}`; #[{phase}] takes only `crate = \"my_covet\"`, the name the covet-txn dependency is renamed to"),
                },
            ),
        }
    }
    crate_path_or_default(krate)
}

/// `crate = "my_covet"`: the path generated code reaches the runtime
/// through, for a crate that renamed its covet-txn dependency.
fn set_crate_path(
    key: &Ident,
    value: Option<RawValue>,
    krate: &mut Once<Path>,
    errors: &mut Errors,
) {
    if let Some(text) = string_value(key, value, "crate = \"my_covet\"", errors) {
        match text.parse::<Path>() {
            Ok(path) => krate.set(key, path, errors),
            Err(_) => errors.at(text.span(), format!("`{}` is not a path; give the name the covet-txn dependency is renamed to, for example `crate = \"my_covet\"`", text.value())),
        }
    }
}

fn crate_path_or_default(krate: Once<Path>) -> Path {
    krate
        .get()
        .unwrap_or_else(|| syn::parse_quote!(::covet_txn))
}

/// The arguments each attempt of a retrying function re-uses. An argument
/// that cannot be re-used is an error naming it.
fn reusable_arguments(function: &ItemFn, errors: &mut Errors) -> Vec<ReusedArgument> {
    let mut arguments = Vec::new();
    for input in &function.sig.inputs {
        match input {
            FnArg::Receiver(receiver) => {
                if receiver.reference.is_none() {
                    errors.at(
                        receiver.self_token.span,
                        "`retry` runs the body once per attempt, but `self` is taken by value and is gone after the first: take `&self` or `&mut self`",
                    );
                }
            }
            FnArg::Typed(typed) => {
                let binding = match &*typed.pat {
                    Pat::Ident(binding) if binding.by_ref.is_none() && binding.subpat.is_none() => {
                        binding
                    }
                    Pat::Wild(_) => continue,
                    other => {
                        errors.at(
                            syn::spanned::Spanned::span(other),
                            "`retry` re-uses every argument for each attempt: bind this argument to a plain name",
                        );
                        continue;
                    }
                };
                let reuse = match &*typed.ty {
                    Type::Reference(reference) if reference.mutability.is_some() => Reuse::Reborrow,
                    // A shared reference is `Copy`: each attempt uses it as
                    // it is, unless the body may reassign it.
                    Type::Reference(_) if binding.mutability.is_none() => continue,
                    Type::Reference(_) => Reuse::Copy,
                    _ => Reuse::Clone,
                };
                arguments.push(ReusedArgument {
                    // syn's tokens are not `Clone` without its "clone-impls".
                    mutability: binding
                        .mutability
                        .as_ref()
                        .map(|token| Token![mut](token.span)),
                    ident: binding.ident.clone(),
                    reuse,
                });
            }
        }
    }
    arguments
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

fn check_function(function: &ItemFn, errors: &mut Errors) {
    let signature = &function.sig;
    if signature.asyncness.is_none() {
        errors.at(
            signature.fn_token.span,
            "#[transactional] works on `async fn` only: write `async fn`",
        );
    }
    match &signature.output {
        ReturnType::Default => errors.at(
            signature.paren_token.span.join(),
            "a #[transactional] function must return `Result<T, E>` with `E: From<covet_txn::Error>`, so that a failure can roll the transaction back: add `-> Result<(), MyError>`",
        ),
        ReturnType::Type(_, returned) if !is_result(returned) => errors.at(
            syn::spanned::Spanned::span(returned),
            "a #[transactional] function must return `Result<T, E>` with `E: From<covet_txn::Error>`, so that a failure can roll the transaction back",
        ),
        ReturnType::Type(..) => {}
    }
}

/// Whether the type is spelled as a `Result` (or an alias ending in `Result`,
/// such as `anyhow::Result<T>` or `AppResult<T>`).
fn is_result(returned: &Type) -> bool {
    match returned {
        Type::Path(path) => path
            .path
            .segments
            .last()
            .is_some_and(|segment| segment.ident.to_string().ends_with("Result")),
        Type::Group(group) => is_result(&group.elem),
        Type::Paren(paren) => is_result(&paren.elem),
        _ => false,
    }
}

fn string_value(
    key: &Ident,
    value: Option<RawValue>,
    example: &str,
    errors: &mut Errors,
) -> Option<LitStr> {
    match value {
        Some(RawValue::Lit(Lit::Str(text))) => Some(text),
        Some(other) => {
            errors.at(
                other.span(),
                format!("`{key}` takes a string, for example `{example}`"),
            );
            None
        }
        None => {
            errors.at(
                key.span(),
                format!("`{key}` needs a value, for example `{example}`"),
            );
            None
        }
    }
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

fn list(table: &[(&str, &str)]) -> String {
    table
        .iter()
        .map(|(name, _)| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn unknown_key_message(key: &str) -> String {
    match nearest_key(key, &KEYS) {
        Some(candidate) => {
            format!("unknown argument `{key}`; did you mean `{candidate}`?")
        }
        None => format!(
            "unknown argument `{key}`; expected one of {}",
            KEYS.iter()
                .map(|key| format!("`{key}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The argument in `keys` a misspelt `key` most likely means, if any is
/// close enough.
fn nearest_key(key: &str, keys: &[&'static str]) -> Option<&'static str> {
    keys.iter()
        .map(|candidate| (edit_distance(key, candidate), *candidate))
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
