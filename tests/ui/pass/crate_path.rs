//! `crate = ...` for users who see `skiplock` under another name.

extern crate skiplock as jobs_runtime;

use jobs_runtime::{background_job, Job, PerformError};

#[background_job(crate = jobs_runtime)]
fn renamed(x: u8) -> Result<(), PerformError> {
    let _ = x;
    Ok(())
}

#[background_job(crate = "jobs_runtime")]
fn renamed_as_string() -> Result<(), PerformError> {
    Ok(())
}

fn main() {
    assert_eq!(RenamedJob::JOB_TYPE, "renamed");
    let _ = (renamed(1), renamed_as_string());
}
