//! Jobs of the flow-control tests, run by the `flow-worker` binary. Each
//! appends its run to the file named by `SKIPLOCK_TEST_RUNS`: key, job
//! number, pid, start and end (µs since the epoch).

use std::time::Duration;

use skiplock::{background_job, PerformError};

use crate::crash_jobs::micros;

/// The queue of the flow-control tests.
pub const QUEUE: &str = "flow";

/// At most two jobs of a tenant run at once.
#[background_job(queue = "flow", concurrency_key = "tenant", max_concurrent = 2)]
pub fn tenant_job(tenant: String, n: i64, ms: u64) -> Result<(), PerformError> {
    record(&tenant, n, ms)
}

/// At most three jobs of this type run at once (no key).
#[background_job(queue = "flow", max_concurrent = 3)]
pub fn type_limited(n: i64, ms: u64) -> Result<(), PerformError> {
    record("type_limited", n, ms)
}

/// Tenants take turns; no limit.
#[background_job(queue = "flow", concurrency_key = "tenant")]
pub fn fair_job(tenant: String, n: i64, ms: u64) -> Result<(), PerformError> {
    record(&tenant, n, ms)
}

/// No key: shares the queue with the keyed jobs.
#[background_job(queue = "flow")]
pub fn plain_job(n: i64, ms: u64) -> Result<(), PerformError> {
    record("plain", n, ms)
}

fn record(key: &str, n: i64, ms: u64) -> Result<(), PerformError> {
    use std::io::Write;
    let started = micros();
    std::thread::sleep(Duration::from_millis(ms));
    let line = format!("{key} {n} {} {started} {}\n", std::process::id(), micros());
    let path = std::env::var("SKIPLOCK_TEST_RUNS")
        .map_err(|_| PerformError::new("SKIPLOCK_TEST_RUNS is not set"))?;
    // One write of one short line to a file opened for appending: lines
    // of several processes do not mix.
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .and_then(|mut file| file.write_all(line.as_bytes()))
        .map_err(|e| PerformError::new(e.to_string()))
}

/// One run, as its line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The job's concurrency key (or what stands for it).
    pub key: String,
    /// The job's number.
    pub n: i64,
    /// The process that ran it.
    pub pid: u32,
    /// When it started (µs since the epoch).
    pub started_us: i64,
    /// When it ended.
    pub ended_us: i64,
}

/// The runs logged in `path` so far, in the order they were logged.
pub fn runs(path: &std::path::Path) -> Vec<Run> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            Some(Run {
                key: fields.next()?.to_owned(),
                n: fields.next()?.parse().ok()?,
                pid: fields.next()?.parse().ok()?,
                started_us: fields.next()?.parse().ok()?,
                ended_us: fields.next()?.parse().ok()?,
            })
        })
        .collect()
}

/// The most runs of `key` running at any instant (a run ending at the
/// instant another starts does not overlap it).
pub fn most_at_once(runs: &[Run], key: &str) -> usize {
    let mut events: Vec<(i64, i32)> = runs
        .iter()
        .filter(|run| run.key == key)
        .flat_map(|run| [(run.started_us, 1), (run.ended_us, -1)])
        .collect();
    // Ends before starts at the same instant.
    events.sort_unstable();
    let (mut now, mut most) = (0_i64, 0_i64);
    for (_, change) in events {
        now += i64::from(change);
        most = most.max(now);
    }
    usize::try_from(most).unwrap_or(0)
}

/// Fails at once, for good: its tenant's slot must still be let go.
#[background_job(
    queue = "flow",
    concurrency_key = "tenant",
    max_concurrent = 1,
    max_attempts = 1
)]
pub fn failing_job(tenant: String, n: i64) -> Result<(), PerformError> {
    Err(PerformError::new(format!("job {n} of {tenant} fails")))
}
