//! Flow control's settings: rate limits, and a queue's own limits, set at
//! run time for every runner (see the README's "Flow control").

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::PgConnection;

use crate::admin::require_schema;
use crate::errors::AdminError;
use crate::storage;

/// The most starts a rate limit may allow per period.
pub const MAX_RATE_LIMIT: u32 = 1_000;

/// The shortest period of a rate limit.
pub const MIN_RATE_PERIOD: Duration = Duration::from_secs(1);

/// The longest period of a rate limit.
pub const MAX_RATE_PERIOD: Duration = Duration::from_secs(86_400);

/// At most `limit` starts in any `period`, across every runner and host:
/// `"100/1s"`, `"10/1m"`, `"5000/1h"` (1 to [`MAX_RATE_LIMIT`] starts, a
/// period of [`MIN_RATE_PERIOD`] to [`MAX_RATE_PERIOD`], whole
/// milliseconds). See [`crate::Job::RATE`] and [`QueueLimits::rate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    limit: u32,
    period_ms: u32,
}

/// Why a rate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RateError(String);

impl Rate {
    /// At most `limit` starts in any `period`.
    pub fn new(limit: u32, period: Duration) -> Result<Self, RateError> {
        if !(1..=MAX_RATE_LIMIT).contains(&limit) {
            return Err(RateError(format!(
                "a rate of {limit} starts is out of range; use 1 to {MAX_RATE_LIMIT} \
                 (a longer period allows more)"
            )));
        }
        if !(MIN_RATE_PERIOD..=MAX_RATE_PERIOD).contains(&period)
            || period.subsec_nanos() % 1_000_000 != 0
        {
            return Err(RateError(format!(
                "a rate's period of {} is refused; use whole milliseconds from 1s to 24h",
                humantime::format_duration(period)
            )));
        }
        let period_ms = u32::try_from(period.as_millis()).expect("at most a day");
        Ok(Self { limit, period_ms })
    }

    /// Checked by `#[background_job(rate = "...")]` when it expands.
    #[doc(hidden)]
    pub const fn __checked(limit: u32, period_ms: u32) -> Self {
        Self { limit, period_ms }
    }

    /// The most starts per period.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The period.
    pub fn period(&self) -> Duration {
        Duration::from_millis(u64::from(self.period_ms))
    }

    /// As the database stores it: (limit, period in milliseconds).
    pub(crate) fn stored(&self) -> (i32, i32) {
        let stored = |n: u32| i32::try_from(n).expect("checked on creation");
        (stored(self.limit), stored(self.period_ms))
    }

    fn from_stored(limit: Option<i32>, period_ms: Option<i32>) -> Option<Self> {
        Some(Self {
            limit: u32::try_from(limit?).ok()?,
            period_ms: u32::try_from(period_ms?).ok()?,
        })
    }
}

impl FromStr for Rate {
    type Err = RateError;

    /// `LIMIT/PERIOD`: `100/1s`, `10/1m`, `30/90s`, `5/s` (one unit).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let refused = || {
            let shown: String = text.chars().take(40).collect();
            RateError(format!(
                "a rate is written LIMIT/PERIOD, like \"100/1s\" or \"10/1m\"; {shown:?} is not"
            ))
        };
        let (limit, period) = text.split_once('/').ok_or_else(refused)?;
        let limit: u32 = limit.trim().parse().map_err(|_| refused())?;
        let period = period.trim();
        let period = if period.starts_with(|c: char| c.is_ascii_digit()) {
            humantime::parse_duration(period).map_err(|_| refused())?
        } else {
            humantime::parse_duration(&format!("1{period}")).map_err(|_| refused())?
        };
        Self::new(limit, period)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.limit,
            humantime::format_duration(self.period())
        )
    }
}

impl serde::Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A queue's own limits, for every runner of every host (stored in the
/// database; see [`set_queue_limits`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueLimits {
    /// At most this many of the queue's jobs run at once (1 to
    /// [`crate::MAX_CONCURRENT_LIMIT`]).
    pub max_running: Option<u32>,
    /// At most this many of the queue's jobs start per period.
    pub rate: Option<Rate>,
}

impl QueueLimits {
    /// No limits.
    pub fn none() -> Self {
        Self::default()
    }

    /// At most `max` of the queue's jobs run at once.
    pub fn max_running(mut self, max: u32) -> Self {
        self.max_running = Some(max);
        self
    }

    /// At most `rate` of the queue's jobs start.
    pub fn rate(mut self, rate: Rate) -> Self {
        self.rate = Some(rate);
        self
    }
}

/// Sets `queue`'s limits for every runner (no limits: forgets them). A
/// runner applies them from its workers' next claims: jobs running go on.
/// Its idle workers hear of it at once.
pub fn set_queue_limits(
    conn: &mut PgConnection,
    queue: &str,
    limits: QueueLimits,
) -> Result<(), AdminError> {
    require_schema(conn)?;
    crate::admin::check_queue_name(queue)?;
    let max_running = match limits.max_running {
        Some(max) if !(1..=crate::MAX_CONCURRENT_LIMIT).contains(&max) => {
            return Err(AdminError::Invalid(format!(
                "max_running {max} is out of range; use 1 to {}",
                crate::MAX_CONCURRENT_LIMIT
            )))
        }
        max => max.map(|max| i32::try_from(max).expect("checked")),
    };
    storage::limits::set_queue_limits(conn, queue, max_running, limits.rate.map(|r| r.stored()))?;
    Ok(())
}

/// A queue's limits and what they hold now.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct QueueLimitStatus {
    /// The queue.
    pub queue: String,
    /// Its limits.
    pub limits: QueueLimits,
    /// When they were set.
    pub updated_at: DateTime<Utc>,
    /// Workers holding one of its running slots now (each runs its jobs of
    /// the queue one at a time).
    pub running: u64,
    /// Starts counted in its rate limit's current window.
    pub recent_starts: u64,
}

/// How far [`flow_status`] counts a key's ready jobs.
const READY_COUNTED: i64 = 10_000;

/// Per queue of `queues` with limits (its own or its keys'): the workers
/// holding its own slots, the starts in its own rate window, its limited
/// keys with ready jobs (at most 1,000), and how long the first job of the
/// key waiting longest has waited (seconds). For the metrics.
pub(crate) fn flow_gauges(
    conn: &mut PgConnection,
    queues: &[String],
) -> Result<Vec<(String, [f64; 4])>, AdminError> {
    let (limits, keys) = storage::limits::without_jit(conn, |conn| {
        Ok((
            storage::limits::queue_limits(conn)?,
            storage::limits::limited_keys(conn, 1_000, 0)?,
        ))
    })?;
    let mut gauges: std::collections::BTreeMap<String, [f64; 4]> = Default::default();
    let mine = |queue: &str| queues.iter().any(|q| q == queue);
    for row in limits {
        if mine(&row.queue) {
            let values = gauges.entry(row.queue).or_default();
            values[0] = row.running as f64;
            values[1] = row.recent_starts as f64;
        }
    }
    for row in keys {
        if mine(&row.queue) {
            let values = gauges.entry(row.queue).or_default();
            values[2] += 1.0;
            values[3] = values[3].max(row.waited_secs);
        }
    }
    Ok(gauges.into_iter().collect())
}

/// A concurrency key under a limit, with ready jobs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct KeyLimitStatus {
    /// Its queue.
    pub queue: String,
    /// The key (a job type's own limit: U+0001 and the type's name).
    pub key: String,
    /// Its ready jobs (counted up to 10,000).
    pub ready: u64,
    /// The most of its jobs that run at once.
    pub max_concurrent: Option<u32>,
    /// Its rate limit.
    pub rate: Option<Rate>,
    /// Workers holding one of its slots now.
    pub running: u64,
    /// Starts counted in its rate limit's current window.
    pub recent_starts: u64,
    /// How long its first ready job has waited since it was enqueued.
    pub waited: Duration,
}

impl KeyLimitStatus {
    /// The key as people read it: a type's own limit as `type NAME`, and
    /// control characters escaped (`\u{1b}`), so that a key made of an
    /// application's text (a tenant's name) cannot move a terminal's cursor.
    pub fn label(&self) -> String {
        let (prefix, key) = match self.key.strip_prefix(crate::job::TYPE_KEY) {
            Some(job_type) => ("type ", job_type),
            None => ("", self.key.as_str()),
        };
        let mut label = String::from(prefix);
        for c in key.chars() {
            if c.is_control() {
                label.extend(c.escape_unicode());
            } else {
                label.push(c);
            }
        }
        label
    }
}

/// Flow control as it stands: every queue's own limits, and the limited
/// keys with ready jobs (those waiting longest first, at most `keys`).
pub fn flow_status(
    conn: &mut PgConnection,
    keys: i64,
) -> Result<(Vec<QueueLimitStatus>, Vec<KeyLimitStatus>), AdminError> {
    require_schema(conn)?;
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    let (queues, keys) = storage::limits::without_jit(conn, |conn| {
        Ok((
            storage::limits::queue_limits(conn)?,
            storage::limits::limited_keys(conn, keys.clamp(0, 1_000), READY_COUNTED)?,
        ))
    })?;
    let queues = queues
        .into_iter()
        .map(|row| QueueLimitStatus {
            limits: QueueLimits {
                max_running: row.max_running.and_then(|m| u32::try_from(m).ok()),
                rate: Rate::from_stored(row.rate_limit, row.rate_period_ms),
            },
            queue: row.queue,
            updated_at: row.updated_at,
            running: count(row.running),
            recent_starts: count(row.recent_starts),
        })
        .collect();
    let keys = keys
        .into_iter()
        .map(|row| KeyLimitStatus {
            max_concurrent: row.max_concurrent.and_then(|m| u32::try_from(m).ok()),
            rate: Rate::from_stored(row.rate_limit, row.rate_period_ms),
            queue: row.queue,
            key: row.key,
            ready: count(row.ready),
            running: count(row.running),
            recent_starts: count(row.recent_starts),
            waited: Duration::from_secs_f64(row.waited_secs.max(0.0)),
        })
        .collect();
    Ok((queues, keys))
}
