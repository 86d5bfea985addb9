//! Jobs of the flow-control tests, run by the `flow-worker` binary. Each
//! appends its run to the file named by `SKIPLOCK_TEST_RUNS`: key, job
//! number, pid, start and end (µs since the epoch).

use skiplock::{background_job, PerformError};

use crate::crash_jobs::log_timed_run;

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

/// At most 100 of this type start in any second (no key).
#[background_job(queue = "flow", rate = "100/1s")]
pub fn rated_job(n: i64, ms: u64) -> Result<(), PerformError> {
    record("rated", n, ms)
}

/// At most 20 of a tenant's start in any second.
#[background_job(queue = "flow", concurrency_key = "tenant", rate = "20/1s")]
pub fn tenant_rated(tenant: String, n: i64, ms: u64) -> Result<(), PerformError> {
    record(&tenant, n, ms)
}

/// A job of another queue, whose limits are the queue's own (set at run
/// time).
#[background_job(queue = "capped")]
pub fn queue_job(queue: String, n: i64, ms: u64) -> Result<(), PerformError> {
    record(&queue, n, ms)
}

fn record(key: &str, n: i64, ms: u64) -> Result<(), PerformError> {
    log_timed_run(&format!("{key} {n}"), ms)
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

/// The most runs of `key` that started within any `period_us`
/// microseconds (a half-open window: a start exactly one period after
/// another is in the next window).
pub fn most_started_within(runs: &[Run], key: &str, period_us: i64) -> usize {
    let starts = starts_of(runs, key);
    let mut most = 0;
    let mut first = 0;
    for (last, &start) in starts.iter().enumerate() {
        while start - starts[first] >= period_us {
            first += 1;
        }
        most = most.max(last + 1 - first);
    }
    most
}

/// The long-run rate of `key`'s runs as a share of `limit` starts per
/// `period_us`: with the starts in order, `k` whole periods' worth of
/// starts (`k * limit`, as many as there are) against the time from the
/// first to the `k * limit`-th. 1.0 when each start is followed by the
/// `limit`-th next exactly one period later, as a limit of the starts in
/// any window allows at best.
pub fn long_run_share(runs: &[Run], key: &str, limit: usize, period_us: i64) -> f64 {
    let starts = starts_of(runs, key);
    let periods = starts.len().saturating_sub(1) / limit;
    assert!(periods >= 3, "{key}: too few runs to measure a rate");
    let took = starts[periods * limit] - starts[0];
    (periods as f64 * period_us as f64) / took as f64
}

/// When the runs of `key` started, in order.
fn starts_of(runs: &[Run], key: &str) -> Vec<i64> {
    let mut starts: Vec<i64> = runs
        .iter()
        .filter(|run| run.key == key)
        .map(|run| run.started_us)
        .collect();
    starts.sort_unstable();
    starts
}
