use skiplock::{background_job, PerformError};

#[background_job("mail")]
fn send() -> Result<(), PerformError> {
    Ok(())
}

fn main() {}
