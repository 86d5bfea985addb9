//! A runner process for the periodic tests: `periodic-worker DATABASE_URL POLL_MS`.
//! Declares a schedule ticking every second whose job (on a queue no one
//! serves, so the jobs stay for the test to count) carries its tick.
//! Prints `ready` once its runner has started, then runs until killed.

use std::time::Duration;

use skiplock::{background_job, Periodic};

#[background_job(queue = "ticks")]
fn tick(at: i64) {
    let _ = at;
}

fn main() {
    skiplock_tests::init_tracing();
    let args: Vec<String> = std::env::args().collect();
    let [_, url, poll_ms] = &args[..] else {
        eprintln!("usage: periodic-worker DATABASE_URL POLL_MS");
        std::process::exit(2);
    };
    let runner = skiplock::Runner::builder(())
        .database_url(url.as_str())
        .queue("periodic_idle", 1)
        .poll_interval(Duration::from_millis(poll_ms.parse().expect("a number")))
        .schedule(Periodic::new("* * * * * *", |at| tick(at.timestamp())).name("every-second"))
        .build()
        .expect("runner");
    skiplock_tests::run_until_killed(runner)
}
