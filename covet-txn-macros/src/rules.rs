//! What `#[transactional]`'s arguments mean together: its key table, the
//! rules between arguments (a backoff without `retry`, an isolation level on
//! a call that runs without a transaction, ...), and the [`Config`] that
//! expansion reads.

use std::time::Duration;

use syn::{Expr, Ident, ItemFn, LitStr, Path};

use crate::args::{Args, Given, Key, Kind, Value};
use crate::errors::Errors;
use crate::item::{self, ReusedArgument};
use crate::phases::{self, Phase};

const ISOLATIONS: [(&str, &str); 4] = [
    ("read_uncommitted", "ReadUncommitted"),
    ("read_committed", "ReadCommitted"),
    ("repeatable_read", "RepeatableRead"),
    ("serializable", "Serializable"),
];

const PROPAGATIONS: [(&str, &str); 7] = [
    ("nested", "Nested"),
    ("required", "Required"),
    ("requires_new", "RequiresNew"),
    ("mandatory", "Mandatory"),
    ("never", "Never"),
    ("supports", "Supports"),
    ("not_supported", "NotSupported"),
];

const CONTENTIONS: [(&str, &str); 2] = [("adaptive", "Adaptive"), ("off", "Off")];

/// Keys one call can declare (the runtime's `MAX_KEYS`).
const MAX_KEYS: usize = 8;

const FLAG: &str = "`true` or `false`";
const STRING: &str = "a string";
const CRATE: &str = "a string naming the path covet-txn is reached at, such as the name the dependency is renamed to";

/// Every argument `#[transactional]` takes.
pub(crate) const TRANSACTIONAL_KEYS: &[Key] = &[
    Key {
        name: "isolation",
        kind: Kind::Choice {
            what: "isolation level",
            values: &ISOLATIONS,
            also: " (the SQL spellings, such as \"REPEATABLE READ\", work too)",
        },
        takes: STRING,
        example: "isolation = \"serializable\"",
    },
    Key {
        name: "read_only",
        kind: Kind::Flag,
        takes: FLAG,
        example: "read_only = true",
    },
    Key {
        name: "propagation",
        kind: Kind::Choice {
            what: "propagation",
            values: &PROPAGATIONS,
            also: "",
        },
        takes: STRING,
        example: "propagation = \"requires_new\"",
    },
    Key {
        name: "durable",
        kind: Kind::Flag,
        takes: FLAG,
        example: "durable = true",
    },
    Key {
        name: "manager",
        kind: Kind::Expression,
        takes: "one expression that evaluates to a `TxManager`",
        example: "manager = DB",
    },
    Key {
        name: "two_phase",
        kind: Kind::Expression,
        takes: "one expression that evaluates to a `covet_txn::two_phase::TwoPhase` (or a `&`, `Arc` or `OnceLock` of one)",
        example: "two_phase = SHOP",
    },
    Key {
        name: "name",
        kind: Kind::Text,
        takes: STRING,
        example: "name = \"checkout\"",
    },
    Key {
        name: "crate",
        kind: Kind::PathText,
        takes: CRATE,
        example: "crate = \"my_covet\"",
    },
    Key {
        name: "retry",
        kind: Kind::Retries,
        takes: "a whole number of retries after the first attempt, or stands alone for the manager's policy",
        example: "retry = 3",
    },
    Key {
        name: "backoff",
        kind: Kind::Duration,
        takes: STRING,
        example: "backoff = \"5ms\"",
    },
    Key {
        name: "max_backoff",
        kind: Kind::Duration,
        takes: STRING,
        example: "max_backoff = \"500ms\"",
    },
    Key {
        name: "backoff_multiplier",
        kind: Kind::Factor,
        takes: "a number",
        example: "backoff_multiplier = 2.0",
    },
    Key {
        name: "retry_if",
        kind: Kind::Expression,
        takes: "a function `fn(&covet_txn::Failure<'_>) -> bool`",
        example: "retry_if = retry_unique_violations",
    },
    Key {
        name: "timeout",
        kind: Kind::Duration,
        takes: STRING,
        example: "timeout = \"30s\"",
    },
    Key {
        name: "resolve_ambiguous_commit",
        kind: Kind::Flag,
        takes: FLAG,
        example: "resolve_ambiguous_commit = true",
    },
    Key {
        name: "contention",
        kind: Kind::Choice {
            what: "contention setting",
            values: &CONTENTIONS,
            also: "",
        },
        takes: STRING,
        example: "contention = \"adaptive\"",
    },
    Key {
        name: "conflict_key",
        kind: Kind::Expression,
        takes: "an expression over the arguments whose type is `Hash`, or a list of them in brackets",
        example: "conflict_key = [from, to]",
    },
    Key {
        name: "commit_on",
        kind: Kind::Expression,
        takes: "a function `fn(&E) -> bool` over the function's error type",
        example: "commit_on = is_refusal",
    },
    Key {
        name: "before_commit",
        kind: Kind::Handlers,
        takes: "a list of handlers declared with #[before_commit]",
        example: "before_commit = [check_stock]",
    },
    Key {
        name: "on_commit",
        kind: Kind::Handlers,
        takes: "a list of handlers declared with #[on_commit]",
        example: "on_commit = [send_receipt, audit]",
    },
    Key {
        name: "before_rollback",
        kind: Kind::Handlers,
        takes: "a list of handlers declared with #[before_rollback]",
        example: "before_rollback = [note]",
    },
    Key {
        name: "on_rollback",
        kind: Kind::Handlers,
        takes: "a list of handlers declared with #[on_rollback]",
        example: "on_rollback = [alert]",
    },
];

/// The keys the hook attributes (`#[on_commit]` and the others) take.
pub(crate) const HOOK_KEYS: &[Key] = &[Key {
    name: "crate",
    kind: Kind::PathText,
    takes: CRATE,
    example: "crate = \"my_covet\"",
}];

/// The keys `#[covet_txn::test]` takes.
pub(crate) const TEST_KEYS: &[Key] = &[
    Key {
        name: "manager",
        kind: Kind::Expression,
        takes: "a future that resolves to a `TxManager`, such as a call of an `async fn` that connects",
        example: "manager = test_db()",
    },
    Key {
        name: "crate",
        kind: Kind::PathText,
        takes: CRATE,
        example: "crate = \"my_covet\"",
    },
];

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

/// What `#[transactional]` was asked for, checked.
pub(crate) struct Config {
    /// The path the generated code reaches the runtime through.
    pub(crate) krate: Path,
    pub(crate) manager: Option<Expr>,
    /// The two-phase coordinator whose participants the call runs on.
    pub(crate) two_phase: Option<Expr>,
    /// The runtime's `Isolation` variant.
    pub(crate) isolation: Option<Ident>,
    pub(crate) read_only: Option<bool>,
    /// The runtime's `Propagation` variant.
    pub(crate) propagation: Option<Ident>,
    pub(crate) durable: bool,
    pub(crate) name: Option<LitStr>,
    pub(crate) retry: Option<Retry>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) resolve_ambiguous_commit: Option<bool>,
    pub(crate) commit_on: Option<Expr>,
    /// The runtime's `Contention` variant.
    pub(crate) contention: Option<Ident>,
    /// Declared conflict keys, each an expression.
    pub(crate) conflict_keys: Vec<Expr>,
    /// Declared handlers, with the phase each is listed under.
    pub(crate) hooks: Vec<(&'static Phase, Path)>,
}

/// The path generated code reaches the runtime through.
pub(crate) fn crate_path(args: &mut Args) -> Path {
    match args.take("crate").map(|given| given.value) {
        Some(Value::Path(path)) => path,
        _ => syn::parse_quote!(::covet_txn),
    }
}

/// Checks `#[transactional]`'s arguments against each other and the
/// function, and gathers them.
pub(crate) fn transactional(mut args: Args, function: &ItemFn, errors: &mut Errors) -> Config {
    item::check_transactional(function, errors);
    let retry_given = args.given("retry").is_some();
    for key in ["backoff", "max_backoff", "backoff_multiplier", "retry_if"] {
        if let Some(given) = args.given(key).filter(|_| !retry_given) {
            errors.at(
                given.key,
                format!("`{key}` has no effect without `retry`: add `retry = 3` (or bare `retry` for the manager's policy)"),
            );
        }
    }
    if let (Some(Value::Duration(low)), Some(high)) = (
        args.given("backoff").map(|given| &given.value),
        args.given("max_backoff"),
    ) && matches!(high.value, Value::Duration(high) if high < *low)
    {
        errors.at(
            high.span,
            "`max_backoff` is shorter than `backoff`: the cap must be at least the first wait",
        );
    }
    check_propagation(&args, errors);
    check_two_phase(&args, errors);
    let conflict_keys = conflict_keys(args.take("conflict_key"), errors);

    let krate = crate_path(&mut args);
    let flag = |given: Option<Given>| match given.map(|given| given.value) {
        Some(Value::Flag(flag)) => Some(flag),
        _ => None,
    };
    let variant = |given: Option<Given>| match given.map(|given| given.value) {
        Some(Value::Choice(variant)) => Some(Ident::new(variant, proc_macro2::Span::call_site())),
        _ => None,
    };
    let expression = |given: Option<Given>| match given.map(|given| given.value) {
        Some(Value::Expression(expr)) => Some(expr),
        _ => None,
    };
    let duration = |given: Option<Given>| match given.map(|given| given.value) {
        Some(Value::Duration(duration)) => Some(duration),
        _ => None,
    };
    let retry = match args.take("retry").map(|given| given.value) {
        Some(Value::Retries(retries)) => Some(Retry {
            retries,
            backoff: duration(args.take("backoff")),
            max_backoff: duration(args.take("max_backoff")),
            multiplier: match args.take("backoff_multiplier").map(|given| given.value) {
                Some(Value::Factor(factor)) => Some(factor),
                _ => None,
            },
            predicate: expression(args.take("retry_if")),
            arguments: item::reused_arguments(function, errors),
        }),
        _ => None,
    };
    let mut hooks = Vec::new();
    for phase in &phases::PHASES {
        if let Some(Value::Handlers(handlers)) = args.take(phase.attribute).map(|given| given.value)
        {
            hooks.extend(handlers.into_iter().map(|handler| (phase, handler)));
        }
    }
    Config {
        krate,
        manager: expression(args.take("manager")),
        two_phase: expression(args.take("two_phase")),
        isolation: variant(args.take("isolation")),
        read_only: flag(args.take("read_only")),
        propagation: variant(args.take("propagation")),
        durable: flag(args.take("durable")).unwrap_or(false),
        name: match args.take("name").map(|given| given.value) {
            Some(Value::Text(text)) => Some(text),
            _ => None,
        },
        retry,
        timeout: duration(args.take("timeout")),
        resolve_ambiguous_commit: flag(args.take("resolve_ambiguous_commit")),
        commit_on: expression(args.take("commit_on")),
        contention: variant(args.take("contention")),
        conflict_keys,
        hooks,
    }
}

/// `conflict_key = key` or `conflict_key = [key, ...]`: one to eight keys.
fn conflict_keys(given: Option<Given>, errors: &mut Errors) -> Vec<Expr> {
    let Some(Given {
        value: Value::Expression(expr),
        span,
        ..
    }) = given
    else {
        return Vec::new();
    };
    let keys: Vec<Expr> = match expr {
        Expr::Array(list) => list.elems.into_iter().collect(),
        single => vec![single],
    };
    if keys.is_empty() {
        errors.at(span, "`conflict_key = []` declares no key: name at least one, such as `conflict_key = [from, to]`, or remove it");
    } else if keys.len() > MAX_KEYS {
        errors.at(span, format!("`conflict_key` takes at most {MAX_KEYS} keys, found {}: declare the ones most calls share", keys.len()));
    }
    keys
}

/// A call that runs without a transaction takes no setting of one, and a
/// durable call must be able to begin the transaction it commits for good.
fn check_propagation(args: &Args, errors: &mut Errors) {
    let Some(Given {
        value: Value::Choice(propagation),
        ..
    }) = args.given("propagation")
    else {
        return;
    };
    let spelled = PROPAGATIONS
        .iter()
        .find(|(_, variant)| variant == propagation)
        .map_or("", |(name, _)| *name);
    let without_transaction = matches!(*propagation, "Never" | "NotSupported");
    if without_transaction {
        for (key, what) in [
            ("isolation", "an isolation level"),
            ("read_only", "an access mode"),
            ("commit_on", "`commit_on`"),
        ] {
            if let Some(given) = args.given(key) {
                errors.at(
                    given.key,
                    format!("`propagation = \"{spelled}\"` runs without a transaction, so {what} has no effect; remove one of them"),
                );
            }
        }
    }
    if !matches!(*propagation, "Nested" | "Required" | "RequiresNew") {
        for key in ["conflict_key", "contention"] {
            if let Some(given) = args.given(key) {
                errors.at(
                    given.key,
                    format!("`{key}` has no effect with `propagation = \"{spelled}\"`: only a call that begins a transaction is admitted; remove one of them"),
                );
            }
        }
    }
    if let Some(durable) = args
        .given("durable")
        .filter(|given| matches!(given.value, Value::Flag(true)))
        && matches!(
            *propagation,
            "Never" | "NotSupported" | "Supports" | "Mandatory"
        )
    {
        errors.at(
            durable.key,
            format!("`durable` calls must begin the transaction they commit for good, which `propagation = \"{spelled}\"` never does; remove one of them"),
        );
    }
}

/// A two-phase call runs on its coordinator's participants, each in a
/// branch it begins: what picks one manager, joins a running transaction or
/// hooks a single transaction has no meaning there.
fn check_two_phase(args: &Args, errors: &mut Errors) {
    if args.given("two_phase").is_none() {
        return;
    }
    for (key, why) in [
        ("manager", "the coordinator's participants are its managers"),
        (
            "propagation",
            "it always begins a branch on every participant",
        ),
        ("durable", "it always begins a branch on every participant"),
        (
            "read_only",
            "its branches are prepared, which read-only XA branches are not",
        ),
        (
            "resolve_ambiguous_commit",
            "its decision log resolves every outcome",
        ),
        ("commit_on", "an error rolls every branch back"),
        (
            "before_commit",
            "hooks are registered in the body (covet_txn::before_commit)",
        ),
        (
            "on_commit",
            "hooks are registered in the body (covet_txn::on_commit)",
        ),
        (
            "before_rollback",
            "hooks are registered in the body (covet_txn::before_rollback)",
        ),
        (
            "on_rollback",
            "hooks are registered in the body (covet_txn::on_rollback)",
        ),
    ] {
        if let Some(given) = args.given(key) {
            errors.at(
                given.key,
                format!("`{key}` does not go with `two_phase`: {why}; remove it"),
            );
        }
    }
}
