//! The arguments of `#[background_job(...)]`.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, ExprPath, ExprUnary, Lit, LitStr, Meta, Token, UnOp};

use crate::duration;

/// Every key the attribute accepts, in the order error messages list them.
pub(crate) const KEYS: &str = "`name`, `queue`, `priority`, `max_attempts`, `backoff`, \
    `max_backoff`, `timeout`, `transaction`, `unique`, `concurrency_key`, `max_concurrent`, \
    `rate`, `crate`";

/// The parsed, validated arguments.
#[derive(Default)]
pub(crate) struct Args {
    pub(crate) name: Option<String>,
    pub(crate) queue: Option<String>,
    pub(crate) priority: Option<i16>,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) backoff_micros: Option<u64>,
    pub(crate) max_backoff_micros: Option<u64>,
    /// An async job's deadline: microseconds, as written, and where.
    pub(crate) timeout: Option<(u64, String, Span)>,
    /// The `transaction` flag, with its span for errors.
    pub(crate) transaction: Option<Span>,
    /// The `unique` flag: at most one job with the same payload waits.
    pub(crate) unique: bool,
    /// The argument whose value is each job's concurrency key, and where
    /// it was named.
    pub(crate) concurrency_key: Option<(String, Span)>,
    pub(crate) max_concurrent: Option<u32>,
    /// At most `.0` starts per `.1` milliseconds.
    pub(crate) rate: Option<(u32, u32)>,
    pub(crate) krate: Option<syn::Path>,
}

/// Collects errors so the user sees all of them at once.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    pub(crate) fn spanned(&mut self, tokens: impl ToTokens, message: impl std::fmt::Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    pub(crate) fn into_result(self) -> Result<(), syn::Error> {
        self.0.map_or(Ok(()), Err)
    }
}

/// One key's value; a second occurrence of the key is an error.
struct Slot<T> {
    key: &'static str,
    value: Option<T>,
}

impl<T> Slot<T> {
    fn new(key: &'static str) -> Self {
        Slot { key, value: None }
    }

    fn set(&mut self, errors: &mut Errors, tokens: &Meta, value: Result<T, String>) {
        if self.value.is_some() {
            errors.spanned(
                tokens.path(),
                format!(
                    "duplicate `{}` in #[background_job]; give each key once",
                    self.key
                ),
            );
            return;
        }
        match value {
            Ok(value) => self.value = Some(value),
            Err(message) => errors.spanned(tokens, message),
        }
    }
}

/// Parses the attribute's arguments, reporting every mistake.
pub(crate) fn parse(args: TokenStream, errors: &mut Errors) -> Args {
    let metas = match Punctuated::<Meta, Token![,]>::parse_terminated.parse2(args) {
        Ok(metas) => metas,
        Err(error) => {
            errors.push(syn::Error::new(
                error.span(),
                format!(
                    "{error}; #[background_job] takes `key = value` pairs separated by commas, \
                     with the keys {KEYS}"
                ),
            ));
            return Args::default();
        }
    };

    let mut name = Slot::new("name");
    let mut queue = Slot::new("queue");
    let mut priority = Slot::new("priority");
    let mut max_attempts = Slot::new("max_attempts");
    let mut backoff = Slot::new("backoff");
    let mut max_backoff = Slot::new("max_backoff");
    let mut timeout = Slot::new("timeout");
    let mut transaction = Slot::new("transaction");
    let mut unique = Slot::new("unique");
    let mut concurrency_key = Slot::new("concurrency_key");
    let mut max_concurrent = Slot::new("max_concurrent");
    let mut rate = Slot::new("rate");
    let mut krate = Slot::new("crate");

    for meta in &metas {
        let key = meta.path().to_token_stream().to_string().replace(' ', "");
        match key.as_str() {
            "name" => name.set(
                errors,
                meta,
                string(meta).and_then(|s| identifier(&s, "name")),
            ),
            "queue" => queue.set(
                errors,
                meta,
                string(meta).and_then(|s| identifier(&s, "queue")),
            ),
            "priority" => priority.set(errors, meta, integer(meta).and_then(priority_value)),
            "max_attempts" => {
                max_attempts.set(errors, meta, integer(meta).and_then(max_attempts_value))
            }
            "backoff" => backoff.set(errors, meta, duration_value(meta)),
            "max_backoff" => max_backoff.set(errors, meta, duration_value(meta)),
            "timeout" => timeout.set(
                errors,
                meta,
                duration_value(meta).and_then(|micros| {
                    let written = string(meta)?;
                    Ok((micros, written, syn::spanned::Spanned::span(meta)))
                }),
            ),
            "transaction" => transaction.set(errors, meta, flag(meta)),
            "unique" => unique.set(errors, meta, flag(meta)),
            "concurrency_key" => concurrency_key.set(
                errors,
                meta,
                string(meta).map(|s| (s, syn::spanned::Spanned::span(meta))),
            ),
            "max_concurrent" => {
                max_concurrent.set(errors, meta, integer(meta).and_then(max_concurrent_value))
            }
            "rate" => rate.set(errors, meta, string(meta).and_then(|s| rate_value(&s))),
            "crate" => krate.set(errors, meta, crate_path(meta)),
            _ => errors.spanned(
                meta.path(),
                format!("unknown key `{key}` in #[background_job]; the valid keys are {KEYS}"),
            ),
        }
    }

    Args {
        name: name.value,
        queue: queue.value,
        priority: priority.value,
        max_attempts: max_attempts.value,
        backoff_micros: backoff.value,
        max_backoff_micros: max_backoff.value,
        timeout: timeout.value,
        transaction: transaction.value.flatten(),
        unique: unique.value.flatten().is_some(),
        concurrency_key: concurrency_key.value,
        max_concurrent: max_concurrent.value,
        rate: rate.value,
        krate: krate.value,
    }
}

fn key_of(meta: &Meta) -> String {
    meta.path().to_token_stream().to_string().replace(' ', "")
}

fn value_of<'a>(meta: &'a Meta, expected: &str) -> Result<&'a Expr, String> {
    match meta {
        Meta::NameValue(nv) => Ok(&nv.value),
        _ => Err(format!("expected `{} = {expected}`", key_of(meta))),
    }
}

fn string(meta: &Meta) -> Result<String, String> {
    match value_of(meta, "\"...\"")? {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Ok(s.value()),
        _ => Err(format!(
            "`{}` takes a string: `{} = \"...\"`",
            key_of(meta),
            key_of(meta)
        )),
    }
}

/// Job and queue names: stored in rows and typed by operators, so kept plain.
fn identifier(value: &str, what: &str) -> Result<String, String> {
    const RULE: &str = "use 1 to 100 ASCII letters, digits, `_`, `-`, `.` or `:`";
    if value.is_empty() {
        return Err(format!("the job's {what} is empty; {RULE}"));
    }
    if value.len() > 100 {
        return Err(format!(
            "the job's {what} is {} characters long; {RULE}",
            value.len()
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
    {
        return Err(format!(
            "the job's {what} `{value}` contains {bad:?}; {RULE}"
        ));
    }
    Ok(value.to_owned())
}

/// An integer literal, possibly negative, as `i128`.
fn integer(meta: &Meta) -> Result<i128, String> {
    let expected = || {
        format!(
            "`{}` takes a whole number: `{} = 5`",
            key_of(meta),
            key_of(meta)
        )
    };
    let (negative, lit) = match value_of(meta, "5")? {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => (false, i),
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_),
            expr,
            ..
        }) => match &**expr {
            Expr::Lit(ExprLit {
                lit: Lit::Int(i), ..
            }) => (true, i),
            _ => return Err(expected()),
        },
        _ => return Err(expected()),
    };
    let value: i128 = lit.base10_parse().map_err(|_| expected())?;
    Ok(if negative { -value } else { value })
}

fn priority_value(value: i128) -> Result<i16, String> {
    i16::try_from(value).map_err(|_| {
        format!(
            "priority {value} is out of range; use {} to {} (higher runs first, default 0)",
            i16::MIN,
            i16::MAX
        )
    })
}

fn max_attempts_value(value: i128) -> Result<u32, String> {
    match u32::try_from(value) {
        Ok(0) | Err(_) => Err(format!(
            "max_attempts {value} is out of range; use 1 to {} (or leave it out to retry forever)",
            u32::MAX
        )),
        Ok(n) => Ok(n),
    }
}

/// Kept in step with `skiplock::MAX_CONCURRENT_LIMIT`.
const MAX_CONCURRENT_LIMIT: u32 = 1_000;

fn max_concurrent_value(value: i128) -> Result<u32, String> {
    match u32::try_from(value) {
        Ok(n @ 1..=MAX_CONCURRENT_LIMIT) => Ok(n),
        _ => Err(format!(
            "max_concurrent {value} is out of range; use 1 to {MAX_CONCURRENT_LIMIT} (or leave \
             it out for no limit)"
        )),
    }
}

/// Kept in step with `skiplock::MAX_RATE_LIMIT` and the periods
/// `skiplock::Rate` accepts.
const MAX_RATE_LIMIT: u32 = 1_000;

/// `"100/1s"`: (starts, period in milliseconds).
fn rate_value(text: &str) -> Result<(u32, u32), String> {
    let shape = "write a rate as STARTS/PERIOD: `rate = \"100/1s\"`, `rate = \"10/1m\"`";
    let (limit, period) = text
        .split_once('/')
        .ok_or_else(|| format!("`{text}` is not a rate; {shape}"))?;
    let limit: u32 = match limit.parse() {
        Ok(n @ 1..=MAX_RATE_LIMIT) => n,
        _ => {
            return Err(format!(
                "`{limit}` starts is out of range; use 1 to {MAX_RATE_LIMIT} (a longer period \
                 allows more)"
            ))
        }
    };
    let micros = duration::parse_micros(period).map_err(|e| format!("{e} ({shape})"))?;
    if micros % 1_000 != 0 || !(1_000_000..=86_400_000_000).contains(&micros) {
        return Err(format!(
            "a rate's period of `{period}` is refused; use whole milliseconds from 1s to 24h"
        ));
    }
    Ok((limit, u32::try_from(micros / 1_000).expect("at most a day")))
}

fn duration_value(meta: &Meta) -> Result<u64, String> {
    let text = string(meta).map_err(|_| {
        format!(
            "`{}` takes a duration string: `{} = \"30s\"` (units ms, s, m, h)",
            key_of(meta),
            key_of(meta)
        )
    })?;
    duration::parse_micros(&text)
}

/// `transaction` or `transaction = true/false`; `Some(span)` when on.
fn flag(meta: &Meta) -> Result<Option<Span>, String> {
    let key = key_of(meta);
    let expected = || format!("`{key}` is a flag: write `{key}` or `{key} = true`");
    match meta {
        Meta::Path(path) => Ok(Some(syn::spanned::Spanned::span(path))),
        Meta::NameValue(nv) => match &nv.value {
            Expr::Lit(ExprLit {
                lit: Lit::Bool(b), ..
            }) => Ok(b.value.then_some(b.span)),
            _ => Err(expected()),
        },
        Meta::List(_) => Err(expected()),
    }
}

fn crate_path(meta: &Meta) -> Result<syn::Path, String> {
    let expected = "`crate` takes the path under which your crate sees `skiplock`: `crate = jobs` for `jobs = { package = \"skiplock\", .. }`";
    match value_of(meta, "path")? {
        Expr::Path(ExprPath {
            path, qself: None, ..
        }) => Ok(path.clone()),
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => s.parse::<syn::Path>().map_err(|_| expected.to_owned()),
        _ => Err(expected.to_owned()),
    }
}

/// A string literal for generated `#[serde(crate = "...")]`.
pub(crate) fn path_string(path: &syn::Path) -> LitStr {
    LitStr::new(
        &path.to_token_stream().to_string().replace(' ', ""),
        Span::call_site(),
    )
}

/// Where the generated code finds skiplock when the user does not say
/// (`crate = path`): under the name the calling crate's `Cargo.toml` gives
/// it, so a renamed dependency (`jobs = { package = "skiplock" }`) works as
/// it is.
pub(crate) fn skiplock_path() -> Result<syn::Path, String> {
    match proc_macro_crate::crate_name("skiplock") {
        // Within skiplock itself (its doctests are other crates that link it).
        Ok(proc_macro_crate::FoundCrate::Itself) => Ok(syn::parse_quote!(::skiplock)),
        Ok(proc_macro_crate::FoundCrate::Name(name)) => {
            let ident = syn::Ident::new(&name, Span::call_site());
            Ok(syn::parse_quote!(::#ident))
        }
        Err(_) => Err(
            "skiplock is not a dependency of this crate, under any name: add it to \
             Cargo.toml, or say where this crate reaches it with `crate = path` (for example \
             `crate = my_app::jobs` when another crate re-exports it)"
                .to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::KEYS;

    /// The keys `KEYS` lists, in order.
    fn listed() -> Vec<String> {
        KEYS.split(", ")
            .map(|key| key.trim_matches('`').to_owned())
            .collect()
    }

    fn workspace_file(path: &str) -> String {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap();
        std::fs::read_to_string(root.join(path)).unwrap()
    }

    #[test]
    fn the_key_list_is_every_key_parse_accepts() {
        // The arms of `parse`'s match, read from this file.
        let source = include_str!("attr.rs");
        let body = &source[source.find("pub(crate) fn parse(").unwrap()..];
        let body = &body[..body.find("\n}\n").unwrap()];
        let parsed: Vec<String> = body
            .lines()
            .filter_map(|line| {
                let arm = line.trim().strip_prefix('"')?;
                let (key, rest) = arm.split_once('"')?;
                rest.trim_start().starts_with("=>").then(|| key.to_owned())
            })
            .collect();
        assert_eq!(parsed, listed());
    }

    #[test]
    fn the_readme_and_the_rustdoc_name_every_option() {
        let readme = workspace_file("README.md");
        let start = readme
            .find("- The job type name stored in each row")
            .unwrap();
        let bullet = &readme[start..];
        let bullet = &bullet[..bullet.find("\n- ").unwrap()];
        let rustdoc = workspace_file("queue/src/background_job.md");
        let mut missing = Vec::new();
        for key in listed() {
            if !bullet.contains(&format!("`{key}`")) && !bullet.contains(&format!("`{key} =")) {
                missing.push(format!("the README's options ({key})"));
            }
            if !rustdoc.contains(&format!("\n| `{key}` |")) {
                missing.push(format!("background_job.md's options table ({key})"));
            }
        }
        assert!(missing.is_empty(), "not named: {missing:?}");
    }
}
