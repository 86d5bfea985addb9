use skiplock::{background_job, PerformError};

#[background_job]
fn count() -> Result<u64, PerformError> {
    Ok(3)
}

fn main() {}
