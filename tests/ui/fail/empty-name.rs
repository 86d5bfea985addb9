use skiplock::{background_job, PerformError};

#[background_job(name = "")]
fn send() -> Result<(), PerformError> {
    Ok(())
}

fn main() {}
