//! No context, no connection, no arguments: the unit context.

use skiplock::{background_job, Job, PerformError};

#[background_job]
fn rebuild_caches() -> Result<(), PerformError> {
    Ok(())
}

fn main() {
    let job = rebuild_caches();
    assert_eq!(RebuildCachesJob::JOB_TYPE, "rebuild_caches");
    assert_eq!(RebuildCachesJob::QUEUE, "default");
    assert_eq!(RebuildCachesJob::PRIORITY, 0);
    assert_eq!(RebuildCachesJob::RETRY_POLICY, skiplock::RetryPolicy::DEFAULT);
    let _: &dyn Fn(&()) = &|_: &<RebuildCachesJob as Job>::Context| {};
    assert!(RebuildCachesJob::perform().is_ok());
    let _ = job;
}
