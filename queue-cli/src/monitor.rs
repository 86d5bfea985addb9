//! `skiplock monitor`: the check a pager runs.
//!
//! Critical (exit 2): any dead job; a job failing for longer than
//! `--failing-critical`; a ready job waiting longer than `--waiting-critical`;
//! ready jobs on a queue that no runner seen within `--no-runner` serves.
//! Warning (exit 1): failing longer than `--failing-warning`, waiting longer
//! than `--waiting-warning`. Running jobs (locked by a worker, as runners
//! announce) never count as waiting, however long they run.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use diesel::PgConnection;
use serde::Serialize;

use crate::table::age;
use crate::{parse_duration, print_json, Failure};

#[derive(Debug, Args)]
pub(crate) struct Thresholds {
    /// Warn when a job has been failing this long.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    failing_warning: Duration,
    /// Page when a job has been failing this long.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    failing_critical: Duration,
    /// Warn when the oldest ready (not running) job has waited this long.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    waiting_warning: Duration,
    /// Page when the oldest ready (not running) job has waited this long.
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    waiting_critical: Duration,
    /// Page when ready jobs sit on a queue no runner has served for this long.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    no_runner: Duration,
    /// Warn when ready jobs of a type that no live runner registers (a rolling deploy that
    /// did not finish, a type no binary knows any more) have waited this long.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    unregistered: Duration,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
enum Level {
    Ok,
    Warning,
    Critical,
}

#[derive(Debug, Serialize)]
struct Problem {
    level: Level,
    message: String,
}

#[derive(Debug, Serialize)]
struct Report {
    level: Level,
    summary: String,
    problems: Vec<Problem>,
    queues: Vec<skiplock::QueueStatus>,
}

pub(crate) fn check(conn: &mut PgConnection, limits: &Thresholds) -> Result<ExitCode, Failure> {
    let fresh = limits.no_runner.as_secs_f64();
    let status = skiplock::queue_status(conn, fresh)?;
    let runners = skiplock::runners(conn)?;
    let mut problems = Vec::new();
    let mut flag = |level, message: String| problems.push(Problem { level, message });

    let dead: i64 = status.iter().map(|s| s.dead).sum();
    if dead > 0 {
        let types: Vec<String> = status
            .iter()
            .filter(|s| s.dead > 0)
            .map(|s| format!("{} x{} on {}", s.job_type, s.dead, s.queue))
            .collect();
        flag(
            Level::Critical,
            format!("{dead} dead job(s): {}", types.join(", ")),
        );
    }
    for s in &status {
        let checks = [
            (
                s.failing_for_secs,
                limits.failing_warning,
                limits.failing_critical,
                "has been failing for",
            ),
            (
                s.oldest_ready_secs,
                limits.waiting_warning,
                limits.waiting_critical,
                "has a ready job waiting for",
            ),
        ];
        for (seconds, warning, critical, what) in checks {
            let Some(seconds) = seconds else { continue };
            let level = grade(seconds, warning, critical);
            if level > Level::Ok {
                flag(
                    level,
                    format!("`{}` on `{}` {what} {}", s.job_type, s.queue, age(seconds)),
                );
            }
        }
    }
    for s in status.iter().filter(|s| s.ready > 0 && !s.served) {
        let queue_served = runners
            .iter()
            .any(|r| r.last_seen_secs <= fresh && r.queues.contains(&s.queue));
        let waited = s.oldest_ready_secs.unwrap_or(0.0);
        // A queue nobody serves is paged below.
        if queue_served && waited >= limits.unregistered.as_secs_f64() {
            flag(
                Level::Warning,
                format!(
                    "`{}` on `{}`: no live runner registers this type; {} job(s) waiting for {}",
                    s.job_type,
                    s.queue,
                    s.ready,
                    age(waited)
                ),
            );
        }
    }
    let mut queues: Vec<&str> = status
        .iter()
        .filter(|s| s.ready > 0)
        .map(|s| s.queue.as_str())
        .collect();
    queues.dedup();
    for queue in queues {
        let served = runners
            .iter()
            .any(|r| r.last_seen_secs <= fresh && r.queues.iter().any(|q| q == queue));
        if !served {
            flag(
                Level::Critical,
                format!(
                    "no runner serving `{queue}` was seen in the last {}",
                    age(fresh)
                ),
            );
        }
    }

    let level = problems.iter().map(|p| p.level).max().unwrap_or(Level::Ok);
    let total = |f: fn(&skiplock::QueueStatus) -> i64| -> i64 { status.iter().map(f).sum() };
    let summary = match level {
        Level::Ok => format!(
            "OK: {} ready, {} running, {} scheduled, {} failing, 0 dead",
            total(|s| s.ready),
            total(|s| s.running),
            total(|s| s.scheduled),
            total(|s| s.failing)
        ),
        Level::Warning | Level::Critical => {
            let word = if level == Level::Critical {
                "CRITICAL"
            } else {
                "WARNING"
            };
            let worst: Vec<&str> = problems
                .iter()
                .filter(|p| p.level == level)
                .map(|p| p.message.as_str())
                .collect();
            format!("{word}: {}", worst.join("; "))
        }
    };
    if limits.json {
        print_json(&Report {
            level,
            summary,
            problems,
            queues: status,
        })?;
    } else {
        println!("{summary}");
        for problem in &problems {
            println!("  {:?}: {}", problem.level, problem.message);
        }
        println!(
            "  runners seen: {}",
            runners.iter().filter(|r| r.last_seen_secs <= fresh).count()
        );
    }
    Ok(ExitCode::from(level as u8))
}

fn grade(seconds: f64, warning: Duration, critical: Duration) -> Level {
    if seconds >= critical.as_secs_f64() {
        Level::Critical
    } else if seconds >= warning.as_secs_f64() {
        Level::Warning
    } else {
        Level::Ok
    }
}
