use skiplock::{background_job, PerformError};

#[background_job(timeout = "30s")]
fn slow() -> Result<(), PerformError> {
    Ok(())
}

fn main() {}
