//! The pages, rendered with maud: every value is escaped on output.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use maud::{html, Markup, DOCTYPE};

use super::{chart, encode, home, Filter, SearchQuery, Viewer, PAGE, SEARCH_BUDGET};
use crate::admin::{MinuteCounts, PausedQueue};
use crate::limits::{KeyLimitStatus, QueueLimitStatus};
use crate::storage::{JobRecord, RunnerRecord, ScheduleRecord};
use crate::Count;

/// The frame of every page.
fn layout(viewer: &Viewer, title: &str, notice: Option<&str>, body: Markup) -> Markup {
    let base = &viewer.base;
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · skiplock" }
                link rel="stylesheet" href={ (base) "/style.css" };
            }
            body {
                header {
                    nav {
                        a.brand href=(home(base)) { "skiplock" }
                        a href=(home(base)) { "Overview" }
                        a href={ (base) "/jobs?state=failing" } { "Failing" }
                        a href={ (base) "/jobs?state=dead" } { "Dead" }
                        a href={ (base) "/runners" } { "Runners" }
                        a href={ (base) "/search" } { "Search" }
                        span.spacer {}
                        @if viewer.signed_in {
                            form.inline method="post" action={ (base) "/logout" } {
                                (csrf(viewer))
                                button.link type="submit" { "Sign out" }
                            }
                        } @else if viewer.actions {
                            a href={ (base) "/login" } { "Sign in to act" }
                        }
                        @if !viewer.actions {
                            span.muted { "read-only" }
                        }
                    }
                }
                main {
                    @if let Some(notice) = notice {
                        p.notice role="status" { (notice) }
                    }
                    (body)
                }
            }
        }
    }
}

fn csrf(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(viewer.csrf); }
}

/// A page that says why a request was refused.
pub(crate) fn refused(why: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "Refused · skiplock" } }
            body { main { h1 { "Refused" } p.error { (why) } p { "Go back and try again." } } }
        }
    }
}

/// "3 min ago"-style durations.
pub(crate) fn age(secs: f64) -> String {
    let secs = secs.max(0.0) as u64;
    match secs {
        0..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min {} s", secs / 60, secs % 60),
        3600..=86_399 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
        _ => format!("{} d {} h", secs / 86_400, secs % 86_400 / 3600),
    }
}

fn when(at: Option<DateTime<Utc>>) -> Markup {
    match at {
        Some(at) => {
            let secs = (Utc::now() - at).num_milliseconds() as f64 / 1000.0;
            let text = if secs >= 0.0 {
                format!("{} ago", age(secs))
            } else {
                format!("in {}", age(-secs))
            };
            html! { time datetime=(at.to_rfc3339()) title=(at.to_rfc3339()) { (text) } }
        }
        None => html! { span.muted { "—" } },
    }
}

/// The most characters of a name (queue, job type, runner, host) a list
/// shows; the job's own page shows it whole.
const NAME_CHARS: usize = 80;

/// Names longer than this get no link and no form (their address would be
/// as long): the command line reaches them.
const LINKED_NAME_BYTES: usize = 1_000;

/// A name cut to [`NAME_CHARS`] characters for a page.
pub(crate) fn cut(name: &str) -> String {
    if name.chars().count() <= NAME_CHARS {
        return name.to_owned();
    }
    let mut shown: String = name.chars().take(NAME_CHARS - 1).collect();
    shown.push('…');
    shown
}

/// The first line of an error, shortened for a table cell.
fn first_line(error: &str) -> String {
    let line = error.lines().next().unwrap_or("");
    let mut shown: String = line.chars().take(140).collect();
    if shown.len() < line.len() || error.lines().nth(1).is_some() {
        shown.push('…');
    }
    shown
}

/// A count of failing or dead jobs, linked to their list when not 0.
fn count_link(
    viewer: &Viewer,
    state: &str,
    count: Count,
    queue: &str,
    job_type: Option<&str>,
) -> Markup {
    html! {
        @if count.value() > 0 && queue.len() + job_type.map_or(0, str::len) <= LINKED_NAME_BYTES {
            a class=(state) href=(jobs_link(viewer, state, queue, job_type)) { (count) }
        } @else {
            (count)
        }
    }
}

/// The longest wait of the jobs a count counted: at least that when the
/// count is not exact.
fn wait(secs: Option<f64>, count: Count) -> Markup {
    html! {
        @match secs {
            Some(secs) if count.is_exact() => { (age(secs)) }
            Some(secs) => { "≥ " (age(secs)) }
            None => span.muted { "—" },
        }
    }
}

/// How the overview's counts that are not exact were arrived at.
fn estimates_note(status: &crate::Overview) -> Markup {
    let counts = status
        .rows
        .iter()
        .flat_map(|r| [r.ready, r.scheduled, r.failing, r.dead]);
    let (mut about, mut at_least) = (false, false);
    for count in counts {
        about |= matches!(count, Count::About(_));
        at_least |= matches!(count, Count::AtLeast(_));
    }
    html! {
        @if about || at_least || status.queues_cut {
            p.muted #estimates {
                @if about {
                    "≈: estimated. Ready jobs past the first " (status.ready_head) " of a queue: from PostgreSQL's statistics of the jobs table"
                    @if let Some(stats) = status.statistics {
                        @match stats.analyzed_secs {
                            Some(secs) => { " (sampled by ANALYZE " (age(secs)) " ago; " (stats.changed_since) " rows written since)" }
                            None => { " (never sampled by ANALYZE: none yet)" }
                        }
                    }
                    ". "
                }
                @if !status.scheduled.is_exact() {
                    "Scheduled jobs: " (status.scheduled) " in all (their index's size at the last VACUUM or ANALYZE); per type, at least those among the " (crate::STATE_HEAD) " due soonest. "
                }
                @if !status.failed.is_exact() {
                    "Failed jobs: " (status.failed) " in all (likewise); per type, at least those among the " (crate::STATE_HEAD) " that failed last. "
                }
                @if at_least {
                    "≥: at least (the jobs counted, and no estimate of the rest). "
                }
                @if status.queues_cut {
                    "Only the first " (crate::MAX_QUEUES) " queues with ready jobs, by name, are counted."
                }
            }
        }
    }
}

fn jobs_link(viewer: &Viewer, state: &str, queue: &str, job_type: Option<&str>) -> String {
    let mut link = format!("{}/jobs?state={state}&queue={}", viewer.base, encode(queue));
    if let Some(job_type) = job_type {
        link.push_str(&format!("&type={}", encode(job_type)));
    }
    link
}

/// Per queue: the sums of its job types' counts.
#[derive(Default)]
struct QueueSums {
    ready: Count,
    scheduled: Count,
    running: i64,
    failing: Count,
    dead: Count,
    oldest_ready_secs: Option<f64>,
}

/// What the overview shows.
pub(crate) struct Overview<'a> {
    pub(crate) status: &'a crate::Overview,
    pub(crate) paused: &'a [PausedQueue],
    pub(crate) minutes: &'a [MinuteCounts],
    pub(crate) schedules: &'a [ScheduleRecord],
    /// The queues' own limits, and the limited keys with waiting jobs.
    pub(crate) flow: &'a (Vec<QueueLimitStatus>, Vec<KeyLimitStatus>),
}

pub(crate) fn overview(viewer: &Viewer, notice: Option<&str>, data: &Overview<'_>) -> Markup {
    let Overview {
        status,
        paused,
        minutes,
        schedules,
        flow,
    } = *data;
    let (limited_queues, limited_keys) = flow;
    let mut queues: BTreeMap<&str, QueueSums> = BTreeMap::new();
    for row in &status.rows {
        let sums = queues.entry(&row.queue).or_default();
        sums.ready = sums.ready + row.ready;
        sums.scheduled = sums.scheduled + row.scheduled;
        sums.running += row.running;
        sums.failing = sums.failing + row.failing;
        sums.dead = sums.dead + row.dead;
        sums.oldest_ready_secs = match (sums.oldest_ready_secs, row.oldest_ready_secs) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    for pause in paused {
        queues.entry(&pause.queue).or_default();
    }
    let completed: i64 = minutes.iter().map(|m| m.completed).sum();
    let failed: i64 = minutes.iter().map(|m| m.failed).sum();
    let body = html! {
        h1 { "Overview" }
        section.chart {
            h2 { "Throughput, last hour" }
            p.muted { (completed) " completed, " (failed) " failed attempts (per minute, as the runners report them)" }
            (chart::throughput(minutes))
        }
        section {
            h2 { "Queues" }
            @if queues.is_empty() {
                p.muted { "No jobs and no paused queues." }
            } @else {
                table #queues {
                    thead { tr {
                        th { "queue" } th.num { "ready" } th.num { "scheduled" } th.num { "running" }
                        th.num { "failing" } th.num { "dead" } th { "oldest ready" } th { "state" }
                        @if viewer.actions { th {} }
                    } }
                    tbody {
                        @for (queue, sums) in &queues {
                            @let is_paused = paused.iter().find(|p| p.queue == *queue);
                            tr data-queue=(cut(queue)) {
                                td title=[(queue.chars().count() > NAME_CHARS && queue.len() <= LINKED_NAME_BYTES).then_some(queue)] { (cut(queue)) }
                                td.num { (sums.ready) } td.num { (sums.scheduled) } td.num { (sums.running) }
                                td.num { (count_link(viewer, "failing", sums.failing, queue, None)) }
                                td.num { (count_link(viewer, "dead", sums.dead, queue, None)) }
                                td { (wait(sums.oldest_ready_secs, sums.ready)) }
                                td { @if let Some(p) = is_paused { span.paused { "paused" } " " (when(Some(p.paused_at))) } @else { "running" } }
                                @if viewer.actions {
                                    td {
                                        @if viewer.signed_in && queue.len() <= LINKED_NAME_BYTES {
                                            @let verb = if is_paused.is_some() { "resume" } else { "pause" };
                                            form.inline method="post" action={ (viewer.base) "/queues/" (encode(queue)) "/" (verb) } {
                                                (csrf(viewer))
                                                button type="submit" name="queue-action" value=(verb) { (verb) }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if !schedules.is_empty() {
            section {
                h2 { "Schedules" }
                table #schedules {
                    thead { tr { th { "schedule" } th { "cron" } th { "time zone" } th { "last tick" } th { "next tick" } } }
                    tbody {
                        @for schedule in schedules {
                            tr data-schedule=(cut(&schedule.name)) {
                                td { code { (cut(&schedule.name)) } }
                                td { code { (schedule.cron) } }
                                td { (schedule.time_zone) }
                                td { @if schedule.last_tick.is_some() { (when(schedule.last_tick)) } @else { span.muted { "never" } } }
                                td { @if schedule.declared { (when(schedule.next_tick)) } @else { span.warning { "stopped: no live runner declares it" } } }
                            }
                        }
                    }
                }
            }
        }
        @if !limited_queues.is_empty() || !limited_keys.is_empty() {
            section {
                h2 { "Flow control" }
                @if !limited_queues.is_empty() {
                    table #queue-limits {
                        thead { tr { th { "queue" } th.num { "max running" } th.num { "running" } th { "rate" } th.num { "started in window" } } }
                        tbody {
                            @for limit in limited_queues {
                                tr data-limited-queue=(cut(&limit.queue)) {
                                    td { (cut(&limit.queue)) }
                                    td.num { @if let Some(max) = limit.limits.max_running { (max) } @else { "-" } }
                                    td.num { (limit.running) }
                                    td { @if let Some(rate) = limit.limits.rate { (rate) } @else { "-" } }
                                    td.num { (limit.recent_starts) }
                                }
                            }
                        }
                    }
                }
                @if !limited_keys.is_empty() {
                    p.muted { "Limited concurrency keys with waiting jobs, those waiting longest first." }
                    table #key-limits {
                        thead { tr {
                            th { "queue" } th { "key" } th.num { "ready" } th.num { "max running" } th.num { "running" }
                            th { "rate" } th.num { "started in window" } th { "first waited" }
                        } }
                        tbody {
                            @for key in limited_keys {
                                tr data-limited-key=(cut(&key.label())) {
                                    td { (cut(&key.queue)) }
                                    td { code { (cut(&key.label())) } }
                                    td.num { (key.ready) }
                                    td.num { @if let Some(max) = key.max_concurrent { (max) } @else { "-" } }
                                    td.num { (key.running) }
                                    td { @if let Some(rate) = key.rate { (rate) } @else { "-" } }
                                    td.num { (key.recent_starts) }
                                    td { (age(key.waited.as_secs_f64())) }
                                }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Job types" }
            @if status.rows.is_empty() {
                p.muted { "No jobs." }
            } @else {
                table #types {
                    thead { tr {
                        th { "queue" } th { "job type" } th.num { "ready" } th.num { "scheduled" } th.num { "running" }
                        th.num { "failing" } th.num { "dead" } th { "oldest ready" } th { "failing for" } th { "served" }
                    } }
                    tbody {
                        @for row in &status.rows {
                            tr {
                                td { (cut(&row.queue)) } td { code { (cut(&row.job_type)) } }
                                td.num { (row.ready) } td.num { (row.scheduled) } td.num { (row.running) }
                                td.num { (count_link(viewer, "failing", row.failing, &row.queue, Some(&row.job_type))) }
                                td.num { (count_link(viewer, "dead", row.dead, &row.queue, Some(&row.job_type))) }
                                td { (wait(row.oldest_ready_secs, row.ready)) }
                                td { (wait(row.failing_for_secs, row.failing)) }
                                td { @if row.served { "yes" } @else { span.warning title="no live runner of this queue registers this job type" { "no runner knows it" } } }
                            }
                        }
                    }
                }
                (estimates_note(status))
            }
        }
    };
    layout(viewer, "Overview", notice, body)
}

pub(crate) fn jobs(
    viewer: &Viewer,
    filter: &Filter,
    notice: Option<&str>,
    rows: &[JobRecord],
    more: bool,
) -> Markup {
    let state = filter.state_name();
    let title = match state {
        "dead" => "Dead jobs",
        "failing" => "Failing jobs",
        _ => "Failed jobs",
    };
    let next = rows.last().filter(|_| more).map(|last| {
        let micros = last.last_failed_at.map_or(0, |t| t.timestamp_micros());
        format!(
            "{}/jobs?{}&after={micros}.{}",
            viewer.base,
            filter.query(),
            last.id
        )
    });
    let body = html! {
        h1 { (title) }
        form.filters method="get" action={ (viewer.base) "/jobs" } {
            label { "state " select name="state" {
                @for option in ["failing", "dead", "failed"] {
                    option value=(option) selected[option == state] { (option) }
                }
            } }
            label { "queue " input type="text" name="queue" value=(filter.queue().unwrap_or("")); }
            label { "job type " input type="text" name="type" value=(filter.job_type().unwrap_or("")); }
            button type="submit" { "Filter" }
        }
        @if rows.is_empty() {
            p.muted { "No " (state) " jobs match." }
        } @else {
            table #jobs {
                thead { tr {
                    th { "id" } th { "job type" } th { "queue" } th.num { "attempts" }
                    th { "first failure" } th { "last failure" } th { "next" } th { "last error" }
                } }
                tbody {
                    @for job in rows {
                        tr data-id=(job.id) {
                            td { a.job href={ (viewer.base) "/jobs/" (job.id) } { (job.id) } }
                            td { code { (cut(&job.job_type)) } }
                            td { (cut(&job.queue)) }
                            td.num { (job.attempts) }
                            td { (when(job.first_failed_at)) }
                            td { (when(job.last_failed_at)) }
                            td { @if job.dead_at.is_some() { span.dead { "dead" } } @else { (when(Some(job.run_at))) } }
                            td.error { (first_line(job.last_error.as_deref().unwrap_or(""))) }
                        }
                    }
                }
            }
            p.pager {
                "Up to " (PAGE) " a page, most recent failure first. "
                @if let Some(next) = next { a #next href=(next) { "Next page →" } }
            }
        }
        @if viewer.actions {
            p.bulk {
                "Every " (state) " job matching these filters: "
                a.button href={ (viewer.base) "/bulk?action=retry&" (filter.query()) } { "Retry all…" }
                " "
                a.button.danger href={ (viewer.base) "/bulk?action=discard&" (filter.query()) } { "Discard all…" }
            }
        }
    };
    layout(viewer, title, notice, body)
}

pub(crate) fn job(viewer: &Viewer, notice: Option<&str>, job: &JobRecord) -> Markup {
    let payload = serde_json::to_string_pretty(&job.payload).unwrap_or_default();
    let state = if job.dead_at.is_some() {
        "dead"
    } else if job.attempts > 0 {
        "failing"
    } else {
        "waiting"
    };
    let body = html! {
        h1 { "Job " (job.id) " " span class={ "state " (state) } { (state) } }
        @if viewer.signed_in {
            div.actions {
                form.inline method="post" action={ (viewer.base) "/jobs/" (job.id) "/retry" } {
                    (csrf(viewer))
                    button #retry type="submit" { "Retry now" }
                }
                " "
                a.button.danger #discard href={ (viewer.base) "/jobs/" (job.id) "/discard" } { "Discard…" }
            }
        } @else if viewer.actions {
            p.muted { a href={ (viewer.base) "/login" } { "Sign in" } " to retry or discard it." }
        }
        dl {
            dt { "job type" } dd { code { (job.job_type) } }
            dt { "queue" } dd { (job.queue) }
            dt { "priority" } dd { (job.priority) }
            dt { "attempts" } dd #attempts { (job.attempts) }
            dt { "enqueued" } dd { (when(Some(job.created_at))) }
            dt { "first failure" } dd { (when(job.first_failed_at)) }
            dt { "last failure" } dd { (when(job.last_failed_at)) }
            dt { @if job.dead_at.is_some() { "dead since" } @else { "next attempt" } }
            dd { @if job.dead_at.is_some() { (when(job.dead_at)) } @else { (when(Some(job.run_at))) } }
        }
        h2 { "Last error" }
        @match &job.last_error {
            Some(error) => pre.error #error { (error) },
            None => p.muted { "None recorded." },
        }
        h2 { "Payload" }
        pre.payload #payload { (payload) }
    };
    layout(viewer, &format!("Job {}", job.id), notice, body)
}

pub(crate) fn runners(viewer: &Viewer, runners: &[RunnerRecord]) -> Markup {
    let body = html! {
        h1 { "Runners" }
        @if runners.is_empty() {
            p.muted { "No runner has announced itself." }
        } @else {
            table #runners {
                thead { tr { th { "runner" } th { "host" } th.num { "pid" } th { "queues" } th { "last seen" } th { "running" } } }
                tbody {
                    @for runner in runners {
                        tr {
                            td { code { (cut(&runner.id)) } }
                            td { (cut(&runner.hostname)) }
                            td.num { (runner.pid) }
                            td {
                                @for (i, queue) in runner.queues.iter().enumerate() {
                                    @if i > 0 { ", " }
                                    (cut(queue))
                                    @if runner.standby.contains(queue) {
                                        " " span.muted { "(standby: another runner has this exclusive queue)" }
                                    } @else if runner.exclusive.contains(queue) {
                                        " " span.muted { "(exclusive)" }
                                    }
                                }
                            }
                            td { (age(runner.last_seen_secs)) " ago" }
                            td {
                                @if runner.running.is_empty() { span.muted { "idle" } }
                                @for id in &runner.running {
                                    a href={ (viewer.base) "/jobs/" (id) } { (id) } " "
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    layout(viewer, "Runners", None, body)
}

pub(crate) fn login(viewer: &Viewer, error: Option<&str>) -> Markup {
    let body = html! {
        h1 { "Sign in" }
        @if !viewer.sign_in {
            p { "This dashboard was given no token: there is nothing to sign in to." }
        } @else {
            @if let Some(error) = error { p.error { (error) } }
            form method="post" action={ (viewer.base) "/login" } {
                (csrf(viewer))
                label { "Token " input #token type="password" name="token" autocomplete="current-password" required; }
                " "
                button #sign-in type="submit" { "Sign in" }
            }
            p.muted { "The token was printed when the dashboard started, or given to it in SKIPLOCK_WEB_TOKEN." }
        }
    };
    layout(viewer, "Sign in", None, body)
}

pub(crate) fn confirm_discard(viewer: &Viewer, job: &JobRecord) -> Markup {
    let body = html! {
        h1 { "Discard job " (job.id) "?" }
        p { "The job " code { (cut(&job.job_type)) } " on " (cut(&job.queue)) " is deleted for good: it will never run." }
        @if viewer.signed_in {
            form method="post" action={ (viewer.base) "/jobs/" (job.id) "/discard" } {
                (csrf(viewer))
                button.danger #confirm type="submit" { "Discard it" }
                " "
                a href={ (viewer.base) "/jobs/" (job.id) } { "Cancel" }
            }
        } @else {
            p { a href={ (viewer.base) "/login" } { "Sign in" } " first." }
        }
    };
    layout(viewer, "Discard", None, body)
}

pub(crate) fn confirm_bulk(viewer: &Viewer, action: &str, filter: &Filter, count: i64) -> Markup {
    let verb = if action == "discard" {
        "Discard"
    } else {
        "Retry"
    };
    let body = html! {
        h1 { (verb) " " (count) " " (filter.state_name()) " jobs?" }
        p {
            "Every " (filter.state_name()) " job"
            @if let Some(queue) = filter.queue() { " on queue " strong { (cut(queue)) } }
            @if let Some(job_type) = filter.job_type() { " of type " code { (cut(job_type)) } }
            ": " (count) " now (running ones are left alone)."
            @if action == "discard" { " Discarded jobs are deleted for good." }
        }
        @if viewer.signed_in && matches!(action, "retry" | "discard") {
            form method="post" action={ (viewer.base) "/bulk" } {
                (csrf(viewer))
                input type="hidden" name="action" value=(action);
                input type="hidden" name="state" value=(filter.state_name());
                input type="hidden" name="queue" value=(filter.queue().unwrap_or(""));
                input type="hidden" name="type" value=(filter.job_type().unwrap_or(""));
                button.danger[action == "discard"] #confirm type="submit" { (verb) " them" }
                " "
                a href={ (viewer.base) "/jobs?" (filter.query()) } { "Cancel" }
            }
        } @else {
            p { a href={ (viewer.base) "/login" } { "Sign in" } " first." }
        }
    };
    layout(viewer, verb, None, body)
}

/// A job's state, as a word.
fn state_of(job: &JobRecord) -> &'static str {
    if job.dead_at.is_some() {
        "dead"
    } else if job.attempts > 0 {
        "failing"
    } else if job.run_at > Utc::now() {
        "scheduled"
    } else {
        "ready"
    }
}

pub(crate) fn search(viewer: &Viewer, query: &SearchQuery, page: &crate::SearchPage) -> Markup {
    let state = query.state_name();
    let next = page
        .next
        .map(|id| format!("{}/search?{}&before={}", viewer.base, query.query(), id.0));
    let body = html! {
        h1 { "Search" }
        form.filters #search method="get" action={ (viewer.base) "/search" } {
            label { "state " select name="state" {
                @for option in ["any", "ready", "scheduled", "failing", "dead"] {
                    option value=(option) selected[option == state] { (option) }
                }
            } }
            label { "queue " input type="text" name="queue" value=(query.queue().unwrap_or("")); }
            label { "job type " input type="text" name="type" value=(query.job_type().unwrap_or("")); }
            label { "payload contains " input type="text" name="payload" placeholder="{\"user_id\": 42}" value=(query.payload().unwrap_or("")); }
            button type="submit" { "Search" }
        }
        p.muted #examined {
            "Examined the " (page.examined) " newest jobs"
            @if query.before.is_some() { " below the previous page" }
            " (at most " (SEARCH_BUDGET) " a page, newest first)."
        }
        @if page.jobs.is_empty() {
            p.muted { "No job among them matches." }
        } @else {
            table #results {
                thead { tr {
                    th { "id" } th { "job type" } th { "queue" } th { "state" } th.num { "attempts" }
                    th { "enqueued" } th { "payload" }
                } }
                tbody {
                    @for job in &page.jobs {
                        tr data-id=(job.id) {
                            td { a.job href={ (viewer.base) "/jobs/" (job.id) } { (job.id) } }
                            td { code { (cut(&job.job_type)) } }
                            td { (cut(&job.queue)) }
                            td { (state_of(job)) }
                            td.num { (job.attempts) }
                            td { (when(Some(job.created_at))) }
                            td { code { (first_line(&job.payload.to_string())) } }
                        }
                    }
                }
            }
        }
        @if let Some(next) = next {
            p.pager { a #next href=(next) { "Go on with older jobs →" } }
        }
    };
    layout(viewer, "Search", None, body)
}
