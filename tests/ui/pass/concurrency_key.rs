use serde::{Deserialize, Serialize};
use skiplock::{background_job, EnqueueOptions, Job, PerformError};

#[derive(Serialize, Deserialize)]
struct Account {
    id: i64,
}

/// Keyed by a string argument, limited to 2 a key.
#[background_job(concurrency_key = "tenant", max_concurrent = 2)]
fn sync_tenant(tenant: String, full: bool) -> Result<(), PerformError> {
    let _ = (tenant, full);
    Ok(())
}

/// Keyed by a struct (its JSON), taking turns without a limit.
#[background_job(concurrency_key = "account")]
fn rebuild(account: Account) -> Result<(), PerformError> {
    let _ = account.id;
    Ok(())
}

/// At most 4 of this type at once.
#[background_job(max_concurrent = 4)]
fn reindex() -> Result<(), PerformError> {
    Ok(())
}

/// At most 100 of a tenant's start per minute.
#[background_job(concurrency_key = "tenant", rate = "100/1m")]
fn notify(tenant: String) -> Result<(), PerformError> {
    let _ = tenant;
    Ok(())
}

fn main() {
    assert_eq!(
        sync_tenant("acme".into(), true).concurrency_key().as_deref(),
        Some("acme")
    );
    assert_eq!(SyncTenantJob::MAX_CONCURRENT, Some(2));
    assert_eq!(
        rebuild(Account { id: 7 }).concurrency_key().as_deref(),
        Some(r#"{"id":7}"#)
    );
    assert_eq!(ReindexJob::MAX_CONCURRENT, Some(4));
    assert_eq!(reindex().concurrency_key(), None);
    let rate = NotifyJob::RATE.expect("a rate");
    assert_eq!((rate.limit(), rate.period().as_secs()), (100, 60));
    assert_eq!(rate.to_string(), "100/1m");
    assert_eq!(SyncTenantJob::RATE, None);
    let _ = EnqueueOptions::new()
        .concurrency_key("tenant-7")
        .max_concurrent(3)
        .rate("5/1s".parse().expect("a rate"));
}
