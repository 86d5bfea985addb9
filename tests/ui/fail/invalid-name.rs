use skiplock::{background_job, PerformError};

#[background_job(name = "send mail")]
fn send() -> Result<(), PerformError> {
    Ok(())
}

fn main() {}
