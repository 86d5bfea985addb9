//! `async fn` jobs (skiplock's `tokio` feature): with an async connection,
//! a context, a timeout, or nothing.

use diesel_async::AsyncPgConnection;
use skiplock::{background_job, Job, PerformError};

pub struct Client;

#[background_job(queue = "hooks", timeout = "30s", max_attempts = 5)]
async fn call_hook(client: &Client, conn: &mut AsyncPgConnection, url: String) -> anyhow::Result<()> {
    let _ = (client, conn, url);
    Ok(())
}

#[background_job]
async fn cannot_fail(id: i64) {
    let _ = id;
}

fn main() {
    assert_eq!(CallHookJob::JOB_TYPE, "call_hook");
    let _ = (call_hook("https://example.com".into()), cannot_fail(1));
}
