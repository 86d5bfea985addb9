use skiplock::{background_job, PerformError};

#[background_job]
fn greet(name: &str) -> Result<(), PerformError> {
    let _ = name;
    Ok(())
}

fn main() {}
