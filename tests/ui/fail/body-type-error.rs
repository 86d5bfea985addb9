use skiplock::{background_job, PerformError};

#[background_job]
fn add_crate(name: String) -> Result<(), PerformError> {
    let length: u32 = name.len();
    let _ = length;
    Ok(())
}

fn main() {}
