//! Runs the example application's `images` queue: `demo-worker DATABASE_URL`.
//! Prints `ready` once started; shuts down gracefully when stdin closes.

use std::io::Read;
use std::time::Duration;

fn main() {
    skiplock_tests::init_tracing();
    let url = std::env::args()
        .nth(1)
        .expect("usage: demo-worker DATABASE_URL");
    let runner = skiplock::Runner::builder(skiplock_examples::App::new())
        .database_url(url)
        .queue("images", 1)
        .poll_interval(Duration::from_millis(50))
        .build()
        .expect("runner");
    let running = runner.start();
    println!("ready");
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    let report = running.shutdown(Duration::from_secs(10));
    assert_eq!(report.workers_still_running, 0);
}
