//! A worker process for the crash tests:
//! `test-worker DATABASE_URL WORKERS BATCH_SIZE POLL_MS SLOW_JOB_MS [WINDOW_MS]`.
//! Prints `ready` once its runner has started, then runs until killed.

use std::time::Duration;

use skiplock_tests::crash_jobs::{WorkerContext, QUEUE};

fn main() {
    skiplock_tests::init_tracing();
    let args: Vec<String> = std::env::args().collect();
    let (url, numbers) = match &args[..] {
        [_, url, numbers @ ..] if (4..=5).contains(&numbers.len()) => (url, numbers),
        _ => {
            eprintln!("usage: test-worker DATABASE_URL WORKERS BATCH_SIZE POLL_MS SLOW_JOB_MS [WINDOW_MS]");
            std::process::exit(2);
        }
    };
    let number = |i: usize| -> u64 { numbers[i].parse().expect("a number") };
    let ms = |i: usize| Duration::from_millis(number(i));
    let mut builder = skiplock::Runner::builder(WorkerContext)
        .database_url(url.as_str())
        .queue(QUEUE, number(0) as usize)
        .batch_size(number(1) as u16)
        .poll_interval(ms(2))
        .slow_job_threshold(ms(3));
    if numbers.len() == 5 {
        builder = builder.completion_window(ms(4));
    }
    skiplock_tests::run_until_killed(builder.build().expect("runner"))
}
