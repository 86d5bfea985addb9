use diesel::PgConnection;
use skiplock::{background_job, PerformError};

#[background_job]
fn copy(from: &mut PgConnection, to: &mut PgConnection) -> Result<(), PerformError> {
    let _ = (from, to);
    Ok(())
}

fn main() {}
