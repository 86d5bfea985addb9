//! Any `std::error::Error + Send + Sync + 'static`, or `PerformError`, as the error type.

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

fn main() {
    assert!(WithPerformErrorJob::perform().unwrap_err().is_permanent());
    assert!(WithOwnErrorJob::perform().is_err());
    let _ = (with_perform_error(), with_io_error(), with_io_result_alias(), with_own_error(), with_diesel_error());
}
