use diesel::PgConnection;
use skiplock::{background_job, PerformError};

#[background_job]
fn count_users(conn: &PgConnection) -> Result<(), PerformError> {
    let _ = conn;
    Ok(())
}

fn main() {}
