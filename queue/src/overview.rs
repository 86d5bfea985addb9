//! The dashboard's overview: per queue and job type, what waits, runs and
//! fails, read in milliseconds however many jobs the table holds.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use diesel::prelude::*;

use crate::admin::require_schema;
use crate::errors::AdminError;
use crate::storage::overview as statements;

/// Ready jobs counted exactly per queue (the queue's head in claim order)
/// when there are few queues: [`READY_BUDGET`] is shared among the queues,
/// each counting between 20 and this many.
pub const READY_HEAD: i64 = 1_000;

/// Ready jobs the overview reads in all, shared among the queues.
pub const READY_BUDGET: i64 = 20_000;

/// Queues the overview looks at (by name): past them, queues are left out
/// and [`Overview::queues_cut`] says so.
pub const MAX_QUEUES: i64 = 1_000;

const HEAD_BUDGET: statements::HeadBudget = statements::HeadBudget {
    budget: READY_BUDGET,
    least: 20,
    most: READY_HEAD,
    max_queues: MAX_QUEUES,
};

/// Scheduled jobs, and failed ones, counted exactly.
pub const STATE_HEAD: i64 = 1_000;

/// A count, and how it was arrived at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "counted", content = "n", rename_all = "snake_case")]
pub enum Count {
    /// Every job counted.
    Exact(i64),
    /// At least this many: the jobs counted, with no estimate of the rest.
    AtLeast(i64),
    /// An estimate (see [`overview`] for its error).
    About(i64),
}

impl Count {
    /// The number.
    pub fn value(self) -> i64 {
        match self {
            Count::Exact(n) | Count::AtLeast(n) | Count::About(n) => n,
        }
    }

    /// Whether every job was counted.
    pub fn is_exact(self) -> bool {
        matches!(self, Count::Exact(_))
    }
}

impl Default for Count {
    fn default() -> Self {
        Count::Exact(0)
    }
}

impl std::ops::Add for Count {
    type Output = Count;

    /// A sum is as exact as its least exact term.
    fn add(self, other: Count) -> Count {
        let n = self.value() + other.value();
        match (self, other) {
            (Count::Exact(_), Count::Exact(_)) => Count::Exact(n),
            (Count::About(_), _) | (_, Count::About(_)) => Count::About(n),
            _ => Count::AtLeast(n),
        }
    }
}

impl std::fmt::Display for Count {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Count::Exact(n) => write!(f, "{n}"),
            Count::AtLeast(n) => write!(f, "≥ {n}"),
            Count::About(n) => write!(f, "≈ {n}"),
        }
    }
}

/// One job type on one queue.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct OverviewRow {
    /// The queue.
    pub queue: String,
    /// The job type.
    pub job_type: String,
    /// Due and waiting for a worker (not running).
    pub ready: Count,
    /// Waiting for a later time (a delay, or a retry's backoff).
    pub scheduled: Count,
    /// Being run by a worker now (as its runner last announced).
    pub running: i64,
    /// Failed at least once and still retried.
    pub failing: Count,
    /// Dead: out of attempts or failed permanently.
    pub dead: Count,
    /// Seconds the oldest ready job has been due (among those counted when
    /// `ready` is not exact).
    pub oldest_ready_secs: Option<f64>,
    /// Seconds since the longest failing job first failed (among those
    /// counted when `failing` is not exact).
    pub failing_for_secs: Option<f64>,
    /// A live runner serving the queue registers this job type.
    pub served: bool,
}

/// The age of the statistics the estimates come from.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct StatisticsAge {
    /// Seconds since ANALYZE last sampled the jobs table (`None`: never).
    pub analyzed_secs: Option<f64>,
    /// Rows inserted, updated or deleted since.
    pub changed_since: i64,
}

/// What [`overview`] found.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct Overview {
    /// Per queue and job type, by queue and type.
    pub rows: Vec<OverviewRow>,
    /// Scheduled jobs in all.
    pub scheduled: Count,
    /// Failed jobs (failing or dead) in all.
    pub failed: Count,
    /// When a count is an estimate: how old its statistics are.
    pub statistics: Option<StatisticsAge>,
    /// Ready jobs counted exactly per queue ([`READY_HEAD`] unless there
    /// are more than 20 queues with ready jobs: [`READY_BUDGET`] shared).
    pub ready_head: i64,
    /// More than [`MAX_QUEUES`] queues hold ready jobs: the ready jobs of
    /// those past the first, by name, are not shown.
    pub queues_cut: bool,
}

/// Per queue and job type: ready, scheduled, running, failing and dead
/// jobs, in milliseconds however many jobs the table holds. "Running"
/// trusts runners seen within `runner_fresh_secs`. Seven statements, each
/// reading at most a cap of index entries and rows (ready: a cap per
/// queue), in one read-only snapshot.
///
/// Counting every row (as [`queue_status`](crate::queue_status) does) takes
/// seconds at millions of jobs and grows with the table. Here each state is
/// counted exactly up to a cap, from the index that orders it, and past the
/// cap estimated, and each count says which it is ([`Count`]):
///
/// - ready: per queue, the first [`READY_HEAD`] jobs in claim order are
///   counted by type ([`READY_BUDGET`] shared when more than 20 queues hold
///   ready jobs, 20 each at least; the first [`MAX_QUEUES`] queues by
///   name). A queue holding more gets PostgreSQL's estimate per
///   job type, from the statistics object `queue_jobs_overview_stats` that
///   ANALYZE (autovacuum's included) keeps from its sample of 30,000 rows:
///   the error is the sample's (about ±2 % of a type that holds a twelfth
///   of the table) plus whatever changed since ANALYZE ran, which
///   [`Overview::statistics`] states;
/// - scheduled, failing and dead: the [`STATE_HEAD`] jobs due soonest and
///   the [`STATE_HEAD`] newest failures are counted by queue and type;
///   past that, each queue and type holds at least those counted
///   ([`Count::AtLeast`]: the jobs of a type whose failures are all older
///   are not seen), and the state's total ([`Overview::scheduled`],
///   [`Overview::failed`]) is the size of its index as VACUUM last counted
///   it or ANALYZE last estimated it from its sample, changed since by at
///   most what [`StatisticsAge::changed_since`] says;
/// - running: exact (the jobs runners announced);
/// - the longest waits (`oldest_ready_secs`, `failing_for_secs`) are exact
///   when their count is, and otherwise the longest among the jobs counted.
pub fn overview(conn: &mut PgConnection, runner_fresh_secs: f64) -> Result<Overview, AdminError> {
    require_schema(conn)?;
    let overview = conn
        .build_transaction()
        .read_only()
        .repeatable_read()
        .run(|conn| read(conn, runner_fresh_secs))?;
    Ok(overview)
}

/// Per queue: its ready jobs and how long the oldest of them has been due,
/// as [`overview`] counts them (exact up to [`READY_HEAD`], estimated past
/// it; the wait then the longest among the next [`READY_HEAD`] in line),
/// leaving out `own_running` too (the asking runner's running jobs, which
/// its next announcement will list). For a runner's gauges: a scrape
/// reads a bounded number of rows however long the queues are.
pub(crate) fn ready_by_queue(
    conn: &mut PgConnection,
    queues: &[String],
    fresh_secs: f64,
    own_running: &[i64],
) -> QueryResult<BTreeMap<String, (i64, f64)>> {
    let mut rows = BTreeMap::new();
    for r in statements::running(conn, fresh_secs)? {
        row(&mut rows, &r.queue, &r.job_type).running = r.n;
    }
    read_ready(conn, &mut rows, fresh_secs, own_running, Some(queues))?;
    let mut queues: BTreeMap<String, (i64, f64)> = BTreeMap::new();
    for row in rows.into_values() {
        let entry = queues.entry(row.queue).or_default();
        entry.0 += row.ready.value();
        entry.1 = entry.1.max(row.oldest_ready_secs.unwrap_or(0.0));
    }
    Ok(queues)
}

/// What [`read_ready`] found besides the rows.
struct Ready {
    /// Queues holding more ready jobs than were counted.
    long: BTreeSet<String>,
    /// Ready jobs counted per queue.
    head: i64,
    /// Queues past [`MAX_QUEUES`] were left out.
    cut: bool,
}

/// The ready jobs of every queue (or of `queues`) into `rows`: counted up
/// to the head's cap, estimated past it.
fn read_ready(
    conn: &mut PgConnection,
    rows: &mut BTreeMap<Key, OverviewRow>,
    fresh_secs: f64,
    own_running: &[i64],
    queues: Option<&[String]>,
) -> QueryResult<Ready> {
    let heads = statements::ready_heads(conn, fresh_secs, HEAD_BUDGET, own_running, queues)?;
    let head = heads.first().map_or(READY_HEAD, |h| h.cap);
    let cut = heads.first().is_some_and(|h| h.queues >= MAX_QUEUES);
    let mut lengths: BTreeMap<&str, i64> = BTreeMap::new();
    for h in &heads {
        *lengths.entry(&h.queue).or_default() += h.n;
    }
    let long: BTreeSet<String> = lengths
        .into_iter()
        .filter(|&(_, n)| n > head)
        .map(|(queue, _)| queue.to_owned())
        .collect();
    for h in &heads {
        let r = row(rows, &h.queue, &h.job_type);
        r.ready = if long.contains(&h.queue) {
            Count::AtLeast(h.n)
        } else {
            Count::Exact(h.n)
        };
        r.oldest_ready_secs = h.oldest_secs;
    }
    if !long.is_empty() {
        for estimate in statements::estimated_ready(conn)? {
            if !long.contains(&estimate.queue) {
                continue;
            }
            let r = row(rows, &estimate.queue, &estimate.job_type);
            // The statistics count running jobs as ready.
            let about = (estimate.rows.round() as i64 - r.running).max(0);
            if about > r.ready.value() {
                r.ready = Count::About(about);
            }
        }
    }
    Ok(Ready { long, head, cut })
}

type Key = (String, String);

/// The row of `queue` and `job_type`, made empty if there is none yet.
fn row<'a>(
    rows: &'a mut BTreeMap<Key, OverviewRow>,
    queue: &str,
    job_type: &str,
) -> &'a mut OverviewRow {
    rows.entry((queue.to_owned(), job_type.to_owned()))
        .or_insert_with(|| OverviewRow {
            queue: queue.to_owned(),
            job_type: job_type.to_owned(),
            ready: Count::Exact(0),
            scheduled: Count::Exact(0),
            running: 0,
            failing: Count::Exact(0),
            dead: Count::Exact(0),
            oldest_ready_secs: None,
            failing_for_secs: None,
            served: false,
        })
}

fn read(conn: &mut PgConnection, fresh_secs: f64) -> QueryResult<Overview> {
    let mut rows: BTreeMap<Key, OverviewRow> = BTreeMap::new();
    let running = statements::running(conn, fresh_secs)?;
    for r in &running {
        row(&mut rows, &r.queue, &r.job_type).running = r.n;
    }

    let ready = read_ready(conn, &mut rows, fresh_secs, &[], None)?;
    let scheduled = statements::scheduled_head(conn, STATE_HEAD)?;
    let failed = statements::failed_head(conn, STATE_HEAD)?;
    let scheduled_over = scheduled.iter().map(|s| s.n).sum::<i64>() > STATE_HEAD;
    let failed_over = failed.iter().map(|f| f.failing + f.dead).sum::<i64>() > STATE_HEAD;
    let statistics = if ready.long.is_empty() && !scheduled_over && !failed_over {
        None
    } else {
        Some(statements::statistics(conn)?)
    };

    // Past its cap, a state's jobs per queue and type are at least those
    // counted; its total is its index's size (never below what was counted).
    let split = |n: i64, over: bool| {
        if over {
            Count::AtLeast(n)
        } else {
            Count::Exact(n)
        }
    };
    let total = |counted: i64, over: bool, measured: Option<f64>| {
        if over {
            Count::About((measured.unwrap_or(0.0).round() as i64).max(counted))
        } else {
            Count::Exact(counted)
        }
    };
    for s in &scheduled {
        row(&mut rows, &s.queue, &s.job_type).scheduled = split(s.n, scheduled_over);
    }
    for f in &failed {
        let r = row(&mut rows, &f.queue, &f.job_type);
        r.failing = split(f.failing, failed_over);
        r.dead = split(f.dead, failed_over);
        r.failing_for_secs = f.failing_for_secs;
    }
    let scheduled_total = total(
        scheduled.iter().map(|s| s.n).sum(),
        scheduled_over,
        statistics.as_ref().and_then(|s| s.scheduled_rows),
    );
    let failed_total = total(
        failed.iter().map(|f| f.failing + f.dead).sum(),
        failed_over,
        statistics.as_ref().and_then(|s| s.failed_rows),
    );

    let served: HashSet<Key> = statements::served(conn, fresh_secs)?
        .into_iter()
        .map(|s| (s.queue, s.job_type))
        .collect();
    let rows = rows
        .into_iter()
        .map(|(key, mut r)| {
            r.served = served.contains(&key);
            // A state past its cap that none of this type's jobs counted
            // were in: at least none.
            if r.scheduled == Count::Exact(0) {
                r.scheduled = split(0, scheduled_over);
            }
            if r.failing == Count::Exact(0) {
                r.failing = split(0, failed_over);
            }
            if r.dead == Count::Exact(0) {
                r.dead = split(0, failed_over);
            }
            if r.ready == Count::Exact(0) && ready.long.contains(&r.queue) {
                r.ready = Count::AtLeast(0);
            }
            r
        })
        .collect();
    Ok(Overview {
        rows,
        ready_head: ready.head,
        queues_cut: ready.cut,
        scheduled: scheduled_total,
        failed: failed_total,
        statistics: statistics.map(|s| StatisticsAge {
            analyzed_secs: s.analyzed_secs,
            changed_since: s.changed_since,
        }),
    })
}
