//! `cargo xtask test [ARGS]...`: brings up what the test suite needs, then
//! runs `cargo test --workspace ARGS...`.
//!
//! - The tools the tests drive, installed with `apt-get` when missing (as
//!   root; otherwise it says what to install): Debian's `chromium` and
//!   `chromium-driver` (the dashboard's browser tests), `pgbouncer` (the
//!   PgBouncer tests), and `postgresql` when no server binaries are
//!   installed and `DATABASE_URL` is unset.
//! - The database: `DATABASE_URL` when set; otherwise a throwaway cluster
//!   from the installed server binaries, on a free port, deleted at the
//!   end. Whatever else runs on the machine (a server on 5432 or none) does
//!   not matter.

use std::process::{Command, ExitCode};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use throwaway_pg::{Binaries, Cluster};

#[derive(Parser)]
#[command(about = "Tasks of the skiplock workspace")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Installs what the tests need, starts a database, runs `cargo test --workspace`.
    Test {
        /// Passed to `cargo test` (e.g. `-p skiplock-tests --test web`; after `--`, to
        /// the test binaries).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// A tool a test drives: where the tests look for it, and Debian's package.
const TOOLS: [(&str, &str); 3] = [
    ("/usr/bin/chromium", "chromium"),
    ("/usr/bin/chromedriver", "chromium-driver"),
    ("/usr/sbin/pgbouncer", "pgbouncer"),
];

type Failure = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    let Task::Test { args } = Cli::parse().task;
    match test(&args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("xtask: {error}");
            ExitCode::FAILURE
        }
    }
}

fn test(args: &[String]) -> Result<ExitCode, Failure> {
    let given = std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty());
    let mut missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(path, _)| !std::path::Path::new(path).exists())
        .map(|(_, package)| *package)
        .collect();
    if given.is_none() && Binaries::find().is_err() {
        missing.push("postgresql");
    }
    install(&missing)?;

    let cluster = match given {
        Some(_) => None,
        None => {
            let cluster = Cluster::start()?;
            eprintln!("xtask: the tests use {cluster}");
            Some(cluster)
        }
    };
    // Ctrl-C reaches the tests (our process group) and they stop; this
    // process waits for them and then stops the cluster and deletes it.
    signal_hook::flag::register(
        signal_hook::consts::SIGINT,
        Arc::new(AtomicBool::new(false)),
    )?;
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo.args(["test", "--workspace"]).args(args);
    if let Some(cluster) = &cluster {
        cargo.env("DATABASE_URL", cluster.url());
    }
    let status = cargo
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    drop(cluster);
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

/// Installs Debian's `packages` with apt-get (as root), or says what to
/// install.
fn install(packages: &[&str]) -> Result<(), Failure> {
    if packages.is_empty() {
        return Ok(());
    }
    let list = packages.join(" ");
    if !nix::unistd::Uid::effective().is_root() {
        return Err(format!(
            "the tests need Debian's {list}: install them (`sudo apt-get install {list}`) \
             and run again"
        )
        .into());
    }
    eprintln!("xtask: installing {list} for the tests (apt-get)");
    // apt-get's progress goes nowhere; its errors still show.
    let apt = |args: &[&str]| -> Result<(), Failure> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(std::process::Stdio::null())
            .status()
            .map_err(|e| format!("cannot run apt-get to install {list}: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("`apt-get {}` failed ({status})", args.join(" ")).into())
        }
    };
    apt(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq"];
    install.extend(packages);
    apt(&install)
}
