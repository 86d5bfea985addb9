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
        Scan::Resume(self.levels.clone())
    }

    /// A sweep chosen by [`Position::scan`] was not made (its claim
    /// failed): another worker may sweep.
    pub(crate) fn sweep_failed(&mut self) {
        self.sweeping_until = None;
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
        let mut claimed = 0_i64;
        for (priority, id) in jobs {
            claimed += 1;
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
        position.sweep_failed();
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
