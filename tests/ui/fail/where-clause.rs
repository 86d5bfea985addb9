use skiplock::{background_job, PerformError};

#[background_job]
fn store(value: u32) -> Result<(), PerformError>
where
    u32: Copy,
{
    let _ = value;
    Ok(())
}

fn main() {}
