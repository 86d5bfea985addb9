use skiplock::{background_job, PerformError};

#[background_job]
fn resize((width, height): (u32, u32)) -> Result<(), PerformError> {
    let _ = (width, height);
    Ok(())
}

fn main() {}
