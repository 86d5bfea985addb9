use diesel::PgConnection;
use skiplock::{background_job, PerformError};

#[background_job]
async fn touch(conn: &mut PgConnection) -> Result<(), PerformError> {
    let _ = conn;
    Ok(())
}

fn main() {}
