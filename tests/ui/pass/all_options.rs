//! Every option of the attribute.

use std::time::Duration;

use diesel::PgConnection;
use skiplock::{background_job, ConnectionMode, Job, PerformError, RetryPolicy};

#[background_job(
    name = "index.yank-v2",
    queue = "git:index",
    priority = -7,
    max_attempts = 5,
    backoff = "250ms",
    max_backoff = "2h",
    transaction
)]
fn yank(conn: &mut PgConnection, krate: String) -> Result<(), PerformError> {
    let _ = (conn, krate);
    Ok(())
}

#[background_job(priority = 32767, transaction = false, backoff = "3m")]
fn urgent() -> Result<(), PerformError> {
    Ok(())
}

fn main() {
    assert_eq!(YankJob::JOB_TYPE, "index.yank-v2");
    assert_eq!(YankJob::QUEUE, "git:index");
    assert_eq!(YankJob::PRIORITY, -7);
    assert_eq!(
        YankJob::RETRY_POLICY,
        RetryPolicy::DEFAULT
            .max_attempts(5)
            .initial_backoff(Duration::from_millis(250))
            .max_backoff(Duration::from_secs(7200))
    );
    assert_eq!(YankJob::CONNECTION, ConnectionMode::JobTransaction);
    assert_eq!(UrgentJob::PRIORITY, i16::MAX);
    assert_eq!(UrgentJob::CONNECTION, ConnectionMode::Pooled);
    assert_eq!(UrgentJob::RETRY_POLICY.initial_backoff, Duration::from_secs(180));
    let _ = (yank("x".into()), urgent());
}
