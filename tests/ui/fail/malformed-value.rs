use skiplock::{background_job, PerformError};

#[background_job(queue = mail, priority = "high", name)]
fn send() -> Result<(), PerformError> {
    Ok(())
}

fn main() {}
