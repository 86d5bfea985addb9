use skiplock::{background_job, PerformError};

#[background_job]
fn send(#[job(context)] to: String) -> Result<(), PerformError> {
    let _ = to;
    Ok(())
}

fn main() {}
