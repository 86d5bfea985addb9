use skiplock::{background_job, PerformError};

#[background_job]
unsafe fn poke() -> Result<(), PerformError> {
    Ok(())
}

fn main() {}
