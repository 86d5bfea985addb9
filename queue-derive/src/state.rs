//! `#[derive(FromState)]`: each field of an application's state becomes a
//! part that jobs can take by reference.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Member};

use crate::attr::Errors;

/// The whole derive: the impls, or every error at once.
pub(crate) fn derive_from_state(input: TokenStream) -> TokenStream {
    let input: DeriveInput = match syn::parse2(input) {
        Ok(input) => input,
        Err(error) => return error.into_compile_error(),
    };
    let mut errors = Errors::default();
    let krate = container_crate(&input, &mut errors);
    if !input.generics.params.is_empty() {
        errors.spanned(
            &input.generics,
            "#[derive(FromState)] needs a state without generic parameters: the runner finds \
             each part by the concrete type of the state",
        );
    }
    let fields = match &input.data {
        Data::Struct(data) => Some(&data.fields),
        _ => {
            errors.spanned(
                &input.ident,
                "#[derive(FromState)] works on a struct, whose fields are the parts jobs take",
            );
            None
        }
    };
    let state = &input.ident;
    let mut seen: Vec<(String, &syn::Type)> = Vec::new();
    let mut parts = Vec::new();
    for (index, field) in fields.into_iter().flat_map(Fields::iter).enumerate() {
        if is_skipped(field, &mut errors) {
            continue;
        }
        let ty = &field.ty;
        let key = ty.to_token_stream().to_string();
        if seen.iter().any(|(other, _)| *other == key) {
            errors.spanned(
                ty,
                format!(
                    "another field of `{state}` is a `{key}` too: a job that takes `&{key}` \
                     could not tell which it gets; mark one `#[from_state(skip)]`, or wrap one \
                     in a type of its own"
                ),
            );
            continue;
        }
        seen.push((key, ty));
        let member = field
            .ident
            .clone()
            .map_or_else(|| Member::Unnamed(index.into()), Member::Named);
        parts.push(quote_spanned! {ty.span()=>
            impl #krate::FromState<#state> for #ty {
                fn from_state(state: &#state) -> &Self {
                    &state.#member
                }
            }
            #krate::state_part!(#state => #ty);
        });
    }
    match errors.into_result() {
        Ok(()) => quote!(#(#parts)*),
        Err(error) => error.into_compile_error(),
    }
}

/// `#[from_state(crate = path)]` on the struct: where skiplock is.
fn container_crate(input: &DeriveInput, errors: &mut Errors) -> syn::Path {
    let mut krate = None;
    each_option(&input.attrs, errors, |meta| {
        if meta.path.is_ident("crate") {
            krate = Some(meta.value()?.parse::<syn::Path>()?);
            Ok(())
        } else {
            Err(meta.error("expected `crate = path` (where skiplock is, if renamed)"))
        }
    });
    krate.unwrap_or_else(|| {
        crate::attr::skiplock_path().unwrap_or_else(|message| {
            errors.push(syn::Error::new(proc_macro2::Span::call_site(), message));
            syn::parse_quote!(::skiplock)
        })
    })
}

/// `#[from_state(skip)]` on a field: not a part.
fn is_skipped(field: &syn::Field, errors: &mut Errors) -> bool {
    let mut skipped = false;
    each_option(&field.attrs, errors, |meta| {
        if meta.path.is_ident("skip") {
            skipped = true;
            Ok(())
        } else {
            Err(meta.error("expected `#[from_state(skip)]` on a field"))
        }
    });
    skipped
}

/// Hands each option of every `#[from_state(..)]` in `attrs` to `read`,
/// collecting its errors.
fn each_option(
    attrs: &[syn::Attribute],
    errors: &mut Errors,
    mut read: impl FnMut(syn::meta::ParseNestedMeta<'_>) -> syn::Result<()>,
) {
    for attr in attrs.iter().filter(|a| a.path().is_ident("from_state")) {
        if let Err(error) = attr.parse_nested_meta(&mut read) {
            errors.push(error);
        }
    }
}
