use skiplock::{background_job, PerformError};

#[background_job(queue = "mail", queue = "email")]
fn send() -> Result<(), PerformError> {
    Ok(())
}

fn main() {}
