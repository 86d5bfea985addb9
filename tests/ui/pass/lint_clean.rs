//! Generated code is warning-free under strict lints, for public and private jobs.
#![deny(warnings, unused_qualifications, missing_docs, unreachable_pub, rust_2018_idioms)]
#![deny(missing_debug_implementations)]

use diesel::PgConnection;
use skiplock::{background_job, PerformError};

/// The context.
#[derive(Debug)]
pub struct Env;

/// Adds a crate.
#[background_job(queue = "index", max_attempts = 3)]
pub fn add_crate(env: &Env, conn: &mut PgConnection, name: String) -> Result<(), PerformError> {
    let _ = (env, conn, name);
    Ok(())
}

#[background_job]
fn private_job(count: u32) -> Result<(), std::io::Error> {
    let _ = count;
    Ok(())
}

fn main() {
    let _ = (add_crate("a".into()), private_job(1));
}
