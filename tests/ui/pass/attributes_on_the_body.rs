//! Attributes other than doc comments apply to the job's body: an
//! instrumentation that names the body's parameters works.

use skiplock::{background_job, PerformError};

pub struct Mailer;

/// Sends a mail.
#[background_job]
#[tracing::instrument(skip(mailer), fields(job = "send"))]
#[allow(clippy::needless_pass_by_value)]
fn send(mailer: &Mailer, to: String) -> Result<(), PerformError> {
    let _ = (mailer, to);
    Ok(())
}

#[cfg(any())]
#[background_job]
fn compiled_out(x: NoSuchType) -> Result<(), PerformError> {
    Ok(())
}

fn main() {
    SendJob::perform(&Mailer, "ferris@example.com".into()).unwrap();
    let _ = send("a".into());
}
