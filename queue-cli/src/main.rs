//! `skiplock`: operate the skiplock job queue from the command line.
//!
//! Every command reads `DATABASE_URL` (or `--database-url`). Read commands
//! print tables for people and `--json` for scripts. `monitor` is the check
//! a pager runs: exit 0 healthy, 1 warning, 2 critical, with a one-line
//! summary first.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use diesel::PgConnection;
use skiplock::{AdminError, BulkChange, JobId, JobRecord, JobState, QueueStatus, RunnerRecord};

mod connect;
mod monitor;
mod table;
mod web;

use table::{age, shorten, when, Table};

/// Inspect and operate the job queue in a PostgreSQL database.
#[derive(Debug, Parser)]
#[command(name = "skiplock", version)]
struct Cli {
    /// The database holding the queue.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// Give up connecting after this long (a server that accepts and never answers).
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Cancel each query after this long.
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    statement_timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or upgrade the queue's tables (idempotent).
    Migrate,
    /// Jobs per queue and type: ready, scheduled, running, failing, dead; paused queues.
    Status(Output),
    /// Jobs that failed and will be retried.
    Failed(Listing),
    /// Dead jobs: never run again until retried.
    Dead(Listing),
    /// One job, whole.
    Show {
        /// The job's id.
        id: i64,
        #[command(flatten)]
        output: Output,
    },
    /// The runners that announced themselves, and what they run.
    Runners(Output),
    /// Run jobs again now: by id, or every failed (dead or failing) job matching the filters.
    Retry(Selection),
    /// Delete jobs for good: by id, or every failed (dead or failing) job matching the filters.
    Discard(Selection),
    /// Check the queue's health for a pager: exit 0 ok, 1 warning, 2 critical.
    Monitor(monitor::Thresholds),
    /// Pause a queue on every runner: running jobs finish, nothing new starts (survives restarts).
    Pause {
        /// The queue.
        queue: String,
    },
    /// Resume a paused queue.
    Resume {
        /// The queue.
        queue: String,
    },
    /// Set a queue's own limits for every runner: most running at once, most starts per period.
    Limit {
        /// The queue.
        queue: String,
        /// At most this many of its jobs run at once, anywhere (1 to 1000).
        #[arg(long, value_name = "N")]
        max_running: Option<u32>,
        /// At most this many of its jobs start in any period: `100/1s`, `10/1m`.
        #[arg(long, value_name = "LIMIT/PERIOD")]
        rate: Option<skiplock::Rate>,
        /// Forget the queue's limits.
        #[arg(long, conflicts_with_all = ["max_running", "rate"])]
        clear: bool,
    },
    /// Flow control: every queue's own limits, and the limited concurrency keys with waiting jobs.
    Limits {
        /// Show at most this many keys (those waiting longest first).
        #[arg(long, default_value_t = 20)]
        keys: i64,
        #[command(flatten)]
        output: Output,
    },
    /// Serve the dashboard: queues, failing and dead jobs, runners; retry, discard, pause.
    Web(web::WebArgs),
    /// Rebuild the jobs table's indexes while the queue runs, giving back the space
    /// that a long transaction's dead entries took (refused while one still holds them).
    Reindex {
        /// Wait at most this long for a lock or for running transactions; refuse while
        /// a transaction open longer than this holds back VACUUM.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        wait: Duration,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Debug, Args)]
struct Output {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct Listing {
    #[command(flatten)]
    output: Output,
    /// Show whole error texts.
    #[arg(long, short)]
    verbose: bool,
    /// At most this many jobs.
    #[arg(long, default_value_t = 100)]
    limit: i64,
}

#[derive(Debug, Args)]
struct Selection {
    /// Job ids.
    ids: Vec<i64>,
    /// Every failed job (with --type / --queue: those matching).
    #[arg(long, conflicts_with = "ids")]
    all: bool,
    /// Failed jobs of this type.
    #[arg(long = "type", conflicts_with = "ids")]
    job_type: Option<String>,
    /// Failed jobs on this queue.
    #[arg(long, conflicts_with = "ids")]
    queue: Option<String>,
    /// Do not ask for confirmation of a bulk change.
    #[arg(long, short)]
    yes: bool,
}

/// A failure of the command, printed as `skiplock: {0}`.
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let is_monitor = matches!(cli.command, Command::Monitor(_));
    // Whatever fails, the password given is not shown (libpq quotes a
    // malformed connection string whole in its errors).
    let secrets = cli
        .database_url
        .as_deref()
        .map(skiplock::connection_secrets)
        .unwrap_or_default();
    match run(cli) {
        Ok(code) => code,
        Err(Failure(message)) if is_monitor => {
            // A check that cannot look is a page.
            let message = skiplock::scrub_secrets(&message, &secrets);
            println!("CRITICAL: cannot check the queue: {message}");
            ExitCode::from(2)
        }
        Err(Failure(message)) => {
            let message = skiplock::scrub_secrets(&message, &secrets);
            eprintln!("skiplock: {message}");
            ExitCode::FAILURE
        }
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn run(cli: Cli) -> Result<ExitCode, Failure> {
    if let Command::Web(args) = &cli.command {
        return web::serve(
            cli.database_url.as_deref(),
            cli.connect_timeout,
            cli.statement_timeout,
            args,
        );
    }
    let mut conn = connect::connect(
        cli.database_url.as_deref(),
        cli.connect_timeout,
        cli.statement_timeout,
    )?;
    match cli.command {
        Command::Migrate => {
            let report = skiplock::migrate(&mut conn)?;
            if report.applied.is_empty() {
                println!(
                    "the queue schema is up to date (version {})",
                    report.current_version
                );
            } else {
                println!(
                    "applied {} migration(s): {}; the queue schema is now at version {}",
                    report.applied.len(),
                    report.applied.join(", "),
                    report.current_version
                );
            }
        }
        Command::Status(output) => {
            let status = skiplock::queue_status(&mut conn, skiplock::RUNNER_FRESH_SECS)?;
            let paused = skiplock::paused_queues(&mut conn)?;
            if output.json {
                // Each row says whether its queue is paused.
                print_json(&status)?;
            } else {
                print_status(&status, &paused);
                print_exclusive(&skiplock::runners(&mut conn)?);
                print_schedules(&skiplock::schedules(
                    &mut conn,
                    skiplock::RUNNER_FRESH_SECS,
                )?);
                let (queues, keys) = skiplock::flow_status(&mut conn, 10)?;
                print_flow(&queues, &keys);
            }
        }
        Command::Pause { queue } => {
            if skiplock::pause_queue(&mut conn, &queue)? {
                println!("paused queue `{queue}`: running jobs finish, nothing new starts");
            } else {
                println!("queue `{queue}` was already paused");
            }
        }
        Command::Resume { queue } => {
            if skiplock::resume_queue(&mut conn, &queue)? {
                println!("resumed queue `{queue}`");
            } else {
                println!("queue `{queue}` was not paused");
            }
        }
        Command::Limit {
            queue,
            max_running,
            rate,
            clear,
        } => {
            if !clear && max_running.is_none() && rate.is_none() {
                return Err(Failure(
                    "say what to limit: --max-running N, --rate LIMIT/PERIOD, or --clear".into(),
                ));
            }
            let limits = skiplock::QueueLimits { max_running, rate };
            skiplock::set_queue_limits(&mut conn, &queue, limits)?;
            if clear {
                println!("queue `{queue}` has no limits of its own now");
            } else {
                println!("queue `{queue}`: {}", describe_limits(&limits));
            }
        }
        Command::Limits { keys, output } => {
            let (queues, keys) = skiplock::flow_status(&mut conn, keys)?;
            if output.json {
                print_json(&serde_json::json!({ "queues": queues, "keys": keys }))?;
            } else if queues.is_empty() && keys.is_empty() {
                println!("no queue has limits of its own, and no limited key has waiting jobs");
            } else {
                print_flow(&queues, &keys);
            }
        }
        Command::Failed(listing) => {
            skiplock::require_schema(&mut conn)?;
            list(skiplock::failing_jobs(&mut conn, listing.limit)?, &listing)?;
        }
        Command::Dead(listing) => {
            skiplock::require_schema(&mut conn)?;
            list(skiplock::dead_jobs(&mut conn, listing.limit)?, &listing)?;
        }
        Command::Show { id, output } => {
            skiplock::require_schema(&mut conn)?;
            let job = skiplock::find_job(&mut conn, JobId(id))?;
            if output.json {
                print_json(&job)?;
            } else {
                print_job(&job)?;
            }
        }
        Command::Runners(output) => {
            let runners = skiplock::runners(&mut conn)?;
            if output.json {
                print_json(&runners)?;
            } else {
                print_runners(&runners);
            }
        }
        Command::Retry(selection) => {
            return change(&mut conn, &selection, "retry", skiplock::retry_job)
        }
        Command::Discard(selection) => {
            return change(&mut conn, &selection, "discard", skiplock::discard_job)
        }
        Command::Monitor(thresholds) => return monitor::check(&mut conn, &thresholds),
        Command::Reindex { wait, output } => {
            let report = skiplock::rebuild_indexes(&mut conn, wait)?;
            if output.json {
                print_json(&report)?;
            } else {
                print_rebuild(&report);
            }
        }
        Command::Web(_) => unreachable!("served above"),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_rebuild(report: &skiplock::RebuildReport) {
    for name in &report.dropped {
        println!("dropped {name}, the unfinished copy of an interrupted rebuild");
    }
    let mut table = Table::new(["index", "before", "after"]);
    for index in &report.rebuilt {
        let before = if index.was_invalid {
            format!("{} (invalid)", bytes(index.bytes_before))
        } else {
            bytes(index.bytes_before)
        };
        table.row([index.name.clone(), before, bytes(index.bytes_after)]);
    }
    print!("{table}");
    let before: i64 = report.rebuilt.iter().map(|i| i.bytes_before).sum();
    let after: i64 = report.rebuilt.iter().map(|i| i.bytes_after).sum();
    println!(
        "rebuilt {} index(es): {} before, {} now",
        report.rebuilt.len(),
        bytes(before),
        bytes(after)
    );
    for name in &report.foreign_invalid {
        println!(
            "{name} is invalid and not one of the queue's indexes: left as it is \
             (DROP INDEX CONCURRENTLY drops it)"
        );
    }
}

/// A size on disk, in the unit that reads best.
fn bytes(n: i64) -> String {
    let n = n as f64;
    if n >= 1024.0 * 1024.0 {
        format!("{:.1} MB", n / (1024.0 * 1024.0))
    } else {
        format!("{:.0} kB", n / 1024.0)
    }
}

fn print_status(status: &[QueueStatus], paused: &[skiplock::PausedQueue]) {
    let mut table = Table::new([
        "queue",
        "job type",
        "ready",
        "scheduled",
        "running",
        "failing",
        "dead",
        "oldest ready",
    ]);
    for row in status {
        let queue = if row.paused {
            format!("{} (paused)", row.queue)
        } else {
            row.queue.clone()
        };
        table.row([
            queue,
            row.job_type.clone(),
            row.ready.to_string(),
            row.scheduled.to_string(),
            row.running.to_string(),
            row.failing.to_string(),
            row.dead.to_string(),
            row.oldest_ready_secs.map_or("-".into(), age),
        ]);
    }
    if status.is_empty() {
        println!("no jobs");
    } else {
        print!("{table}");
    }
    for row in status
        .iter()
        .filter(|r| !r.served && r.ready + r.scheduled > 0)
    {
        println!(
            "no live runner registers `{}` on `{}`: its {} job(s) wait for one that does",
            row.job_type,
            row.queue,
            row.ready + row.scheduled
        );
    }
    for pause in paused {
        println!(
            "paused: {} since {}",
            pause.queue,
            pause.paused_at.format("%Y-%m-%d %H:%M:%S UTC")
        );
    }
}

/// Who runs each exclusive queue, and which runners stand by for it.
fn print_exclusive(runners: &[RunnerRecord]) {
    let live: Vec<&RunnerRecord> = runners
        .iter()
        .filter(|r| r.last_seen_secs <= skiplock::RUNNER_FRESH_SECS)
        .collect();
    let mut queues: Vec<&String> = live.iter().flat_map(|r| &r.exclusive).collect();
    queues.sort();
    queues.dedup();
    let name = |r: &&RunnerRecord| format!("{} (host {}, pid {})", r.id, r.hostname, r.pid);
    for queue in queues {
        let (standby, running): (Vec<&RunnerRecord>, Vec<&RunnerRecord>) = live
            .iter()
            .filter(|r| r.exclusive.contains(queue))
            .partition(|r| r.standby.contains(queue));
        let running: Vec<String> = running.iter().map(name).collect();
        println!(
            "exclusive queue `{queue}`: run by {}",
            if running.is_empty() {
                "no runner yet".to_owned()
            } else {
                running.join(", ")
            }
        );
        if !standby.is_empty() {
            let standby: Vec<String> = standby.iter().map(name).collect();
            println!(
                "  {} more runner(s) serve it and stand by (started twice?): {}",
                standby.len(),
                standby.join(", ")
            );
        }
    }
}

/// "at most 20 running, 50/1s".
fn describe_limits(limits: &skiplock::QueueLimits) -> String {
    let mut parts = Vec::new();
    if let Some(max) = limits.max_running {
        parts.push(format!("at most {max} running"));
    }
    if let Some(rate) = limits.rate {
        parts.push(format!("at most {rate} starting"));
    }
    parts.join(", ")
}

/// Flow control: the queues' own limits, and the limited keys with
/// waiting jobs, with what each holds now.
fn print_flow(queues: &[skiplock::QueueLimitStatus], keys: &[skiplock::KeyLimitStatus]) {
    if !queues.is_empty() {
        let mut table = Table::new([
            "queue",
            "max running",
            "running",
            "rate",
            "started in window",
        ]);
        for queue in queues {
            table.row([
                queue.queue.clone(),
                queue
                    .limits
                    .max_running
                    .map_or("-".into(), |m| m.to_string()),
                queue.running.to_string(),
                queue.limits.rate.map_or("-".into(), |r| r.to_string()),
                queue.recent_starts.to_string(),
            ]);
        }
        println!();
        print!("{table}");
    }
    if !keys.is_empty() {
        let mut table = Table::new([
            "queue",
            "key",
            "ready",
            "max running",
            "running",
            "rate",
            "started in window",
            "first waited",
        ]);
        for key in keys {
            table.row([
                key.queue.clone(),
                shorten(&key.label(), 40),
                key.ready.to_string(),
                key.max_concurrent.map_or("-".into(), |m| m.to_string()),
                key.running.to_string(),
                key.rate.map_or("-".into(), |r| r.to_string()),
                key.recent_starts.to_string(),
                age(key.waited.as_secs_f64()),
            ]);
        }
        println!();
        print!("{table}");
    }
}

/// The periodic jobs: last and next tick of each schedule.
fn print_schedules(schedules: &[skiplock::ScheduleRecord]) {
    if schedules.is_empty() {
        return;
    }
    let mut table = Table::new(["schedule", "cron", "time zone", "last tick", "next tick"]);
    for schedule in schedules {
        let next = match (schedule.declared, schedule.next_tick) {
            (false, _) => "stopped: no live runner declares it".to_owned(),
            (true, Some(next)) => when(next),
            (true, None) => "-".to_owned(),
        };
        table.row([
            schedule.name.clone(),
            schedule.cron.clone(),
            schedule.time_zone.clone(),
            schedule.last_tick.map_or("never".into(), when),
            next,
        ]);
    }
    println!();
    print!("{table}");
}

fn list(jobs: Vec<JobRecord>, listing: &Listing) -> Result<(), Failure> {
    if listing.output.json {
        return print_json(&jobs);
    }
    if jobs.is_empty() {
        println!("no jobs");
        return Ok(());
    }
    let mut table = Table::new([
        "id",
        "type",
        "queue",
        "attempts",
        "first failure",
        "next attempt",
        "last error",
    ]);
    for job in &jobs {
        let error = job.last_error.as_deref().unwrap_or("");
        table.row([
            job.id.to_string(),
            job.job_type.clone(),
            job.queue.clone(),
            job.attempts.to_string(),
            job.first_failed_at.map_or("-".into(), when),
            if job.dead_at.is_some() {
                "never (dead)".into()
            } else {
                when(job.run_at)
            },
            if listing.verbose {
                error.to_owned()
            } else {
                shorten(error, 60)
            },
        ]);
    }
    print!("{table}");
    Ok(())
}

fn print_job(job: &JobRecord) -> Result<(), Failure> {
    let state = if job.dead_at.is_some() {
        "dead"
    } else if job.attempts > 0 {
        "failing"
    } else {
        "queued"
    };
    println!("job {} ({state})", job.id);
    println!("  type:          {}", job.job_type);
    println!("  queue:         {}", job.queue);
    println!("  priority:      {}", job.priority);
    println!("  created:       {}", when(job.created_at));
    println!(
        "  next attempt:  {}",
        if job.dead_at.is_some() {
            "never (dead)".into()
        } else {
            when(job.run_at)
        }
    );
    println!("  attempts:      {}", job.attempts);
    if let Some(at) = job.first_failed_at {
        println!("  first failure: {}", when(at));
    }
    if let Some(at) = job.last_failed_at {
        println!("  last failure:  {}", when(at));
    }
    if let Some(at) = job.dead_at {
        println!("  dead since:    {}", when(at));
    }
    if let Some(error) = &job.last_error {
        println!("  last error:    {error}");
    }
    println!("  payload:");
    for line in serde_json::to_string_pretty(&job.payload)?.lines() {
        println!("    {line}");
    }
    Ok(())
}

fn print_runners(runners: &[RunnerRecord]) {
    if runners.is_empty() {
        println!("no runner has announced itself");
        return;
    }
    let mut table = Table::new(["runner", "host", "pid", "queues", "last seen", "running"]);
    for runner in runners {
        table.row([
            runner.id.clone(),
            runner.hostname.clone(),
            runner.pid.to_string(),
            runner
                .queues
                .iter()
                .map(|q| {
                    if runner.standby.contains(q) {
                        format!("{q} (standby)")
                    } else if runner.exclusive.contains(q) {
                        format!("{q} (exclusive)")
                    } else {
                        q.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join(","),
            format!("{} ago", age(runner.last_seen_secs)),
            runner
                .running
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ]);
    }
    print!("{table}");
}

/// Retries or discards the selected jobs; asks first for a bulk change.
fn change(
    conn: &mut PgConnection,
    selection: &Selection,
    verb: &str,
    apply: fn(&mut PgConnection, JobId) -> Result<(), AdminError>,
) -> Result<ExitCode, Failure> {
    skiplock::require_schema(conn)?;
    let past = if verb == "retry" {
        "retried"
    } else {
        "discarded"
    };
    if selection.ids.is_empty() {
        return change_failed(conn, selection, verb, past);
    }
    let (mut changed, mut refused) = (0, 0);
    for &id in &selection.ids {
        match apply(conn, JobId(id)) {
            Ok(()) => changed += 1,
            Err(e @ (AdminError::NotFound(_) | AdminError::Running(_))) => {
                eprintln!("skiplock: {e}");
                refused += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    println!("{past} {changed} job(s)");
    Ok(if refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Retries or discards every failed job the selection's filters match, a
/// thousand jobs to a statement ([`skiplock::change_failed_jobs`]); asks
/// first.
fn change_failed(
    conn: &mut PgConnection,
    selection: &Selection,
    verb: &str,
    past: &str,
) -> Result<ExitCode, Failure> {
    if !selection.all && selection.job_type.is_none() && selection.queue.is_none() {
        return Err(Failure(format!(
            "name the jobs to {verb}: ids, or --all, --type TYPE or --queue QUEUE (failed jobs only)"
        )));
    }
    let (job_type, queue) = (selection.job_type.as_deref(), selection.queue.as_deref());
    let count = skiplock::count_failed_jobs(conn, JobState::Failed, job_type, queue)?;
    if count == 0 {
        println!("no matching job: nothing to {verb}");
        return Ok(ExitCode::SUCCESS);
    }
    if !selection.yes && !confirm(&format!("{verb} {count} job(s)?"))? {
        return Err(Failure(format!(
            "nothing changed (confirm, or pass --yes to {verb} without asking)"
        )));
    }
    let change = if verb == "retry" {
        BulkChange::Retry
    } else {
        BulkChange::Discard
    };
    let outcome = skiplock::change_failed_jobs(conn, change, JobState::Failed, job_type, queue)?;
    println!("{past} {} job(s)", outcome.changed);
    if outcome.left > 0 {
        eprintln!(
            "skiplock: {} job(s) left alone: a worker is running them",
            outcome.left
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn confirm(question: &str) -> Result<bool, Failure> {
    print!("{question} [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// The longest duration a flag takes: ten years.
const LONGEST: Duration = Duration::from_secs(10 * 366 * 86_400);

/// Parses `30s`, `10m`, `2h`, `1d`, `1h 30m` (humantime), up to ten years.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| {
        format!("`{text}`: {e}; write a number and a unit, like 30s, 10m, 2h or 1d")
    })?;
    if duration > LONGEST {
        return Err(format!(
            "`{text}` is longer than ten years; use at most 3660d"
        ));
    }
    Ok(duration)
}
