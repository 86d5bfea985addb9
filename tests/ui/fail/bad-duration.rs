use skiplock::{background_job, PerformError};

#[background_job(backoff = "10 seconds")]
fn send() -> Result<(), PerformError> {
    Ok(())
}

fn main() {}
