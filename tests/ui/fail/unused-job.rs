#![deny(dead_code)]

use skiplock::{background_job, PerformError};

// Never enqueued anywhere: warned about like any unused function.
#[background_job]
fn forgotten(id: i64) -> Result<(), PerformError> {
    let _ = id;
    Ok(())
}

fn main() {}
