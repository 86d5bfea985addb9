//! The `#[background_job]` attribute and `#[derive(FromState)]` of the
//! `skiplock` crate.
//!
//! Use them through `skiplock`; their documentation lives there. This crate
//! is only the shim: `attr.rs` parses the arguments, `ast.rs` checks the
//! function, `expand.rs` writes the job; `state.rs` is the derive.

use proc_macro::TokenStream;

mod ast;
mod attr;
mod duration;
mod expand;
mod state;

/// Turns a function into a background job. Documented at `skiplock::background_job`,
/// the path to use it by.
#[proc_macro_attribute]
pub fn background_job(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::background_job(args.into(), item.into()).into()
}

/// Makes each field of an application's state a part jobs can take by
/// reference. Documented at `skiplock::FromState`, the path to use it by.
#[proc_macro_derive(FromState, attributes(from_state))]
pub fn derive_from_state(input: TokenStream) -> TokenStream {
    state::derive_from_state(input.into()).into()
}
