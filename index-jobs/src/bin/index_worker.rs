//! Runs the index queue, or fills and verifies the sparse index: `index-worker --help`.
//!
//! Configuration by flags or environment; credentials only by environment
//! (`INDEX_GIT_TOKEN`, or `INDEX_GIT_SSH_KEY` and `INDEX_GIT_SSH_PASSPHRASE`,
//! or the user info of `INDEX_URL`), so they never show in the process list
//! or the logs. Stops gracefully on SIGTERM or SIGINT: no new job is
//! claimed, the running one finishes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use index_jobs::{Credentials, FillProgress, Index, RepoConfig, INDEX_QUEUE};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Keeps a crates.io-format git index up to date from the `index` job queue.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// The PostgreSQL database holding the job queue (to run the queue).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    database_url: Option<String>,
    /// The upstream index: any URL git supports, or a path. A token in an
    /// https URL (`https://TOKEN@host/..` or `https://user:TOKEN@host/..`)
    /// is given to the server when it asks, and written nowhere.
    #[arg(long, env = "INDEX_URL", hide_env_values = true, global = true)]
    index_url: Option<String>,
    /// Where to keep the working clone of the index (one process per checkout).
    #[arg(
        long,
        env = "INDEX_CHECKOUT",
        default_value = "./index-checkout",
        global = true
    )]
    checkout: PathBuf,
    /// The index branch.
    #[arg(long, env = "INDEX_BRANCH", default_value = "master", global = true)]
    branch: String,
    /// Commit author name.
    #[arg(
        long,
        env = "INDEX_AUTHOR_NAME",
        default_value = "registry",
        global = true
    )]
    author_name: String,
    /// Commit author email.
    #[arg(
        long,
        env = "INDEX_AUTHOR_EMAIL",
        default_value = "registry@localhost",
        global = true
    )]
    author_email: String,
    /// Also keep a sparse index (cargo's `sparse+https://` protocol) in this
    /// directory, for a web server to serve as static files.
    #[arg(long, env = "INDEX_SPARSE_DIR", global = true)]
    sparse_dir: Option<PathBuf>,
    /// How long an idle worker waits before looking for jobs again, in milliseconds.
    #[arg(long, env = "INDEX_POLL_MS", default_value_t = 1000, global = true)]
    poll_ms: u64,
    /// How long a shutdown waits for the running job, in seconds.
    #[arg(long, default_value_t = 60, global = true)]
    shutdown_timeout: u64,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fill the sparse directory from the git index: every crate file and
    /// `config.json`, each written unless already there (run it after
    /// enabling `--sparse-dir` on an existing index; restartable; safe
    /// beside running workers). Needs `--index-url` and `--sparse-dir`,
    /// and a `--checkout` of its own if a worker runs on this machine.
    FillSparse,
    /// Compare the sparse directory with the git index, writing nothing;
    /// exits with 1 when they differ.
    VerifySparse,
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
        Ok(code) => code,
        Err(e) => {
            eprintln!("index-worker: {e}");
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error>;

fn run(args: Args) -> Result<ExitCode, BoxError> {
    match args.command {
        None => serve(args).map(|()| ExitCode::SUCCESS),
        Some(Command::FillSparse) => fill(&open_sparse(&args)?).map(|()| ExitCode::SUCCESS),
        Some(Command::VerifySparse) => verify(&open_sparse(&args)?),
    }
}

fn open(args: &Args) -> Result<Index, BoxError> {
    let index_url = args
        .index_url
        .clone()
        .ok_or("--index-url (or INDEX_URL) is required: the upstream index")?;
    let credentials = Credentials::from_env(&index_url);
    let index = Index::open(RepoConfig {
        upstream: index_url,
        checkout: args.checkout.clone(),
        branch: args.branch.clone(),
        author_name: args.author_name.clone(),
        author_email: args.author_email.clone(),
        credentials,
    })
    .map_err(|e| format!("cannot open the index: {e}"))?;
    Ok(match &args.sparse_dir {
        Some(dir) => index
            .sparse_dir(dir)
            .map_err(|e| format!("cannot write the sparse index: {e}"))?,
        None => index,
    })
}

fn open_sparse(args: &Args) -> Result<Index, BoxError> {
    if args.sparse_dir.is_none() {
        return Err("--sparse-dir (or INDEX_SPARSE_DIR) is required: the sparse directory".into());
    }
    open(args)
}

fn fill(index: &Index) -> Result<(), BoxError> {
    let began = Instant::now();
    let mut last = Instant::now();
    let report = index.fill_sparse(|p: &FillProgress| {
        if p.done == p.total || last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            eprintln!(
                "index-worker: filling: {} of {} files looked at, {} written or removed",
                p.done, p.total, p.changed
            );
        }
    })?;
    println!(
        "index-worker: sparse index filled from {}: {} files, {} written, {} removed, \
         {} left newer, in {:.1} s",
        report.commit,
        report.files,
        report.written,
        report.removed,
        report.newer,
        began.elapsed().as_secs_f64()
    );
    Ok(())
}

fn verify(index: &Index) -> Result<ExitCode, BoxError> {
    let check = index.verify_sparse()?;
    let show = |what: &str, paths: &[PathBuf]| {
        for path in paths.iter().take(20) {
            println!("{what}: {}", path.display());
        }
        if paths.len() > 20 {
            println!("{what}: ... and {} more", paths.len() - 20);
        }
    };
    show("missing", &check.missing);
    show("different", &check.different);
    show("extra", &check.extra);
    println!(
        "index-worker: {} files at {}: {} missing, {} different, {} extra, {} newer",
        check.files,
        check.commit,
        check.missing.len(),
        check.different.len(),
        check.extra.len(),
        check.newer
    );
    if check.is_clean() {
        Ok(ExitCode::SUCCESS)
    } else {
        println!("index-worker: run `index-worker fill-sparse` to repair");
        Ok(ExitCode::FAILURE)
    }
}

fn serve(args: Args) -> Result<(), BoxError> {
    // Registered first, so a signal during start-up is not lost.
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    let database_url = args
        .database_url
        .clone()
        .ok_or("--database-url (or DATABASE_URL) is required to run the queue")?;
    let index = open(&args)?;
    let runner = skiplock::Runner::builder(index)
        .database_url(database_url)
        .exclusive_queue(INDEX_QUEUE)
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
