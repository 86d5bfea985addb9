//! The `#[background_job]` attribute of the `skiplock` crate.
//!
//! Use it through `skiplock::background_job`; its documentation lives there.
//! This crate is only the shim: `attr.rs` parses the arguments, `ast.rs`
//! checks the function, `expand.rs` writes the job.

use proc_macro::TokenStream;

mod ast;
mod attr;
mod duration;
mod expand;

/// Turns a function into a background job. Documented at `skiplock::background_job`,
/// the path to use it by.
#[proc_macro_attribute]
pub fn background_job(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::background_job(args.into(), item.into()).into()
}
