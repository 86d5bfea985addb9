//! A worker process for the flow-control tests:
//! `flow-worker DATABASE_URL WORKERS BATCH_SIZE`, with `WORKERS` workers on
//! each queue of `FLOW_QUEUES` (comma-separated; by default `flow`). Prints `ready` once
//! its runner has started, then runs until killed.

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
    let workers = workers.parse().expect("a number of workers");
    let queues = std::env::var("FLOW_QUEUES").unwrap_or_else(|_| QUEUE.to_owned());
    let mut builder = skiplock::Runner::builder(()).database_url(url.as_str());
    for queue in queues.split(',') {
        builder = builder.queue(queue, workers);
    }
    let runner = builder
        .batch_size(batch.parse().expect("a batch size"))
        .synchronous_commit(std::env::var("NOSYNC").is_err())
        .poll_interval(Duration::from_millis(500))
        .build()
        .expect("runner");
    skiplock_tests::run_until_killed(runner)
}
