//! The benchmark's jobs (kept here so the `bench` example links them the
//! way an application links its jobs).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use skiplock::{background_job, PerformError};

/// Runs of [`noop`] in this process: a drain watches it instead of
/// querying the table it is draining.
pub static NOOP_RUNS: AtomicUsize = AtomicUsize::new(0);

/// Does nothing but count: the queue's own cost per job.
#[background_job(queue = "bench")]
pub fn noop() -> Result<(), PerformError> {
    NOOP_RUNS.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Sleeps: the slow job among no-ops.
#[background_job(queue = "bench")]
pub fn sleep_ms(millis: u64) -> Result<(), PerformError> {
    std::thread::sleep(Duration::from_millis(millis));
    Ok(())
}

/// Where `stamp` jobs report when they started.
#[derive(Debug)]
pub struct Stamps(pub Mutex<Sender<(u64, Instant)>>);

/// Reports the moment its body starts.
#[background_job(queue = "bench_latency")]
pub fn stamp(stamps: &Stamps, seq: u64) -> Result<(), PerformError> {
    let now = Instant::now();
    stamps
        .0
        .lock()
        .unwrap()
        .send((seq, now))
        .map_err(PerformError::new)
}
