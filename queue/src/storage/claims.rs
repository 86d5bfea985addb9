//! The statements of a worker's lock session: claiming jobs under
//! session-level advisory locks, completing, releasing and failing them.
//!
//! Every lock is taken and released on the worker's own session, and a
//! session that ends (a dead process, a terminated backend, a restart)
//! releases all of them at once. Two rules make a job's lock enough:
//!
//! - A job's lock is released only after the write that ends its claim
//!   (its deletion, or its failure) has committed: the release is a later
//!   statement of the same round trip, after the commit, and it runs only
//!   when the write's transaction set the session's mark (see
//!   [`release_step`]). A write the database refuses (a trigger, a
//!   deadlock, a cancel, a full disk) leaves its jobs locked: the caller
//!   tries it again.
//! - The claim reads what it locked again in a later snapshot (see
//!   [`claim_jobs`]), so a job completed or failed just before its lock
//!   was taken is never run again.
//!
//! Writes that only say who holds a job (the claim record, the careful-run
//! mark, a release) commit without waiting for the disk: a server crash may
//! forget them, which costs at most one unattributed crash. Completions and
//! failures wait for the disk unless the runner is told otherwise.

use std::time::{Duration, Instant};

use crate::position::Scan;
use crate::pq::{Param, Session, SessionError, Step};

/// Settings of the runner's own sessions (lock sessions, the listener):
///
/// - Immune to server-wide timeouts meant for application sessions: a
///   worker's lock session stays idle, holding its locks, while a job runs
///   for as long as it runs, and the listener is idle by design. Nor may a
///   role's or database's `lock_timeout` cancel a completion that waits a
///   moment for a row another session holds.
/// - Each prepared statement planned once, with the plan its text is
///   written for: the claim walks the ready index in order, and a plan that
///   reads the table and sorts it (which the planner may prefer when it
///   thinks it needs every row) would cost a full scan per claim. Nor a
///   sequential scan where a statement looks jobs up by id: a plan made
///   while the table was empty (a runner started before the first job) is
///   kept, and would scan a million rows later. No JIT for statements that
///   run in a fraction of a millisecond. Only the queue's statements run on
///   these sessions.
///
/// Parameters the server does not know are skipped.
pub(crate) fn prepare_runner_session(session: &mut Session) -> Result<(), SessionError> {
    session.query(
        "SELECT count(set_config(s.name, s.value, false)) \
         FROM (VALUES ('statement_timeout', '0'), \
                      ('idle_in_transaction_session_timeout', '0'), \
                      ('idle_session_timeout', '0'), \
                      ('transaction_timeout', '0'), \
                      ('lock_timeout', '0'), \
                      ('plan_cache_mode', 'force_generic_plan'), \
                      ('enable_sort', 'off'), \
                      ('enable_seqscan', 'off'), \
                      ('jit', 'off')) s(name, value) \
         WHERE s.name IN (SELECT name FROM pg_settings)",
        &[],
    )?;
    Ok(())
}

/// Numbers this lock session and locks the number for the session's life,
/// so that others can tell when it has ended. Returns the number, and the
/// server's lock table.
pub(crate) fn register_lock_session(
    session: &mut Session,
) -> Result<(i32, LockTable), SessionError> {
    let rows = session.query(
        concat!(
            "WITH n AS (SELECT nextval('queue_lock_sessions')::int4 AS holder) \
             SELECT holder, \
                    current_setting('max_locks_per_transaction')::int8, \
                    current_setting('max_connections')::int8, \
                    current_setting('max_prepared_transactions')::int8, \
                    pg_advisory_lock(",
            holder_lock!("holder"),
            ") FROM n"
        ),
        &[],
    )?;
    let holder = i32::try_from(rows.int(0, 0)?)
        .map_err(|_| SessionError::new("a session number out of range"))?;
    let table = LockTable {
        max_locks_per_transaction: rows.int(0, 1)?,
        max_connections: rows.int(0, 2)?,
        max_prepared_transactions: rows.int(0, 3)?,
    };
    Ok((holder, table))
}

/// Takes exclusive queue `queue` for this lock session, for the session's
/// life, if no other session has it. Whether it did.
pub(crate) fn take_exclusive_queue(
    session: &mut Session,
    queue: &str,
) -> Result<bool, SessionError> {
    let rows = session.query(
        concat!(
            "SELECT pg_try_advisory_lock(",
            queue_lock!("$1::text"),
            ")::int4"
        ),
        &[Param::Text(queue)],
    )?;
    Ok(rows.int(0, 0)? == 1)
}

/// The server's settings that size its shared lock table, where every
/// advisory lock (each claimed job's) takes an entry: when it is full,
/// every session that asks for a lock fails with "out of shared memory".
#[derive(Debug, Clone, Copy)]
pub(crate) struct LockTable {
    pub(crate) max_locks_per_transaction: i64,
    pub(crate) max_connections: i64,
    pub(crate) max_prepared_transactions: i64,
}

impl LockTable {
    /// How many locks the table holds (PostgreSQL sizes it so).
    pub(crate) fn capacity(&self) -> i64 {
        self.max_locks_per_transaction
            .saturating_mul(self.max_connections + self.max_prepared_transactions)
    }
}

/// The listener's statement.
pub(crate) const LISTEN: &std::ffi::CStr = c"LISTEN queue_jobs";

/// A job a worker has claimed: it holds the job's advisory lock.
#[derive(Debug)]
pub(crate) struct ClaimedJob {
    pub(crate) id: i64,
    pub(crate) job_type: String,
    pub(crate) payload: String,
    /// Failed attempts recorded so far.
    pub(crate) attempts: i32,
    /// Held before by a session that ended without releasing it.
    pub(crate) suspect: bool,
    /// Who was running it carefully when their worker died.
    pub(crate) crashed_in: Option<String>,
    /// The W3C trace context of the span that enqueued it.
    pub(crate) traceparent: Option<String>,
    /// A rate-limited job's start was counted when it was claimed: it must
    /// start by then (see the function `queue_rate_span`, in the migration
    /// `flow_limits`), or be counted again ([`recount_rated_start`]).
    pub(crate) start_by: Option<Instant>,
    /// How long a rate-limited job has to start, and when its start was
    /// counted (the database's text of it).
    pub(crate) rated: Option<(Duration, String)>,
}

/// The entries of the ready index this session's scans have walked and
/// not yet reported to the server's statistics (a count that only grows
/// within a transaction; 0 when the server counts nothing).
macro_rules! walked_so_far {
    () => {
        "COALESCE(pg_stat_get_xact_tuples_returned(to_regclass('queue_jobs_ready_idx')), 0)"
    };
}

/// The columns a claim reads of a ready job.
macro_rules! ready_columns {
    () => {
        "id, job_type, payload, attempts, suspect, running_by, \
         unique_key IS NOT NULL AS keyed, priority, traceparent"
    };
}

/// Whether queue `$1` is under flow control, as SQL: it holds ready jobs
/// with a concurrency key (one entry of the keyed index looked up), or has
/// limits of its own. A runner that sees it claims the queue through
/// [`KEYED`].
macro_rules! keyed_waiting {
    () => {
        "(EXISTS (SELECT 1 FROM queue_jobs k \
                  WHERE k.queue = $1 AND k.concurrency_key IS NOT NULL \
                    AND k.dead_at IS NULL AND NOT k.scheduled) \
          OR EXISTS (SELECT 1 FROM queue_limits q WHERE q.queue = $1))"
    };
}

/// The claims that do not apply flow control take nothing from a queue with
/// limits of its own (see [`KEYED`]), as SQL.
macro_rules! unlimited {
    () => {
        "NOT EXISTS (SELECT 1 FROM queue_pauses p WHERE p.queue = $1) \
         AND NOT EXISTS (SELECT 1 FROM queue_limits q WHERE q.queue = $1)"
    };
}

/// The plain claim's lock scan `c`: its jobs locked in order until `$2`
/// are, as the `locked` CTE that [`claim_record!`] records.
macro_rules! plain_locks {
    ($scan:expr) => {
        concat!(
            "WITH locked AS MATERIALIZED ( \
                 SELECT c.*, NULL::text AS concurrency_key, NULL::int4 AS start_within, \
                        NULL::text AS counted_at FROM (",
            $scan,
            ") c WHERE pg_try_advisory_lock(",
            job_lock!("c.id"),
            ") \
                 LIMIT $2), "
        )
    };
}

/// What a claim's `locked` CTE leads to: the jobs locked, recorded as the
/// claim of session `$4`, their unique keys given up.
///
/// The record is rewritten where its last version lies (`$row`, its ctid,
/// which the claim returns), and looked up by holder only when it is not
/// there (the first claim, or another statement wrote it since): under a
/// held horizon each rewrite leaves a version that VACUUM cannot remove,
/// and a lookup by holder visits all of them (3 ms after 10,000 claims).
/// Each claim returns at least one row: the record's new place, with the
/// job's columns NULL when it took none, whether the queue holds keyed
/// jobs, and the `$cursor` of a keyed claim.
macro_rules! claim_record {
    ($row:literal, $cursor:literal) => {
        concat!(
            "rewritten AS ( \
                 UPDATE queue_claims \
                 SET jobs = (SELECT COALESCE(array_agg(id), '{}') FROM locked), claimed_at = now() \
                 WHERE ctid = ",
            $row,
            "::tid AND holder = $4::int4 \
                 RETURNING ctid), \
             recorded AS ( \
                 INSERT INTO queue_claims (holder, jobs) \
                 SELECT $4::int4, COALESCE(array_agg(id), '{}') FROM locked \
                 HAVING NOT EXISTS (SELECT 1 FROM rewritten) \
                 ON CONFLICT (holder) DO UPDATE SET jobs = EXCLUDED.jobs, claimed_at = now() \
                 RETURNING ctid), \
             unkeyed AS ( \
                 UPDATE queue_jobs SET unique_key = NULL \
                 WHERE id = ANY (ARRAY(SELECT id FROM locked WHERE keyed))) \
             SELECT l.id, l.job_type, l.payload::text, l.attempts, l.suspect, l.running_by, \
                    l.priority, r.ctid::text, l.traceparent, l.concurrency_key, ",
            keyed_waiting!(),
            ", ",
            $cursor,
            ", l.start_within, l.counted_at \
             FROM (SELECT ctid FROM rewritten UNION ALL SELECT ctid FROM recorded) r \
                  LEFT JOIN locked l ON true, \
                  set_config('synchronous_commit', 'off', true) d"
        )
    };
}

/// The ready jobs of queue `$1` without a concurrency key, from the head of
/// the ready index, as the claims read them (after `FROM queue_jobs`).
macro_rules! plain_head {
    () => {
        concat!(
            "WHERE queue = $1 AND dead_at IS NULL AND NOT scheduled AND concurrency_key IS NULL \
           AND id <> ALL ($3::int8[]) \
           AND job_type = ANY ($5::text[]) \
           AND ",
            unlimited!(),
            " \
         ORDER BY priority DESC, id \
         OFFSET 0"
        )
    };
}

/// A claim from the head of the ready index, in the queue's order.
const SWEEP: &str = concat!(
    plain_locks!(concat!(
        "SELECT ",
        ready_columns!(),
        " FROM queue_jobs ",
        plain_head!()
    )),
    claim_record!("$6", "NULL::text, false, NULL::int4")
);

/// A claim resuming at a position (see [`crate::position`]): for each
/// priority `$6` in turn, the ready jobs after id `$7`. The lateral scan is
/// a range of the ready index that starts at that id, so the entries behind
/// it are not walked. (The priority is bounded on both sides rather than
/// compared for equality: an equality would make the order by priority
/// redundant, and the planner would be free to walk the primary key from
/// the id instead, through every queue's jobs.)
const RESUME: &str = concat!(
    plain_locks!(concat!(
        "SELECT j.* FROM unnest($6::int8[], $7::int8[]) l(priority, after) \
         CROSS JOIN LATERAL ( \
             SELECT ",
        ready_columns!(),
        " FROM queue_jobs \
             WHERE queue = $1 \
               AND priority <= l.priority::int2 AND priority >= l.priority::int2 \
               AND id > l.after \
               AND dead_at IS NULL AND NOT scheduled AND concurrency_key IS NULL \
               AND id <> ALL ($3::int8[]) \
               AND job_type = ANY ($5::text[]) \
             ORDER BY priority DESC, id) j \
         WHERE ",
        unlimited!(),
        " \
         OFFSET 0"
    )),
    claim_record!("$8", "NULL::text, false, NULL::int4")
);

/// A claim of a queue under flow control: one that holds jobs with a
/// concurrency key, or has limits of its own (see the function
/// `queue_claim_flow`, in the migration `flow_limits`): jobs without a key
/// from the head of the ready index, and from the keys in turn after the
/// cursor `$7`, within the queue's limits and each key's. Its last row's
/// cursor is the next claim's, with whether the keys' turn was cut short.
const KEYED: &str = concat!(
    "WITH flow AS MATERIALIZED ( \
         SELECT * FROM queue_claim_flow($1, $2::int4, $3::int8[], $5::text[], $7)), \
     locked AS MATERIALIZED (SELECT * FROM flow WHERE id IS NOT NULL), ",
    claim_record!(
        "$6",
        "(SELECT concurrency_key FROM flow WHERE id IS NULL), \
         (SELECT keyed FROM flow WHERE id IS NULL), \
         (SELECT start_within FROM flow WHERE id IS NULL)"
    )
);

/// Claims up to `limit` ready jobs of `queue` (not in `exclude`; of the
/// `job_types` this binary registers, so that during a rolling deploy an
/// old runner leaves a new type's jobs to the new one; none while the queue
/// is paused) in priority order, skipping jobs other workers
/// hold, and records them as the latest claim of lock session `holder`.
///
/// The lock scan walks the ready index in claim order, from the head
/// ([`SWEEP`]) or from the runner's position ([`RESUME`]), as `scan` says,
/// and takes the advisory lock of jobs until `limit` are locked (the `OFFSET 0` fence
/// keeps the lock call above the ordered scan whatever the plan, so it runs
/// only on rows the LIMIT still wants; the session's settings keep the
/// scan on the index, in order, see [`prepare_runner_session`]). Its
/// snapshot is taken before its locks: a job another worker completed or
/// failed, and released, while the scan ran would look ready. Releases bump
/// `queue_lock_releases` (after the commit, before the unlock), so when the
/// counter moved between a statement before the scan and one after it, the
/// later one reads the locked rows again in its own snapshot, and those no
/// longer ready are let go instead of run again: all in one round trip.
///
/// A claimed unique job gives its key up (see [`crate::Job::UNIQUE`]), in the
/// claim's own transaction: an identical job enqueued from now on is stored
/// and runs after this one. A job released unstarted does not take its key
/// back (an enqueue meanwhile has stored its twin).
///
/// The result also says how many entries of the ready index the scan
/// walked, from the server's count (see [`crate::position`]).
///
/// `completed`: the previous batch's completions, committed (and released
/// as its `Release` says) first, in the same round trip. When the database
/// refuses their deletion, they stay locked and the claim goes on: the
/// result says so.
#[allow(clippy::too_many_arguments)]
pub(crate) fn claim_jobs(
    session: &mut Session,
    queue: &str,
    limit: i64,
    exclude: &[i64],
    holder: (i32, &mut ClaimRow),
    completed: (&[i64], Release<'_>),
    wait_for_disk: bool,
    job_types: &[&str],
    how: &Claiming<'_>,
) -> Result<Claim, SessionError> {
    let (holder, row) = holder;
    let (completed, release) = completed;
    // Before the claim is sent: a rate-limited job's time to start counts
    // from here.
    let sent = Instant::now();
    let mark = session.next_mark();
    let delete = [
        Param::Ints(completed),
        durability(wait_for_disk),
        Param::Int(mark),
    ];
    let param = release_param(release, mark);
    // Letting go of everything is worth a round trip's statements even with
    // nothing to complete: a keyed claim's slots (see [`Release::All`]).
    let releasing = !completed.is_empty() || matches!(release, Release::All { .. });
    let mut steps = Vec::with_capacity(12);
    if releasing {
        steps.extend(completion_steps(&delete, release, &param));
    }
    let (priorities, afters): (Vec<i64>, Vec<i64>) = match how {
        Claiming::Plain(Scan::Resume(levels)) => levels.iter().copied().unzip(),
        _ => (Vec::new(), Vec::new()),
    };
    // (No tuple lies at offset 0: "(0,0)" matches nothing.)
    let last_row = row.0.take();
    let last_row = || Param::Text(last_row.as_deref().unwrap_or("(0,0)"));
    let claim = match how {
        Claiming::Plain(Scan::Sweep) => vec![
            Param::Text(queue),
            Param::Int(limit),
            Param::Ints(exclude),
            Param::Int(i64::from(holder)),
            Param::Texts(job_types),
            last_row(),
        ],
        Claiming::Keyed { cursor } => vec![
            Param::Text(queue),
            Param::Int(limit),
            Param::Ints(exclude),
            Param::Int(i64::from(holder)),
            Param::Texts(job_types),
            last_row(),
            Param::Text(cursor),
        ],
        Claiming::Plain(Scan::Resume(_)) => vec![
            Param::Text(queue),
            Param::Int(limit),
            Param::Ints(exclude),
            Param::Int(i64::from(holder)),
            Param::Texts(job_types),
            Param::Ints(&priorities),
            Param::Ints(&afters),
            last_row(),
        ],
    };
    let recheck = [Param::Int(i64::from(holder))];
    steps.extend([
        Step::Run(
            concat!(
                "SELECT set_config('skiplock.releases', ",
                releases_counted!(),
                "::text, true), set_config('skiplock.walked', ",
                walked_so_far!(),
                "::text, true) FROM queue_lock_releases"
            ),
            &[],
        ),
        Step::Run(
            match how {
                Claiming::Plain(Scan::Sweep) => SWEEP,
                Claiming::Plain(Scan::Resume(_)) => RESUME,
                Claiming::Keyed { .. } => KEYED,
            },
            &claim,
        ),
        // Only when a release was counted since the first statement: the
        // claimed jobs no longer ready, in this statement's snapshot, taken
        // once every lock is held. They are let go and taken off the claim.
        // (The CASE hides the ready index's predicate: the generic plan,
        // made when the table may have been empty, can only look the ids
        // up in the primary key, never walk the ready index.)
        Step::Run(
            concat!(
                "WITH moved AS MATERIALIZED ( \
                     SELECT current_setting('skiplock.releases')::int8 <> ",
                releases_counted!(),
                " AS moved FROM queue_lock_releases), \
                 claim AS MATERIALIZED ( \
                     SELECT jobs FROM queue_claims \
                     WHERE holder = $1::int4 AND (SELECT moved FROM moved)), \
                 ready AS MATERIALIZED ( \
                     SELECT id FROM queue_jobs \
                     WHERE id = ANY ((SELECT jobs FROM claim)::int8[]) \
                       AND CASE WHEN dead_at IS NULL AND NOT scheduled THEN true END), \
                 gone AS MATERIALIZED ( \
                     SELECT x AS id FROM claim, unnest(jobs) x \
                     WHERE x <> ALL (ARRAY(SELECT id FROM ready))), \
                 unclaimed AS ( \
                     UPDATE queue_claims SET jobs = ARRAY(SELECT id FROM ready) \
                     WHERE holder = $1::int4 AND EXISTS (SELECT 1 FROM gone)) \
                 SELECT id, pg_advisory_unlock(",
                job_lock!("id"),
                ") FROM gone"
            ),
            &recheck,
        ),
        // The entries of the ready index the claim's scan walked (its other
        // statements look rows up by id).
        Step::Run(
            concat!(
                "SELECT ",
                walked_so_far!(),
                " - current_setting('skiplock.walked')::int8"
            ),
            &[],
        ),
        Step::Sync,
    ]);
    let mut results = session.pipeline(&steps)?;
    // The completion's statements come first when there are any: a refused
    // deletion is reported; anything else refused leaves the locks the
    // session holds unknown, and the session is given up.
    let mut completions_refused = None;
    if releasing {
        let mut completion = results.drain(..2);
        if let Err(error) = completion.next().expect("the deletion") {
            completions_refused = Some(error);
        }
        let released = completion.next().expect("the release");
        drop(completion);
        released.map_err(|e| session.abandon(e))?;
    }
    let mut claim = Vec::with_capacity(4);
    for result in results {
        claim.push(result.map_err(|e| session.abandon(e))?);
    }
    let (locked, gone) = (&claim[1], &claim[2]);
    let walked = claim[3].int(0, 0)?;
    // The record's new place; rows with no job say only that.
    row.0 = (locked.len() > 0)
        .then(|| locked.text(0, 7).map(str::to_owned))
        .flatten();
    let locked_rows: Vec<usize> = (0..locked.len())
        .filter(|&at| locked.text(at, 0).is_some())
        .collect();
    let taken = locked_rows
        .iter()
        .map(|&at| Ok((locked.int(at, 6)?, locked.int(at, 0)?)))
        .collect::<Result<Vec<_>, SessionError>>()?;
    let gone = (0..gone.len())
        .map(|row| gone.int(row, 0))
        .collect::<Result<Vec<_>, SessionError>>()?;
    let jobs = locked_rows
        .iter()
        .map(|&row| {
            let rated = match (locked.text(row, 14), locked.text(row, 15)) {
                (Some(_), Some(counted)) => {
                    let within = u64::try_from(locked.int(row, 14)?).unwrap_or(0);
                    Some((Duration::from_millis(within), counted.to_owned()))
                }
                _ => None,
            };
            Ok(ClaimedJob {
                id: locked.int(row, 0)?,
                job_type: locked.string(row, 1)?,
                payload: locked.string(row, 2)?,
                attempts: i32::try_from(locked.int(row, 3)?).unwrap_or(i32::MAX),
                suspect: locked.text(row, 4) == Some("t"),
                crashed_in: locked.text(row, 5).map(str::to_owned),
                traceparent: locked.text(row, 8).map(str::to_owned),
                start_by: rated.as_ref().map(|(within, _)| sent + *within),
                rated,
            })
        })
        .filter(|job| job.as_ref().map_or(true, |job| !gone.contains(&job.id)))
        .collect::<Result<_, _>>()?;
    // Every row repeats the claim's own columns.
    let keyed_waiting = locked.len() > 0 && locked.text(0, 10) == Some("t");
    let cursor = (locked.len() > 0)
        .then(|| locked.text(0, 11).map(str::to_owned))
        .flatten();
    let cut = locked.len() > 0 && locked.text(0, 12) == Some("t");
    let opens_in = match locked.len() > 0 && locked.text(0, 13).is_some() {
        true => Some(Duration::from_millis(
            u64::try_from(locked.int(0, 13)?).unwrap_or(0),
        )),
        false => None,
    };
    Ok(Claim {
        jobs,
        completions_refused,
        taken,
        walked,
        keyed: Keyed {
            waiting: keyed_waiting,
            cursor,
            cut,
            opens_in,
        },
    })
}

/// Counts again the start of rate-limited job `id`, whose worker could not
/// start it in time: its start counted `at` taken back, and counted now if
/// its windows have room (when, as the database writes it: start it at
/// once). `None`: counted nowhere.
pub(crate) fn recount_rated_start(
    session: &mut Session,
    id: i64,
    at: &str,
) -> Result<Option<String>, SessionError> {
    let rows = session.query(
        "SELECT queue_rate_recount($1::int8, $2::timestamptz)",
        &[Param::Int(id), Param::Text(at)],
    )?;
    Ok(rows.text(0, 0).map(str::to_owned))
}

/// Where a lock session's claim record lies (its ctid, as text), if known:
/// see `claim_record!`.
#[derive(Debug, Default)]
pub(crate) struct ClaimRow(Option<String>);

/// What [`claim_jobs`] did.
#[derive(Debug)]
pub(crate) struct Claim {
    /// The jobs claimed, locked by the session.
    pub(crate) jobs: Vec<ClaimedJob>,
    /// Why the database refused to delete the completed jobs, if it did:
    /// they are still locked, their rows still there.
    pub(crate) completions_refused: Option<SessionError>,
    /// `(priority, id)` of every job the scan locked.
    pub(crate) taken: Vec<(i64, i64)>,
    /// How many entries of the ready index the claim walked.
    pub(crate) walked: i64,
    /// What the claim saw of the queue's jobs with a concurrency key.
    pub(crate) keyed: Keyed,
}

/// How a worker claims a queue.
#[derive(Debug)]
pub(crate) enum Claiming<'a> {
    /// Only jobs without a concurrency key, from the ready index.
    Plain(&'a Scan),
    /// Jobs with a key too, the keys in turn from the one after `cursor`
    /// (`""`: the first): see [`KEYED`].
    Keyed { cursor: &'a str },
}

/// What a claim saw of a queue's jobs with a concurrency key.
#[derive(Debug, Default)]
pub(crate) struct Keyed {
    /// The queue holds ready ones (running ones included: they are ready
    /// until their completion deletes them).
    pub(crate) waiting: bool,
    /// A keyed claim's last key visited: where the next one starts.
    pub(crate) cursor: Option<String>,
    /// A keyed claim stopped before it had visited every key once since it
    /// last took a job: more may be claimable at once.
    pub(crate) cut: bool,
    /// How soon a full rate window the claim met will have room.
    pub(crate) opens_in: Option<Duration>,
}

/// Records that `worker` starts running a claimed job carefully, so that
/// its death during the run is charged to the job. `false`: the row is gone.
pub(crate) fn mark_running(
    session: &mut Session,
    id: i64,
    worker: &str,
) -> Result<bool, SessionError> {
    let rows = session.query(
        "WITH marked AS (UPDATE queue_jobs SET running_by = $2 WHERE id = $1 RETURNING id) \
         SELECT count(*) FROM marked, set_config('synchronous_commit', 'off', true) d",
        &[Param::Int(id), Param::Text(worker)],
    )?;
    Ok(rows.int(0, 0)? == 1)
}

/// `on` or `off`, for the statements that take the durability as a parameter.
fn durability(wait_for_disk: bool) -> Param<'static> {
    Param::Text(if wait_for_disk { "on" } else { "off" })
}

/// How a worker lets go of jobs whose rows it has written.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Release<'a> {
    /// Just these.
    These(&'a [i64]),
    /// Everything the session holds (the batch is over: nothing else is
    /// held; the slots of concurrency keys go too), then the session's own
    /// number again, and the exclusive queue it holds (`""`: none). Those two are taken for the statement's
    /// transaction first, so that no other session can take them while
    /// everything is let go: a reaper would take the session for ended, a
    /// standby runner would take the queue.
    All { holder: i32, exclusive: &'a str },
}

/// The parameters of a release step (two or three).
#[derive(Debug)]
struct ReleaseParams<'a> {
    params: [Param<'a>; 3],
    len: usize,
}

impl<'a> ReleaseParams<'a> {
    fn as_slice(&self) -> &[Param<'a>] {
        &self.params[..self.len]
    }
}

/// Counts the release (see [`claim_jobs`]) and releases, after the write
/// before it in the pipeline has committed: one statement, the counter
/// bumped before the first lock goes (the `OFFSET 0` subqueries and the
/// one-time filter run first, whatever the plan).
///
/// It runs only when the session's mark `skiplock.written` is the write's:
/// the write sets it with `set_config(.., false)` in its own transaction,
/// and a transaction that does not commit takes its settings back. (A
/// pipeline skips what follows a failed statement only up to the next
/// `Sync`, and the release must come after that `Sync` to follow the
/// commit.)
fn release_step<'a>(release: Release<'a>, params: &'a ReleaseParams<'a>) -> Step<'a> {
    let params = params.as_slice();
    match release {
        Release::These(_) => Step::Run(
            concat!(
                "SELECT count(pg_advisory_unlock(",
                job_lock!("x"),
                ")) FROM unnest($1::int8[]) x \
                 WHERE current_setting('skiplock.written', true) = $2::int8::text \
                   AND (SELECT nextval('queue_lock_releases')) IS NOT NULL"
            ),
            params,
        ),
        Release::All { .. } => Step::Run(
            concat!(
                "SELECT pg_advisory_lock(",
                holder_lock!("$1::int4"),
                "), CASE WHEN $3::text <> '' THEN pg_advisory_lock(",
                queue_lock!("$3::text"),
                ") END \
             FROM (SELECT pg_advisory_unlock_all(), set_config('skiplock.slots', '', false) \
                   FROM (SELECT nextval('queue_lock_releases'), pg_advisory_xact_lock(",
                holder_lock!("$1::int4"),
                "), CASE WHEN $3::text <> '' THEN pg_advisory_xact_lock(",
                queue_lock!("$3::text"),
                ") END \
                         WHERE current_setting('skiplock.written', true) = $2::int8::text \
                         OFFSET 0) counted \
                   OFFSET 0) released"
            ),
            params,
        ),
    }
}

/// The parameters of [`release_step`]: what to release, and the mark of
/// the write it follows.
fn release_param(release: Release<'_>, mark: i64) -> ReleaseParams<'_> {
    match release {
        Release::These(ids) => ReleaseParams {
            params: [Param::Ints(ids), Param::Int(mark), Param::Int(0)],
            len: 2,
        },
        Release::All { holder, exclusive } => ReleaseParams {
            params: [
                Param::Int(i64::from(holder)),
                Param::Int(mark),
                Param::Text(exclusive),
            ],
            len: 3,
        },
    }
}

/// The steps of [`complete_jobs`] (`delete` is the ids, the durability and
/// the write's mark), the release left open for the caller's next
/// statements.
fn completion_steps<'a>(
    delete: &'a [Param<'a>; 3],
    release: Release<'a>,
    param: &'a ReleaseParams<'a>,
) -> [Step<'a>; 3] {
    [
        Step::Run(
            "WITH done AS (DELETE FROM queue_jobs WHERE id = ANY ($1::int8[]) RETURNING 1) \
             SELECT count(*), set_config('synchronous_commit', $2, true), \
                    set_config('skiplock.written', $3::int8::text, false) \
             FROM done",
            delete,
        ),
        Step::Sync,
        release_step(release, param),
    ]
}

/// Deletes completed jobs, and once that has committed, releases their
/// locks (or, when the batch is over, everything). When the database
/// refuses the deletion, each job is tried on its own (one bad row does
/// not hold up the others): what it still refuses is returned, locked.
pub(crate) fn complete_jobs(
    session: &mut Session,
    ids: &[i64],
    release: Release<'_>,
    wait_for_disk: bool,
) -> Result<Option<Refused>, SessionError> {
    let mark = session.next_mark();
    let delete = [
        Param::Ints(ids),
        durability(wait_for_disk),
        Param::Int(mark),
    ];
    let param = release_param(release, mark);
    let mut steps = completion_steps(&delete, release, &param).to_vec();
    steps.push(Step::Sync);
    let mut results = session.pipeline(&steps)?.into_iter();
    let deleted = results.next().expect("the deletion");
    results
        .next()
        .expect("the release")
        .map_err(|e| session.abandon(e))?;
    match deleted {
        Ok(_) => Ok(None),
        Err(error) if ids.len() == 1 => Ok(Some(Refused {
            ids: ids.to_vec(),
            error,
        })),
        Err(_) => complete_each(session, ids, wait_for_disk),
    }
}

/// [`complete_jobs`] one job at a time, in one round trip.
fn complete_each(
    session: &mut Session,
    ids: &[i64],
    wait_for_disk: bool,
) -> Result<Option<Refused>, SessionError> {
    let marks: Vec<i64> = ids.iter().map(|_| session.next_mark()).collect();
    let deletes: Vec<[Param<'_>; 3]> = ids
        .chunks(1)
        .zip(&marks)
        .map(|(id, &mark)| [Param::Ints(id), durability(wait_for_disk), Param::Int(mark)])
        .collect();
    let releases: Vec<ReleaseParams<'_>> = ids
        .chunks(1)
        .zip(&marks)
        .map(|(id, &mark)| release_param(Release::These(id), mark))
        .collect();
    let mut steps = Vec::with_capacity(ids.len() * 3 + 1);
    for ((id, delete), param) in ids.chunks(1).zip(&deletes).zip(&releases) {
        steps.extend(completion_steps(delete, Release::These(id), param));
    }
    steps.push(Step::Sync);
    let results = session.pipeline(&steps)?;
    let mut refused = Vec::new();
    let mut first_error = None;
    for (pair, &id) in results.chunks(2).zip(ids) {
        if let Err(error) = &pair[1] {
            return Err(session.abandon(error.clone()));
        }
        if let Err(error) = &pair[0] {
            refused.push(id);
            first_error.get_or_insert_with(|| error.clone());
        }
    }
    Ok(first_error.map(|error| Refused {
        ids: refused,
        error,
    }))
}

/// Writes the database refused: their jobs are still locked by the session,
/// their rows as they were.
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) ids: Vec<i64>,
    /// Why (the first refusal's message).
    pub(crate) error: SessionError,
}

/// Deletes completed jobs whose locks are gone (their session was lost),
/// on another session, counting the release for the claims' recheck in the
/// deletion's transaction and again after its commit (see
/// `storage::count_release`). Returns how many rows were deleted.
pub(crate) fn complete_elsewhere(
    session: &mut Session,
    ids: &[i64],
) -> Result<usize, SessionError> {
    let delete = [Param::Ints(ids)];
    let results = session.pipeline(&[
        Step::Run(
            "WITH done AS (DELETE FROM queue_jobs WHERE id = ANY ($1::int8[]) RETURNING 1) \
             SELECT count(*), nextval('queue_lock_releases') FROM done",
            &delete,
        ),
        Step::Sync,
        Step::Run("SELECT nextval('queue_lock_releases')", &[]),
        Step::Sync,
    ])?;
    let mut results = results.into_iter();
    let deleted = results.next().expect("the deletion")?;
    let n = deleted.int(0, 0)?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Gives claimed jobs back unstarted: takes them off `holder`'s claim and
/// releases their locks.
pub(crate) fn release_jobs(
    session: &mut Session,
    unstarted: &[i64],
    holder: i32,
) -> Result<(), SessionError> {
    session.query(
        concat!(
            "WITH off_the_claim AS ( \
                 UPDATE queue_claims SET jobs = ARRAY( \
                     SELECT x FROM unnest(jobs) x WHERE x <> ALL ($1::int8[])) \
                 WHERE holder = $2::int4) \
             SELECT count(pg_advisory_unlock(",
            job_lock!("x"),
            ")) FROM unnest($1::int8[]) x, set_config('synchronous_commit', 'off', true) d"
        ),
        &[Param::Ints(unstarted), Param::Int(i64::from(holder))],
    )?;
    Ok(())
}

/// Ends lock session `holder` cleanly: it holds nothing any more. (Without
/// waiting for the disk, as every write of who holds what: a record a
/// server crash brings back names a session that has ended, which the
/// reaper clears.)
pub(crate) fn retire_lock_session(session: &mut Session, holder: i32) -> Result<(), SessionError> {
    session.query(
        "WITH retired AS (DELETE FROM queue_claims WHERE holder = $1::int4 RETURNING 1) \
         SELECT count(*) FROM retired, set_config('synchronous_commit', 'off', true) d",
        &[Param::Int(i64::from(holder))],
    )?;
    Ok(())
}

/// Releases the locks of jobs whose rows were written (and committed) on
/// another connection, counting the release (see [`claim_jobs`]).
pub(crate) fn unlock_jobs(session: &mut Session, ids: &[i64]) -> Result<(), SessionError> {
    session.query(
        concat!(
            "SELECT count(pg_advisory_unlock(",
            job_lock!("x"),
            ")) FROM unnest($1::int8[]) x \
             WHERE (SELECT nextval('queue_lock_releases')) IS NOT NULL"
        ),
        &[Param::Ints(ids)],
    )?;
    Ok(())
}

/// What a failed attempt leads to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum NextAttempt {
    /// Retried after this long.
    After(Duration),
    /// Never: the job is dead.
    Never,
}

/// Records a failed attempt of a claimed job (its error, and its next
/// attempt or death), and once that has committed, releases its lock.
/// `Ok(Some(why))`: the database refused the write; the job is still
/// locked, its row as it was.
pub(crate) fn record_failure(
    session: &mut Session,
    id: i64,
    error: &str,
    next: NextAttempt,
    wait_for_disk: bool,
) -> Result<Option<SessionError>, SessionError> {
    let (dead, retry_in) = match next {
        NextAttempt::After(wait) => ("false", i64::try_from(wait.as_micros()).unwrap_or(i64::MAX)),
        NextAttempt::Never => ("true", 0),
    };
    let mark = session.next_mark();
    let failure = [
        Param::Int(id),
        Param::Text(error),
        Param::Text(dead),
        Param::Int(retry_in),
        durability(wait_for_disk),
        Param::Int(mark),
    ];
    let ids = [id];
    let release = Release::These(&ids);
    let param = release_param(release, mark);
    let steps = [
        Step::Run(
            "WITH failed AS ( \
                 UPDATE queue_jobs SET \
                     attempts = attempts + 1, \
                     last_error = $2, \
                     last_failed_at = clock_timestamp(), \
                     first_failed_at = COALESCE(first_failed_at, clock_timestamp()), \
                     dead_at = CASE WHEN $3::bool THEN clock_timestamp() END, \
                     run_at = CASE WHEN $3::bool THEN run_at \
                                   ELSE clock_timestamp() + $4::int8 * interval '1 microsecond' END, \
                     scheduled = NOT $3::bool, \
                     running_by = NULL \
                 WHERE id = $1 RETURNING 1) \
             SELECT count(*), set_config('synchronous_commit', $5, true), \
                    set_config('skiplock.written', $6::int8::text, false) \
             FROM failed",
            &failure,
        ),
        Step::Sync,
        release_step(release, &param),
        Step::Sync,
    ];
    let mut results = session.pipeline(&steps)?.into_iter();
    let written = results.next().expect("the write");
    results
        .next()
        .expect("the release")
        .map_err(|e| session.abandon(e))?;
    Ok(written.err())
}
