//! A worker process for the crash test:
//! `test-worker DATABASE_URL WORKERS BATCH_SIZE POLL_MS SLOW_JOB_MS`.
//! Prints `ready` once its runner has started, then runs until killed.

use std::time::Duration;

use skiplock_tests::crash_jobs::{WorkerContext, QUEUE};

fn main() {
    skiplock_tests::init_tracing();
    let args: Vec<String> = std::env::args().collect();
    let [_, url, workers, batch, poll_ms, slow_ms] = &args[..] else {
        eprintln!("usage: test-worker DATABASE_URL WORKERS BATCH_SIZE POLL_MS SLOW_JOB_MS");
        std::process::exit(2);
    };
    let runner = skiplock::Runner::builder(WorkerContext)
        .database_url(url.as_str())
        .queue(QUEUE, workers.parse().expect("WORKERS"))
        .batch_size(batch.parse().expect("BATCH_SIZE"))
        .poll_interval(Duration::from_millis(poll_ms.parse().expect("POLL_MS")))
        .slow_job_threshold(Duration::from_millis(slow_ms.parse().expect("SLOW_JOB_MS")))
        .build()
        .expect("runner");
    let _running = runner.start();
    println!("ready");
    loop {
        std::thread::park();
    }
}
