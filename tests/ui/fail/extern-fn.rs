use skiplock::{background_job, PerformError};

#[background_job]
extern "C" fn callback() -> Result<(), PerformError> {
    Ok(())
}

fn main() {}
