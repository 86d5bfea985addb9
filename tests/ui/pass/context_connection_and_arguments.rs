//! The common shape: a context, a connection and owned arguments, in any order.

use diesel::PgConnection;
use skiplock::{background_job, ConnectionMode, Job, PerformError};

pub struct IndexEnv {
    pub prefix: String,
}

#[background_job(queue = "index")]
fn add_crate(
    name: String,
    env: &IndexEnv,
    conn: &mut PgConnection,
    version: u32,
) -> Result<(), PerformError> {
    let _ = (conn, &env.prefix, name, version);
    Ok(())
}

fn main() {
    let job: AddCrateJob = add_crate("serde".to_owned(), 3);
    assert_eq!(job.name, "serde");
    assert_eq!(job.version, 3);
    assert_eq!(AddCrateJob::JOB_TYPE, "add_crate");
    assert_eq!(AddCrateJob::QUEUE, "index");
    assert_eq!(AddCrateJob::CONNECTION, ConnectionMode::Pooled);
    let _: fn(&IndexEnv) = |_: &<AddCrateJob as Job>::Context| {};
}
