use skiplock::{background_job, PerformError};

#[background_job]
const fn tick() -> Result<(), PerformError> {
    Ok(())
}

fn main() {}
