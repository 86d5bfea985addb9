use skiplock::{background_job, JobConnection, PerformError};

#[background_job]
fn touch(conn: &mut JobConnection<'_>) -> Result<(), PerformError> {
    let _ = conn;
    Ok(())
}

fn main() {}
