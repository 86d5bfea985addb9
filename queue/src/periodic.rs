//! Periodic jobs: cron schedules whose ticks every runner may enqueue, each
//! tick exactly once across all of them.
//!
//! Each runner declaring schedules runs one thread that sleeps until the
//! next tick of any of them, then tries to claim it: one transaction moves
//! the schedule's `last_tick` past it (only if it is still before) and
//! inserts the job. The runner whose update wins enqueues; the others find
//! the tick taken. A runner that dies before committing leaves the tick to
//! the others, and the tick counts only once its job is stored.
//!
//! After downtime (no runner alive at some ticks), the latest due tick is
//! enqueued once for all the missed ones, or, for a schedule that
//! [skips missed ticks](Periodic::skip_missed), none of them.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use tracing::{debug, info, warn};

use crate::connection;
use crate::errors::{EnqueueError, RunnerError};
use crate::job::{EnqueueOptions, Job};
use crate::state::{Settings, Shared};
use crate::storage::{self, NewJob, TickClaim};

/// A job enqueued on a clock: a cron schedule and the job of each tick.
///
/// ```
/// use skiplock::{background_job, Periodic};
///
/// #[background_job(queue = "maintenance")]
/// fn expire_tokens() {}
///
/// #[background_job(queue = "reports")]
/// fn daily_report(day: String) { let _ = day; }
///
/// let nightly = Periodic::new("0 30 2 * * *", |tick| daily_report(tick.date_naive().to_string()))
///     .name("daily-report")
///     .time_zone("Europe/Paris")
///     .skip_missed();
/// # let _ = nightly;
/// // Runner::builder(state).periodic("*/5 * * * *", || expire_tokens()).schedule(nightly)
/// ```
pub struct Periodic {
    name: String,
    cron_text: String,
    zone_text: String,
    missed: Missed,
    make: Box<dyn Fn(DateTime<Utc>) -> Result<NewJob, EnqueueError> + Send + Sync>,
}

/// What a schedule does with ticks no runner was there to enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Missed {
    /// The latest missed tick is enqueued, once for all of them.
    CatchUp,
    /// None of them is.
    Skip,
}

impl fmt::Debug for Periodic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Periodic")
            .field("name", &self.name)
            .field("cron", &self.cron_text)
            .field("time_zone", &self.zone_text)
            .field("missed", &self.missed)
            .finish_non_exhaustive()
    }
}

impl Periodic {
    /// A schedule: `cron` (five fields, `min hour day month weekday`, or six
    /// with seconds first, as cron and its successors write them; checked by
    /// [`RunnerBuilder::build`](crate::RunnerBuilder::build)) and the job of
    /// each tick, made from the tick's time. Named after the job type; in
    /// UTC; a missed tick is caught up once.
    pub fn new<J: Job>(
        cron: &str,
        make: impl Fn(DateTime<Utc>) -> J + Send + Sync + 'static,
    ) -> Periodic {
        Periodic {
            name: J::JOB_TYPE.to_owned(),
            cron_text: cron.to_owned(),
            zone_text: "UTC".to_owned(),
            missed: Missed::CatchUp,
            make: Box::new(move |tick| NewJob::build(&make(tick), &EnqueueOptions::new())),
        }
    }

    /// Names the schedule (its row in `queue_schedules`, what `status`
    /// shows): needed when one job type has two schedules.
    pub fn name(mut self, name: impl Into<String>) -> Periodic {
        self.name = name.into();
        self
    }

    /// Reads the schedule in this IANA time zone (`"Europe/Paris"`):
    /// `0 0 9 * * *` is then 9:00 there, summer and winter.
    pub fn time_zone(mut self, zone: impl Into<String>) -> Periodic {
        self.zone_text = zone.into();
        self
    }

    /// Ticks that passed while no runner was alive are not enqueued at all
    /// (by default the latest of them is, once).
    pub fn skip_missed(mut self) -> Periodic {
        self.missed = Missed::Skip;
        self
    }

    /// Checks the cron text and the time zone.
    pub(crate) fn check(self) -> Result<Schedule, RunnerError> {
        let invalid =
            |what: String| RunnerError::Config(format!("schedule `{}`: {what}", self.name));
        if self.name.is_empty() {
            return Err(RunnerError::Config("a schedule's name is empty".into()));
        }
        let cron = croner::Cron::new(&self.cron_text)
            .with_seconds_optional()
            .parse()
            .map_err(|e| {
                invalid(format!(
                    "invalid cron `{}`: {e}; write five fields (`*/5 * * * *`) or six with \
                     seconds first (`0 */5 * * * *`)",
                    self.cron_text.escape_debug()
                ))
            })?;
        let zone = chrono_tz::Tz::from_str(&self.zone_text).map_err(|_| {
            invalid(format!(
                "unknown time zone `{}`; use an IANA name such as `UTC` or `Europe/Paris`",
                self.zone_text.escape_debug()
            ))
        })?;
        // A pattern that never matches (`0 0 30 2 *`) would stop silently.
        if next_after(&cron, zone, Utc::now()).is_none() {
            return Err(invalid(format!(
                "`{}` never falls due",
                self.cron_text.escape_debug()
            )));
        }
        Ok(Schedule {
            name: self.name,
            cron_text: self.cron_text,
            zone_text: self.zone_text,
            cron,
            zone,
            missed: self.missed,
            make: self.make,
        })
    }
}

/// A checked [`Periodic`].
pub(crate) struct Schedule {
    pub(crate) name: String,
    cron_text: String,
    zone_text: String,
    cron: croner::Cron,
    zone: chrono_tz::Tz,
    missed: Missed,
    make: Box<dyn Fn(DateTime<Utc>) -> Result<NewJob, EnqueueError> + Send + Sync>,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schedule")
            .field("name", &self.name)
            .field("cron", &self.cron_text)
            .finish_non_exhaustive()
    }
}

/// The first tick strictly after `after`.
fn next_after(
    cron: &croner::Cron,
    zone: chrono_tz::Tz,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&after.with_timezone(&zone), false)
        .ok()
        .map(|tick| tick.with_timezone(&Utc))
}

impl Schedule {
    fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        next_after(&self.cron, self.zone, after)
    }

    /// The latest tick in `(after, now]`, and whether an earlier one of
    /// them was passed over; `None` when no tick is due.
    fn due(&self, after: DateTime<Utc>, now: DateTime<Utc>) -> Option<(DateTime<Utc>, bool)> {
        let mut latest = self.next_after(after).filter(|tick| *tick <= now)?;
        let mut passed_over = false;
        while let Some(next) = self.next_after(latest).filter(|tick| *tick <= now) {
            latest = next;
            passed_over = true;
        }
        Some((latest, passed_over))
    }
}

/// Whether the latest due tick is enqueued: always when it is on time
/// (the ticks it passed over are never enqueued one by one); when it is
/// late too (no runner was there at its time), only to catch up.
fn enqueues(missed: Missed, on_time: bool) -> bool {
    on_time || missed == Missed::CatchUp
}

/// How late a tick may be claimed and still count as on time (not missed).
fn grace(poll_interval: Duration) -> chrono::Duration {
    chrono::Duration::from_std(poll_interval.max(Duration::from_secs(1)))
        .unwrap_or(chrono::Duration::MAX)
}

/// The periodic thread of a runner: until the runner stops, claims each
/// due tick of `schedules` and sleeps until the next one (at most a poll
/// interval, so a tick taken by another runner is noticed).
pub(crate) fn run<C>(shared: Arc<Shared<C>>) {
    let (pool, signals, schedules) = (&shared.pool, &shared.signals, &shared.schedules);
    let poll_interval = shared.settings.poll_interval;
    let started = Utc::now();
    let mut failing = false;
    let mut declared = false;
    let mut held = BTreeSet::new();
    while !signals.is_stopped() {
        let result = (|| -> Result<Option<DateTime<Utc>>, Box<dyn std::error::Error>> {
            let mut conn = connection::checked_get(pool)?;
            if !declared {
                for schedule in schedules.iter() {
                    let next = schedule.next_after(Utc::now());
                    storage::declare_schedule(
                        &mut conn,
                        &schedule.name,
                        &schedule.cron_text,
                        &schedule.zone_text,
                        next,
                    )?;
                }
                declared = true;
            }
            tick(&mut conn, schedules, started, &shared.settings, &mut held)
        })();
        let wake_at = match result {
            Ok(next) => {
                if std::mem::take(&mut failing) {
                    info!("enqueueing periodic jobs again");
                }
                next
            }
            Err(error) => {
                if !std::mem::replace(&mut failing, true) {
                    warn!(%error, "cannot enqueue periodic jobs; trying again every poll \
                        interval (logged once)");
                }
                None
            }
        };
        let poll = Utc::now() + chrono::Duration::from_std(poll_interval).unwrap_or_default();
        let wake_at = wake_at.map_or(poll, |at| at.min(poll));
        // In steps, so that a change of the clock is seen (a stop ends
        // the sleep at once).
        while !signals.is_stopped() {
            let left = (wake_at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            if left.is_zero() {
                break;
            }
            signals.sleep(left.min(Duration::from_millis(50)));
        }
    }
}

/// How soon a runner asks again for a tick another runner's transaction
/// holds.
const HELD_RETRY: Duration = Duration::from_millis(200);

/// Claims every due tick; returns when the next one falls due. `held`: the
/// schedules found held by another runner's unfinished tick transaction,
/// until this runner takes or sees their tick.
fn tick(
    conn: &mut PgConnection,
    schedules: &[Schedule],
    started: DateTime<Utc>,
    settings: &Settings,
    held: &mut BTreeSet<String>,
) -> Result<Option<DateTime<Utc>>, Box<dyn std::error::Error>> {
    let poll_interval = settings.poll_interval;
    let names: Vec<&str> = schedules.iter().map(|s| s.name.as_str()).collect();
    let last_ticks = storage::last_ticks(conn, &names)?;
    let now = Utc::now();
    let mut soonest: Option<DateTime<Utc>> = None;
    for schedule in schedules {
        // Never ticked: from this runner's start, not from the beginning of time.
        let last = last_ticks
            .iter()
            .find(|(name, _)| *name == schedule.name)
            .and_then(|(_, last)| *last)
            .unwrap_or(started);
        let mut next = schedule.next_after(now);
        if let Some((tick, passed_over)) = schedule.due(last, now) {
            let late = passed_over || now - tick > grace(poll_interval);
            let enqueue = enqueues(schedule.missed, now - tick <= grace(poll_interval));
            let following = schedule.next_after(tick);
            let claim =
                conn.transaction(|conn| -> Result<TickClaim, Box<dyn std::error::Error>> {
                    // The runner's timeouts, not the role's (see `connection::as_runner`).
                    storage::runner_timeouts(conn, settings.patience.statement)?;
                    let claim = storage::claim_tick(conn, &schedule.name, tick, following)?;
                    if claim == TickClaim::Taken && enqueue {
                        storage::insert_job(conn, &(schedule.make)(tick)?)?;
                    }
                    Ok(claim)
                })?;
            let was_held = match claim {
                TickClaim::Held => {
                    if held.insert(schedule.name.clone()) {
                        info!(schedule = %schedule.name, %tick,
                            "another runner is taking this schedule's tick and has not \
                             committed (its transaction holds the schedule); not waiting for \
                             it, asking again every 200 ms");
                    }
                    next = Some(now + HELD_RETRY);
                    true
                }
                TickClaim::Taken | TickClaim::TakenElsewhere => held.remove(&schedule.name),
            };
            if claim == TickClaim::Taken {
                let missed_because = if was_held {
                    "while another runner held the schedule"
                } else {
                    "while no runner was alive"
                };
                match (enqueue, late) {
                    (true, false) => {
                        debug!(schedule = %schedule.name, %tick, "periodic job enqueued")
                    }
                    (true, true) => info!(schedule = %schedule.name, %tick,
                        "periodic job enqueued once for the ticks missed {missed_because}"),
                    (false, _) => info!(schedule = %schedule.name, %tick,
                        "ticks missed {missed_because} are skipped, as configured"),
                }
            }
        }
        soonest = match (soonest, next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(soonest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job for schedules that are only checked, never run.
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Nothing;

    impl Job for Nothing {
        const JOB_TYPE: &'static str = "nothing";
        type Context = ();

        fn run(self, _: &(), _: &mut crate::JobConnection<'_>) -> Result<(), crate::PerformError> {
            Ok(())
        }
    }

    fn schedule(cron: &str, missed: Missed) -> Schedule {
        let periodic = Periodic::new(cron, |_| Nothing);
        let periodic = match missed {
            Missed::CatchUp => periodic,
            Missed::Skip => periodic.skip_missed(),
        };
        periodic.check().unwrap()
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn after_downtime_only_the_latest_due_tick_is_considered() {
        let every_minute = schedule("* * * * *", Missed::CatchUp);
        // Last enqueued 10:00; back at 10:07:30: one tick, 10:07, for 10:01 to 10:07.
        let (tick, passed_over) = every_minute
            .due(at("2026-11-27T10:00:00Z"), at("2026-11-27T10:07:30Z"))
            .unwrap();
        assert_eq!(tick, at("2026-11-27T10:07:00Z"));
        assert!(passed_over);
        // Nothing due before the next tick.
        assert!(every_minute
            .due(at("2026-11-27T10:07:00Z"), at("2026-11-27T10:07:59Z"))
            .is_none());
        // On time: due, nothing passed over.
        assert_eq!(
            every_minute.due(at("2026-11-27T10:07:00Z"), at("2026-11-27T10:08:00.2Z")),
            Some((at("2026-11-27T10:08:00Z"), false))
        );
    }

    #[test]
    fn a_late_tick_is_enqueued_to_catch_up_unless_missed_ticks_are_skipped() {
        assert!(enqueues(Missed::CatchUp, true));
        assert!(enqueues(Missed::CatchUp, false));
        assert!(enqueues(Missed::Skip, true));
        assert!(!enqueues(Missed::Skip, false));
    }

    #[test]
    fn five_and_six_fields_time_zones_and_mistakes() {
        let paris = Periodic::new("0 9 * * *", |_| Nothing)
            .time_zone("Europe/Paris")
            .check()
            .unwrap();
        // 9:00 in Paris is 8:00 UTC in winter.
        assert_eq!(
            paris.next_after(at("2026-11-27T07:00:00Z")),
            Some(at("2026-11-27T08:00:00Z"))
        );
        let seconds = schedule("*/10 * * * * *", Missed::CatchUp);
        assert_eq!(
            seconds.next_after(at("2026-11-27T10:00:01Z")),
            Some(at("2026-11-27T10:00:10Z"))
        );
        for (cron, zone, says) in [
            ("* * *", "UTC", "five fields"),
            ("61 * * * *", "UTC", "invalid cron `61 * * * *`"),
            (
                "* * * * *",
                "Mars/Olympus",
                "unknown time zone `Mars/Olympus`",
            ),
            ("0 0 30 2 *", "UTC", "never falls due"),
        ] {
            let error = Periodic::new(cron, |_| Nothing)
                .time_zone(zone)
                .check()
                .unwrap_err()
                .to_string();
            assert!(error.contains(says), "{cron}: {error}");
        }
    }
}
