//! The function under `#[background_job]`, checked and classified.
//!
//! Parameters are classified by their type, in this order:
//! 1. an explicit `#[job(context)]` or `#[job(connection)]` on the parameter;
//! 2. `&mut PgConnection` (any path ending in `PgConnection`): the connection;
//! 3. any other shared reference `&T`: the context, `T` being the runner's context type;
//! 4. anything else: an argument, stored as a field of the job.

use proc_macro2::Span;
use quote::ToTokens;
use syn::spanned::Spanned;
use syn::{Attribute, FnArg, Ident, ItemFn, Pat, ReturnType, Type, TypeReference};

use crate::attr::Errors;

/// What a parameter is to the job.
pub(crate) enum Role {
    /// `&T`: the runner's context; holds `T`.
    Context(Type),
    /// `&mut PgConnection`: the job's connection.
    Connection,
    /// An owned value stored in the job; holds the `#[serde]` attributes to copy.
    Argument(Vec<Attribute>),
}

/// One parameter of the function.
pub(crate) struct Param {
    pub(crate) ident: Ident,
    pub(crate) ty: Type,
    pub(crate) role: Role,
}

/// The checked function.
pub(crate) struct JobFn {
    pub(crate) item: ItemFn,
    /// An `async fn`: its body runs on tokio.
    pub(crate) is_async: bool,
    pub(crate) params: Vec<Param>,
    /// The span of the return type, where an unusable error type is reported.
    pub(crate) output_span: Span,
}

impl JobFn {
    pub(crate) fn context(&self) -> Option<&Type> {
        self.params.iter().find_map(|p| match &p.role {
            Role::Context(ty) => Some(ty),
            _ => None,
        })
    }

    pub(crate) fn takes_connection(&self) -> bool {
        self.params
            .iter()
            .any(|p| matches!(p.role, Role::Connection))
    }

    pub(crate) fn arguments(&self) -> impl Iterator<Item = (&Param, &[Attribute])> {
        self.params.iter().filter_map(|p| match &p.role {
            Role::Argument(attrs) => Some((p, attrs.as_slice())),
            _ => None,
        })
    }
}

/// Checks the function and classifies its parameters. The parameter
/// attributes this macro reads (`#[job(..)]`, `#[serde(..)]`) are removed
/// from `item` so what is left compiles as an ordinary function.
pub(crate) fn analyze(mut item: ItemFn, errors: &mut Errors) -> JobFn {
    check_signature(&item, errors);
    let mut params = Vec::new();
    let mut context_seen: Option<Ident> = None;
    let mut connection_seen: Option<Ident> = None;
    let is_async = item.sig.asyncness.is_some();
    for input in &mut item.sig.inputs {
        let FnArg::Typed(typed) = input else {
            errors.spanned(
                &*input,
                "#[background_job] cannot be used on methods: a job is stored as data and run \
                 without a `self`; write a free function and pass what it needs as arguments",
            );
            continue;
        };
        let explicit = take_job_attr(&mut typed.attrs, errors);
        let serde_attrs = take_serde_attrs(&mut typed.attrs);
        let ident = match &*typed.pat {
            Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => pat.ident.clone(),
            other => {
                errors.spanned(
                    other,
                    "#[background_job] parameters must be plain names (`krate: NewVersion`), \
                     not patterns: each argument becomes a named field of the stored job",
                );
                continue;
            }
        };
        let ty = (*typed.ty).clone();
        let Some(role) = classify(&ident, &ty, explicit, serde_attrs, is_async, errors) else {
            continue;
        };
        let seen = match role {
            Role::Context(_) => Some((&mut context_seen, "context reference")),
            Role::Connection => Some((&mut connection_seen, "database connection")),
            Role::Argument(_) => None,
        };
        if let Some((seen, what)) = seen {
            if let Some(first) = seen {
                errors.spanned(
                    &typed.ty,
                    format!(
                        "a #[background_job] takes at most one {what}, and `{first}` is already \
                         one; make `{ident}` part of it, or an owned argument"
                    ),
                );
                continue;
            }
            *seen = Some(ident.clone());
        }
        params.push(Param { ident, ty, role });
    }
    let output_span = output_span(&item.sig);
    JobFn {
        is_async: item.sig.asyncness.is_some(),
        item,
        params,
        output_span,
    }
}

fn check_signature(item: &ItemFn, errors: &mut Errors) {
    let sig = &item.sig;
    let not_on = |what: &str| {
        format!("#[background_job] cannot be used on {what} functions; write a plain `fn`")
    };
    if let Some(t) = &sig.constness {
        errors.spanned(t, not_on("`const`"));
    }
    if let Some(t) = &sig.unsafety {
        errors.spanned(t, not_on("`unsafe`"));
    }
    if let Some(t) = &sig.abi {
        errors.spanned(t, not_on("`extern`"));
    }
    if !sig.generics.params.is_empty() {
        errors.spanned(
            &sig.generics,
            "#[background_job] cannot be used on generic functions: the runner must know the \
             concrete types to deserialize and run the job; use concrete types",
        );
    }
    if let Some(clause) = &sig.generics.where_clause {
        errors.spanned(
            clause,
            "#[background_job] cannot be used on functions with a `where` clause; use concrete types",
        );
    }
    if let Some(v) = &sig.variadic {
        errors.spanned(v, "#[background_job] cannot be used on variadic functions");
    }
}

/// Reads and removes `#[job(context)]` / `#[job(connection)]`.
fn take_job_attr(attrs: &mut Vec<Attribute>, errors: &mut Errors) -> Option<(Explicit, Span)> {
    let mut found = None;
    let mut kept = Vec::with_capacity(attrs.len());
    for attr in attrs.drain(..) {
        if !attr.path().is_ident("job") {
            kept.push(attr);
            continue;
        }
        let parsed = attr
            .parse_args::<Ident>()
            .ok()
            .and_then(|i| match i.to_string().as_str() {
                "context" => Some(Explicit::Context),
                "connection" => Some(Explicit::Connection),
                _ => None,
            });
        match parsed {
            _ if found.is_some() => errors.spanned(&attr, "give a parameter one `#[job(..)]`"),
            Some(explicit) => found = Some((explicit, attr.span())),
            None => errors.spanned(
                &attr,
                "expected `#[job(context)]` or `#[job(connection)]` on a #[background_job] parameter",
            ),
        }
    }
    *attrs = kept;
    found
}

/// Removes `#[serde(..)]`, to be put on the job's field instead.
fn take_serde_attrs(attrs: &mut Vec<Attribute>) -> Vec<Attribute> {
    let (serde, rest) = attrs.drain(..).partition(|a| a.path().is_ident("serde"));
    *attrs = rest;
    serde
}

#[derive(Clone, Copy)]
enum Explicit {
    Context,
    Connection,
}

fn classify(
    ident: &Ident,
    ty: &Type,
    explicit: Option<(Explicit, Span)>,
    serde_attrs: Vec<Attribute>,
    is_async: bool,
    errors: &mut Errors,
) -> Option<Role> {
    let reference = match ty {
        Type::Reference(r) => Some(r),
        _ => None,
    };
    if let (Some(r), false) = (reference, serde_attrs.is_empty()) {
        errors.spanned(
            &serde_attrs[0],
            format!(
                "`#[serde]` belongs on stored arguments, and `{ident}` is a reference ({})",
                r.to_token_stream()
            ),
        );
    }
    match (explicit, reference) {
        (Some((_, span)), None) => {
            errors.push(syn::Error::new(
                span,
                "`#[job(..)]` marks a reference parameter (`&Context` or `&mut PgConnection`); \
                 this parameter is owned, so it is already an argument",
            ));
            None
        }
        (Some((Explicit::Context, _)), Some(r)) => context(r, errors),
        (Some((Explicit::Connection, _)), Some(r)) => connection(r, errors),
        (None, Some(r)) if names_pg_connection(&r.elem) && is_async => {
            errors.spanned(
                r,
                "an async #[background_job] takes its connection as `&mut AsyncPgConnection` \
                 (diesel-async); write `&mut AsyncPgConnection`",
            );
            None
        }
        (None, Some(r)) if names_type(&r.elem, "AsyncPgConnection") && !is_async => {
            errors.spanned(
                r,
                "`&mut AsyncPgConnection` is the connection of an `async fn` job; make the \
                 function `async`, or take `&mut PgConnection`",
            );
            None
        }
        (None, Some(r)) if names_pg_connection(&r.elem) => connection(r, errors),
        (None, Some(r)) if names_type(&r.elem, "AsyncPgConnection") => connection(r, errors),
        (None, Some(r)) if names_type(&r.elem, "JobConnection") => {
            errors.spanned(
                r,
                "a #[background_job] takes its database connection as `&mut PgConnection`; \
                 the runtime hands it over (from the job's `JobConnection`) itself: write \
                 `&mut PgConnection`",
            );
            None
        }
        (None, Some(r)) => context(r, errors),
        (None, None) => {
            if let Type::ImplTrait(_) = ty {
                errors.spanned(
                    ty,
                    "#[background_job] arguments cannot be `impl Trait`: they are stored and \
                     deserialized, so they need a concrete type",
                );
                return None;
            }
            if let Some(inner) = reference_inside(ty) {
                errors.spanned(
                    inner,
                    format!(
                        "`{ident}` is a stored argument, and a stored argument cannot hold a \
                         reference (`{}`); did you mean `{}` (the job's context, a part of the \
                         runner's state)? Otherwise store owned data",
                        type_text(ty),
                        type_text(inner),
                    ),
                );
                return None;
            }
            Some(Role::Argument(serde_attrs))
        }
    }
}

fn context(r: &TypeReference, errors: &mut Errors) -> Option<Role> {
    if r.mutability.is_some() {
        errors.spanned(
            r,
            "the context of a #[background_job] is shared by all concurrent jobs of a runner, \
             so it is taken as `&T`, not `&mut T`; use interior mutability (a Mutex) for state \
             that changes. A connection under another name is marked `#[job(connection)]`",
        );
        return None;
    }
    let unsized_fix = match &*r.elem {
        Type::Path(p) if p.qself.is_none() && p.path.is_ident("str") => Some("`String`"),
        Type::Slice(_) => Some("a `Vec`"),
        Type::TraitObject(_) => Some("a concrete type"),
        _ => None,
    };
    if let Some(fix) = unsized_fix {
        errors.spanned(
            r,
            format!(
                "`{}` would be the job's context (a part of the runner's state), and a context \
                 has a size known at compile time; to store this value with the job, take \
                 {fix} instead",
                type_text(r)
            ),
        );
        return None;
    }
    Some(Role::Context((*r.elem).clone()))
}

/// A type as its user wrote it, more or less: `Option<&Mailer>`, not
/// `Option < & Mailer >`.
fn type_text(ty: &impl ToTokens) -> String {
    let mut text = ty.to_token_stream().to_string();
    for (from, to) in [
        (" <", "<"),
        ("< ", "<"),
        (" >", ">"),
        ("& ", "&"),
        (" ,", ","),
        (" ::", "::"),
        (":: ", "::"),
    ] {
        text = text.replace(from, to);
    }
    text
}

/// The first reference inside an owned type (`Option<&Mailer>`), if any.
fn reference_inside(ty: &Type) -> Option<&Type> {
    match ty {
        Type::Reference(_) => Some(ty),
        Type::Path(p) => p
            .path
            .segments
            .iter()
            .find_map(|segment| match &segment.arguments {
                syn::PathArguments::AngleBracketed(args) => {
                    args.args.iter().find_map(|arg| match arg {
                        syn::GenericArgument::Type(inner) => reference_inside(inner),
                        _ => None,
                    })
                }
                _ => None,
            }),
        Type::Tuple(t) => t.elems.iter().find_map(reference_inside),
        Type::Array(a) => reference_inside(&a.elem),
        Type::Slice(sl) => reference_inside(&sl.elem),
        Type::Paren(p) => reference_inside(&p.elem),
        Type::Group(g) => reference_inside(&g.elem),
        _ => None,
    }
}

fn connection(r: &TypeReference, errors: &mut Errors) -> Option<Role> {
    if r.mutability.is_none() {
        errors.spanned(
            r,
            "a #[background_job] takes its database connection as `&mut PgConnection` (diesel \
             needs it mutable); write `&mut PgConnection`",
        );
        return None;
    }
    Some(Role::Connection)
}

fn names_pg_connection(ty: &Type) -> bool {
    match ty {
        Type::Path(p) => p
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "PgConnection" && s.arguments.is_empty()),
        Type::Group(g) => names_pg_connection(&g.elem),
        Type::Paren(p) => names_pg_connection(&p.elem),
        _ => false,
    }
}

/// Whether `ty` is a path ending in `name` (with any generic arguments).
fn names_type(ty: &Type, name: &str) -> bool {
    match ty {
        Type::Path(p) => p.path.segments.last().is_some_and(|s| s.ident == name),
        Type::Group(g) => names_type(&g.elem, name),
        Type::Paren(p) => names_type(&p.elem, name),
        _ => false,
    }
}

/// Where a return type the job cannot record is reported: the return type,
/// or the closing parenthesis when there is none. What it may be is the
/// type system's to check (any `Result<(), E>` alias works, like diesel's
/// `QueryResult<()>`; no return type is a job that cannot fail).
fn output_span(sig: &syn::Signature) -> Span {
    match &sig.output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => sig.paren_token.span.close(),
    }
}
