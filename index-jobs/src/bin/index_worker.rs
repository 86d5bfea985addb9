//! Runs the index queue: `index-worker --help`.
//!
//! Configuration by flags or environment; credentials only by environment
//! (`INDEX_GIT_TOKEN`, or `INDEX_GIT_SSH_KEY` and `INDEX_GIT_SSH_PASSPHRASE`),
//! so they never show in the process list or the logs. Stops gracefully on
//! SIGTERM or SIGINT: no new job is claimed, the running one finishes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use index_jobs::{Credentials, Index, RepoConfig, INDEX_QUEUE};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Keeps a crates.io-format git index up to date from the `index` job queue.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The PostgreSQL database holding the job queue.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// The upstream index: any URL git supports, or a path.
    #[arg(long, env = "INDEX_URL", hide_env_values = true)]
    index_url: String,
    /// Where to keep the working clone of the index.
    #[arg(long, env = "INDEX_CHECKOUT", default_value = "./index-checkout")]
    checkout: PathBuf,
    /// The index branch.
    #[arg(long, env = "INDEX_BRANCH", default_value = "master")]
    branch: String,
    /// Commit author name.
    #[arg(long, env = "INDEX_AUTHOR_NAME", default_value = "registry")]
    author_name: String,
    /// Commit author email.
    #[arg(long, env = "INDEX_AUTHOR_EMAIL", default_value = "registry@localhost")]
    author_email: String,
    /// Also keep a sparse index (cargo's `sparse+https://` protocol) in this
    /// directory, for a web server to serve as static files.
    #[arg(long, env = "INDEX_SPARSE_DIR")]
    sparse_dir: Option<PathBuf>,
    /// How long an idle worker waits before looking for jobs again, in milliseconds.
    #[arg(long, env = "INDEX_POLL_MS", default_value_t = 1000)]
    poll_ms: u64,
    /// How long a shutdown waits for the running job, in seconds.
    #[arg(long, default_value_t = 60)]
    shutdown_timeout: u64,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("index-worker: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    // Registered first, so a signal during start-up is not lost.
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    let credentials = Credentials::from_env(&args.index_url);
    let index = Index::open(RepoConfig {
        upstream: args.index_url,
        checkout: args.checkout,
        branch: args.branch,
        author_name: args.author_name,
        author_email: args.author_email,
        credentials,
    })
    .map_err(|e| format!("cannot open the index: {e}"))?;
    let index = match args.sparse_dir {
        Some(dir) => index
            .sparse_dir(dir)
            .map_err(|e| format!("cannot write the sparse index: {e}"))?,
        None => index,
    };
    let runner = skiplock::Runner::builder(index)
        .database_url(args.database_url)
        .queue(INDEX_QUEUE, 1)
        .poll_interval(Duration::from_millis(args.poll_ms))
        .build()?;
    let running = runner.start();
    println!("index-worker: running the `{INDEX_QUEUE}` queue");
    if let Some(signal) = signals.forever().next() {
        println!("index-worker: signal {signal}: finishing the running job, then stopping");
    }
    let report = running.shutdown(Duration::from_secs(args.shutdown_timeout));
    if report.workers_still_running > 0 {
        return Err("the running job did not finish in time; it will run again elsewhere".into());
    }
    println!("index-worker: stopped");
    Ok(())
}
