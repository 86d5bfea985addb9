use skiplock::{background_job, PerformError};

#[background_job(transaction)]
fn send(to: String) -> Result<(), PerformError> {
    let _ = to;
    Ok(())
}

fn main() {}
