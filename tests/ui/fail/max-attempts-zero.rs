use skiplock::{background_job, PerformError};

#[background_job(max_attempts = 0)]
fn send() -> Result<(), PerformError> {
    Ok(())
}

fn main() {}
