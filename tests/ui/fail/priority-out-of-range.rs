use skiplock::{background_job, PerformError};

#[background_job(priority = 40000)]
fn send() -> Result<(), PerformError> {
    Ok(())
}

fn main() {}
