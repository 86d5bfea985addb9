use skiplock::{background_job, PerformError};

#[background_job]
async fn fetch(url: String) -> Result<(), PerformError> {
    let _ = url;
    Ok(())
}

fn main() {}
