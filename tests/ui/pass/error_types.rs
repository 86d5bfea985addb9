//! Every error type a Rust user reaches for: any `std::error::Error + Send + Sync + 'static`,
//! `PerformError`, `BoxError` and the boxed error it names, diesel's `QueryResult`, `anyhow` and
//! `eyre` (skiplock's features of those names).

use std::fmt;

use skiplock::{background_job, PerformError};

#[derive(Debug)]
pub struct MailError;

impl fmt::Display for MailError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("smtp refused")
    }
}

impl std::error::Error for MailError {}

#[background_job]
fn with_perform_error() -> Result<(), PerformError> {
    Err(PerformError::permanent("never again"))
}

#[background_job]
fn with_io_error() -> Result<(), std::io::Error> {
    Ok(())
}

#[background_job]
fn with_io_result_alias() -> std::io::Result<()> {
    Ok(())
}

#[background_job]
fn with_own_error() -> Result<(), MailError> {
    Err(MailError)
}

#[background_job]
fn with_diesel_error(conn: &mut diesel::PgConnection) -> Result<(), diesel::result::Error> {
    let _ = conn;
    Ok(())
}

#[background_job]
fn with_box_error() -> Result<(), skiplock::BoxError> {
    Err("boxed".into())
}

#[background_job]
fn with_box_dyn_error() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    Ok(())
}

#[background_job]
fn with_query_result(conn: &mut diesel::PgConnection) -> diesel::QueryResult<()> {
    let _ = conn;
    Ok(())
}

#[background_job]
fn with_anyhow() -> anyhow::Result<()> {
    anyhow::bail!("no such crate")
}

#[background_job]
fn with_eyre() -> eyre::Result<()> {
    Ok(())
}

fn main() {
    assert!(WithPerformErrorJob::perform().unwrap_err().is_permanent());
    assert!(WithOwnErrorJob::perform().is_err());
    assert!(WithAnyhowJob::perform().is_err());
    assert!(WithBoxErrorJob::perform().is_err());
    let _ = (with_perform_error(), with_io_error(), with_io_result_alias(), with_own_error(), with_diesel_error());
    let _ = (with_box_error(), with_box_dyn_error(), with_query_result(), with_anyhow(), with_eyre());
}
