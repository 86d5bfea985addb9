//! Where a runner's claims of one queue start.
//!
//! A claim that starts at the head of the ready index walks every entry in
//! front of the first ready job. VACUUM removes the entries that completed
//! jobs leave, unless a transaction holds back the xmin horizon (a report,
//! a backup, a forgotten `BEGIN`): then they pile up at the head, and every
//! claim walks all of them (a million after a million jobs).
//!
//! So the runner remembers, for each priority of the queue, the id of the
//! last job its claims took ([`Position`]), and a claim can resume after
//! it: the entries behind are those of jobs already taken. A ready job can
//! still appear behind the position: a retry whose time came, a job given
//! back by a stopping runner or freed by a dead one, a job whose enqueuing
//! transaction committed after later jobs were taken, a priority the
//! runner has not seen. Only a claim from the head (a *sweep*) finds those.
//!
//! Claims resume, and a sweep runs once the time since the last one is
//! nineteen times what that one took: at most a twentieth of the claiming
//! time goes to sweeps, and a job behind the position waits at most that
//! long. On a quiet database a sweep takes a millisecond or two, so that
//! is a few dozen milliseconds; behind a million dead entries, a second or
//! two. (Resuming pays on a quiet database too: a sweep walks at least the
//! entries of the jobs completed since the last claim, which no scan has
//! passed yet.) Each sweep also says how many index entries it walked (the
//! server counts them): while that is hardly more than the jobs it takes,
//! the head is cheap, and a claim that resumed and came back short (the
//! queue looks drained from the position) is followed at once by a sweep,
//! so an idle queue's late jobs wait for no timer.
//!
//! Workers claiming at once do not all start at the position: each would
//! walk past the jobs the others are locking (eight workers walked 570
//! entries a claim for 100 jobs, and drained at half the rate). A claim
//! that resumes reserves the ids that a claim's worth of index entries
//! spanned in the last full claim, ahead of where it starts, and the next
//! claim made while it is under way starts at the end of that reservation;
//! a claim's reservation ends when it reports (or fails, or after 10 s).
//! When ids come denser than in the last claim, the jobs between one
//! claim's last and the next one's start are behind the position: the next
//! sweep finds them. (Reserving less than the span leaves no such gap, but
//! a claim that starts early and locks slowly walks past every later one's
//! jobs: four fifths of the span walked 470 entries a claim.)

use std::time::{Duration, Instant};

/// The most priorities a position remembers; jobs of others are found by
/// sweeps.
const MAX_LEVELS: usize = 16;

/// A sweep that walks more index entries than this beyond four per job it
/// takes walks dead ones.
const CHEAP_WALK: i64 = 1_000;

/// Time between sweeps, in sweeps' durations, while the head is not cheap.
const SWEEP_SHARE: u32 = 19;

/// How long the other workers resume while one sweeps, at most: it tells
/// what it found, or that its claim failed, sooner.
const SWEEPING: Duration = Duration::from_secs(10);

/// How long a claim's reservation holds at most (it ends when the claim
/// reports, or fails, sooner).
const RESERVED: Duration = Duration::from_secs(10);

/// How a claim scans the ready index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scan {
    /// From the head, in the queue's order.
    Sweep,
    /// For each priority in turn (highest first), after the id of the last
    /// job taken: `(priority, after)`.
    Resume(Vec<(i64, i64)>),
}

/// A runner's position in one queue, shared by its workers of that queue.
#[derive(Debug, Default)]
pub(crate) struct Position {
    /// `(priority, id of the last job taken)`, highest priority first.
    levels: Vec<(i64, i64)>,
    /// The last sweep walked dead entries.
    head_costly: bool,
    /// No sweep before this, unless the head is cheap and the last claim
    /// that resumed came back short.
    next_sweep: Option<Instant>,
    /// The last claim that resumed took fewer jobs than it asked for.
    short: bool,
    /// A worker is sweeping (until it tells what the sweep found, or this
    /// time passes): the others resume meanwhile.
    sweeping_until: Option<Instant>,
    /// The last full claim that resumed took all its jobs at one priority:
    /// `(priority, the ids its jobs' worth of index entries spanned)`.
    stride: Option<(i64, i64)>,
    /// Claims under way that resumed at the first level, by when they
    /// started: `(priority, start, end of their reservation, since)`.
    reserved: Vec<(i64, i64, i64, Instant)>,
}

impl Position {
    /// How the next claim scans. When a sweep is wanted, one worker sweeps
    /// and the others resume meanwhile (with no position yet, they find
    /// nothing, and wait for the sweeping worker to wake them).
    pub(crate) fn scan(&mut self, now: Instant) -> Scan {
        let wanted = self.levels.is_empty()
            || (self.short && !self.head_costly)
            || self.next_sweep.is_none_or(|at| now >= at);
        if wanted && !self.sweeping(now) {
            self.sweeping_until = Some(now + SWEEPING);
            return Scan::Sweep;
        }
        let mut levels = self.levels.clone();
        if let (Some((priority, span)), Some(first)) = (self.stride, levels.first_mut()) {
            if first.0 == priority {
                self.reserved.retain(|r| now < r.3 + RESERVED);
                let start = self
                    .reserved
                    .iter()
                    .filter(|r| r.0 == priority)
                    .map(|r| r.2)
                    .fold(first.1, i64::max);
                first.1 = start;
                let end = start.saturating_add(span);
                self.reserved.push((priority, start, end, now));
            }
        }
        Scan::Resume(levels)
    }

    /// A claim made with `scan` failed: another worker may sweep, and its
    /// reservation ends.
    pub(crate) fn claim_failed(&mut self, scan: &Scan) {
        match scan {
            Scan::Sweep => self.sweeping_until = None,
            Scan::Resume(_) => self.unreserve(scan),
        }
    }

    /// Ends the reservation of a claim that resumed with `scan`.
    fn unreserve(&mut self, scan: &Scan) {
        if let Scan::Resume(levels) = scan {
            if let Some(&(priority, start)) = levels.first() {
                if let Some(at) = self
                    .reserved
                    .iter()
                    .position(|r| r.0 == priority && r.1 == start)
                {
                    self.reserved.swap_remove(at);
                }
            }
        }
    }

    fn sweeping(&self, now: Instant) -> bool {
        self.sweeping_until.is_some_and(|until| now < until)
    }

    /// How long until a sweep may run, after a claim that resumed.
    pub(crate) fn sweep_due_in(&self, now: Instant) -> Option<Duration> {
        if let Some(until) = self.sweeping_until.filter(|_| self.sweeping(now)) {
            return Some(until - now);
        }
        if self.short && !self.head_costly {
            return Some(Duration::ZERO);
        }
        self.next_sweep.map(|at| at.saturating_duration_since(now))
    }

    /// Learns from a claim made with `scan`: the `(priority, id)` of the
    /// jobs it took, whether it took as many as it asked for, how many
    /// entries of the ready index it walked, and how long it took.
    pub(crate) fn taken(
        &mut self,
        scan: &Scan,
        jobs: impl IntoIterator<Item = (i64, i64)>,
        full: bool,
        walked: i64,
        took: Duration,
        now: Instant,
    ) {
        self.unreserve(scan);
        let first = match scan {
            Scan::Resume(levels) => levels.first().copied(),
            Scan::Sweep => None,
        };
        // The ids this claim spanned, when it took all its jobs at the
        // priority it started at.
        let mut span = first.map(|(priority, start)| (priority, start, start));
        let mut claimed = 0_i64;
        for (priority, id) in jobs {
            claimed += 1;
            span = span
                .filter(|s| s.0 == priority)
                .map(|s| (s.0, s.1, s.2.max(id)));
            match self.levels.binary_search_by(|(p, _)| priority.cmp(p)) {
                Ok(at) => self.levels[at].1 = self.levels[at].1.max(id),
                Err(at) => self.levels.insert(at, (priority, id)),
            }
        }
        self.levels.truncate(MAX_LEVELS);
        match scan {
            Scan::Sweep => {
                self.head_costly = walked > CHEAP_WALK + 4 * claimed;
                self.next_sweep = Some(now + took * SWEEP_SHARE);
                self.short = false;
                self.sweeping_until = None;
            }
            Scan::Resume(_) => self.short = !full,
        }
        if first.is_some() {
            // The ids a claim's worth of entries spans: the entries it
            // walked past (jobs other claims held, dead ones) widen its
            // span without widening the next claim's.
            self.stride = match span {
                Some((priority, start, last)) if full && claimed > 0 && walked >= claimed => {
                    let ids = i128::from(last - start) * i128::from(claimed) / i128::from(walked);
                    Some((priority, i64::try_from(ids).unwrap_or(i64::MAX)))
                }
                // Near the tail, the levels mixed, or no count of the
                // entries walked: no reservation.
                _ => None,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_first_claim_sweeps_then_claims_resume_until_the_next_sweep_is_due() {
        let now = Instant::now();
        let mut position = Position::default();
        assert_eq!(position.scan(now), Scan::Sweep);
        // Another worker meanwhile: nothing to resume from yet; it waits.
        assert_eq!(position.scan(now), Scan::Resume(vec![]));
        assert_eq!(position.sweep_due_in(now), Some(SWEEPING));
        // A sweep whose claim failed lets another worker sweep.
        position.claim_failed(&Scan::Sweep);
        assert_eq!(position.scan(now), Scan::Sweep);
        position.taken(
            &Scan::Sweep,
            [(0, 7), (5, 3), (0, 4), (5, 2)],
            true,
            300,
            10 * MS,
            now,
        );
        assert_eq!(position.scan(now), Scan::Resume(vec![(5, 3), (0, 7)]));
        assert_eq!(position.sweep_due_in(now), Some(190 * MS));
        let later = now + 100 * MS;
        position.taken(
            &Scan::Resume(vec![(5, 3), (0, 7)]),
            [(0, 20), (-1, 8)],
            true,
            30,
            MS,
            later,
        );
        assert_eq!(
            position.scan(later),
            Scan::Resume(vec![(5, 3), (0, 20), (-1, 8)])
        );
        // Due: one worker sweeps, the others resume meanwhile.
        let due = now + 190 * MS;
        assert_eq!(position.scan(due), Scan::Sweep);
        assert!(matches!(position.scan(due), Scan::Resume(_)));
        // A stray behind the position does not move it back.
        position.taken(&Scan::Sweep, [(0, 2)], false, 40_000, 10 * MS, due);
        assert_eq!(
            position.scan(due + 50 * MS),
            Scan::Resume(vec![(5, 3), (0, 20), (-1, 8)])
        );
        assert_eq!(position.scan(due + 190 * MS), Scan::Sweep);
    }

    #[test]
    fn a_short_resume_is_followed_by_a_sweep_only_while_the_head_is_cheap() {
        let now = Instant::now();
        let mut cheap = Position::default();
        cheap.taken(&Scan::Sweep, [(0, 9)], false, 200, MS, now);
        let resume = cheap.scan(now);
        assert_eq!(resume, Scan::Resume(vec![(0, 9)]));
        cheap.taken(&resume, [], false, 0, MS, now);
        assert_eq!(cheap.sweep_due_in(now), Some(Duration::ZERO));
        assert_eq!(cheap.scan(now), Scan::Sweep);

        let mut costly = Position::default();
        costly.taken(&Scan::Sweep, [(0, 9)], false, 900_000, 100 * MS, now);
        let resume = costly.scan(now);
        costly.taken(&resume, [], false, 0, MS, now);
        assert_eq!(costly.sweep_due_in(now), Some(1_900 * MS));
        assert_eq!(costly.scan(now), Scan::Resume(vec![(0, 9)]));
    }

    #[test]
    fn claims_under_way_at_once_start_where_the_one_before_reserved() {
        let now = Instant::now();
        let mut position = Position::default();
        position.taken(&Scan::Sweep, [(0, 100)], true, 100, MS, now);
        // A full claim of ids 101..=200 at one priority: its span is 100.
        let first = position.scan(now);
        assert_eq!(first, Scan::Resume(vec![(0, 100)]));
        position.taken(&first, (101..=200).map(|id| (0, id)), true, 100, MS, now);
        // Three claims at once: each starts where the last reserved.
        let a = position.scan(now);
        let b = position.scan(now);
        let c = position.scan(now);
        assert_eq!(a, Scan::Resume(vec![(0, 200)]));
        assert_eq!(b, Scan::Resume(vec![(0, 300)]));
        assert_eq!(c, Scan::Resume(vec![(0, 400)]));
        // `b` reports: the next starts after `c`'s reservation still.
        position.taken(&b, (301..=400).map(|id| (0, id)), true, 100, MS, now);
        assert_eq!(position.scan(now), Scan::Resume(vec![(0, 500)]));
        // A claim that failed holds nothing back.
        position.claim_failed(&c);
        position.claim_failed(&Scan::Resume(vec![(0, 500)]));
        position.taken(&a, (201..=300).map(|id| (0, id)), true, 100, MS, now);
        let d = position.scan(now);
        assert_eq!(d, Scan::Resume(vec![(0, 400)]));
        // Entries walked past (other claims' jobs, dead ones) narrow the
        // span: 100 jobs over 200 ids, 200 entries walked.
        position.taken(&d, (1..=100).map(|n| (0, 400 + 2 * n)), true, 200, MS, now);
        let e = position.scan(now);
        assert_eq!(e, Scan::Resume(vec![(0, 600)]));
        assert_eq!(position.scan(now), Scan::Resume(vec![(0, 700)]));
    }

    #[test]
    fn a_claim_alone_resumes_where_the_last_one_ended_whatever_it_reserved() {
        let now = Instant::now();
        let mut position = Position::default();
        // (A slow sweep: none due for 19 s.)
        position.taken(&Scan::Sweep, [(0, 0)], true, 100, 1_000 * MS, now);
        // Ids spread (another queue's jobs between): a span of 1,000.
        let sparse = position.scan(now);
        position.taken(
            &sparse,
            (1..=100).map(|id| (0, id * 10)),
            true,
            100,
            MS,
            now,
        );
        // The next claim reserves 1,000 ids, but takes dense ones.
        let dense = position.scan(now);
        assert_eq!(dense, Scan::Resume(vec![(0, 1_000)]));
        position.taken(
            &dense,
            (1_001..=1_100).map(|id| (0, id)),
            true,
            100,
            MS,
            now,
        );
        assert_eq!(position.scan(now), Scan::Resume(vec![(0, 1_100)]));
        // That claim never reports: its reservation lapses.
        assert_eq!(position.scan(now), Scan::Resume(vec![(0, 1_200)]));
        let later = now + RESERVED;
        assert_eq!(position.scan(later), Scan::Resume(vec![(0, 1_100)]));
    }

    #[test]
    fn claims_that_came_back_short_or_mixed_reserve_nothing() {
        let now = Instant::now();
        let mut position = Position::default();
        position.taken(&Scan::Sweep, [(0, 0)], true, 100, MS, now);
        let short = position.scan(now);
        position.taken(&short, (1..=40).map(|id| (0, id)), false, 40, MS, now);
        let next = position.scan(now);
        assert_eq!(next, Scan::Sweep);
        position.taken(&next, [(5, 50), (0, 60)], true, 100, MS, now);
        let mixed = position.scan(now);
        assert_eq!(mixed, Scan::Resume(vec![(5, 50), (0, 60)]));
        position.taken(&mixed, [(5, 51), (0, 61)], true, 2, MS, now);
        assert_eq!(position.scan(now), Scan::Resume(vec![(5, 51), (0, 61)]));
        assert_eq!(position.scan(now), Scan::Resume(vec![(5, 51), (0, 61)]));
    }

    #[test]
    fn a_position_remembers_sixteen_priorities() {
        let now = Instant::now();
        let mut position = Position::default();
        position.taken(
            &Scan::Sweep,
            (0..40).map(|p| (p, 100 + p)),
            true,
            0,
            MS,
            now,
        );
        match position.scan(now) {
            Scan::Resume(levels) => {
                assert_eq!(levels.len(), MAX_LEVELS);
                assert_eq!(levels[0], (39, 139));
            }
            Scan::Sweep => panic!("not due"),
        }
    }
}
