use skiplock::{background_job, PerformError};

#[background_job(rate = "5000/1s")]
fn too_many() -> Result<(), PerformError> {
    Ok(())
}

#[background_job(rate = "10/500ms")]
fn too_short() -> Result<(), PerformError> {
    Ok(())
}

#[background_job(rate = "ten a second")]
fn not_a_rate() -> Result<(), PerformError> {
    Ok(())
}

fn main() {}
