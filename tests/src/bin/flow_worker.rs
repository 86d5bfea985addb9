//! A worker process for the flow-control tests:
//! `flow-worker DATABASE_URL WORKERS BATCH_SIZE`. Prints `ready` once its
//! runner has started, then runs until killed.

use std::time::Duration;

use skiplock_tests::flow_jobs::QUEUE;

fn main() {
    skiplock_tests::init_tracing();
    let args: Vec<String> = std::env::args().collect();
    let (url, workers, batch) = match &args[..] {
        [_, url, workers, batch] => (url, workers, batch),
        _ => {
            eprintln!("usage: flow-worker DATABASE_URL WORKERS BATCH_SIZE");
            std::process::exit(2);
        }
    };
    let runner = skiplock::Runner::builder(())
        .database_url(url.as_str())
        .queue(QUEUE, workers.parse().expect("a number of workers"))
        .batch_size(batch.parse().expect("a batch size"))
        .poll_interval(Duration::from_millis(500))
        .build()
        .expect("runner");
    skiplock_tests::run_until_killed(runner)
}
