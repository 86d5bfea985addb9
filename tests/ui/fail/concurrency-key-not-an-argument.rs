use skiplock::{background_job, PerformError};

#[background_job(concurrency_key = "acount_id", max_concurrent = 2)]
fn charge(account_id: i64, cents: i64) -> Result<(), PerformError> {
    let _ = (account_id, cents);
    Ok(())
}

#[background_job(concurrency_key = "tenant")]
fn nightly() -> Result<(), PerformError> {
    Ok(())
}

#[background_job(max_concurrent = 0)]
fn never(n: i64) -> Result<(), PerformError> {
    let _ = n;
    Ok(())
}

#[background_job(max_concurrent = 5000)]
fn too_many(n: i64) -> Result<(), PerformError> {
    let _ = n;
    Ok(())
}

fn main() {}
