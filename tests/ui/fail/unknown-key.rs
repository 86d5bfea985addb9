use skiplock::{background_job, PerformError};

#[background_job(queue = "mail", retries = 3)]
fn send() -> Result<(), PerformError> {
    Ok(())
}

fn main() {}
