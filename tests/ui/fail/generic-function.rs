use skiplock::{background_job, PerformError};

#[background_job]
fn store<T: serde::Serialize>(value: T) -> Result<(), PerformError> {
    let _ = value;
    Ok(())
}

fn main() {}
