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
//! Each sweep says how many index entries it walked (the server counts
//! them). While a sweep walks hardly more entries than it takes jobs (no
//! dead entries in front: the usual case), every claim is a sweep and the
//! queue's order is exact. When a sweep walks many more, claims resume,
//! and a sweep runs once the time since the last one is nineteen times
//! what that one took: at most one twentieth of the claiming time goes to
//! sweeps, and a job behind the position waits at most that long (plus the
//! worker's wait for a wake-up when it is idle).

use std::time::{Duration, Instant};

/// The most priorities a position remembers; jobs of others are found by
/// sweeps.
const MAX_LEVELS: usize = 16;

/// A sweep that walks more index entries than this beyond four per job it
/// takes walks dead ones.
const CHEAP_WALK: i64 = 1_000;

/// Time between sweeps, in sweeps' durations, while the head is not cheap.
const SWEEP_SHARE: u32 = 19;

/// How long the other workers resume while one sweeps (the sweep sets the
/// next time when it is done; a sweep that fails to say leaves this).
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
    /// The last sweep walked dead entries: claims resume.
    head_costly: bool,
    /// While the head is costly, no sweep before this.
    next_sweep: Option<Instant>,
}

impl Position {
    /// How the next claim scans. While the head is costly, one worker
    /// sweeps when a sweep is due, and the others resume meanwhile.
    pub(crate) fn scan(&mut self, now: Instant) -> Scan {
        if !self.head_costly || self.levels.is_empty() {
            return Scan::Sweep;
        }
        match self.next_sweep {
            Some(at) if now < at => Scan::Resume(self.levels.clone()),
            _ => {
                // Until this sweep has told what it cost.
                self.next_sweep = Some(now + SWEEPING);
                Scan::Sweep
            }
        }
    }

    /// When the next sweep may run, if claims resume until then.
    pub(crate) fn sweep_due_in(&self, now: Instant) -> Option<Duration> {
        match self.next_sweep {
            Some(at) if self.head_costly => Some(at.saturating_duration_since(now)),
            _ => None,
        }
    }

    /// Learns from a claim made with `scan`: the `(priority, id)` of the
    /// jobs it took, how many entries of the ready index it walked, and how
    /// long it took.
    pub(crate) fn taken(
        &mut self,
        scan: &Scan,
        jobs: impl IntoIterator<Item = (i64, i64)>,
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
        if *scan == Scan::Sweep {
            self.head_costly = walked > CHEAP_WALK + 4 * claimed;
            self.next_sweep = Some(now + took * SWEEP_SHARE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_sweep_while_the_head_is_cheap() {
        let now = Instant::now();
        let mut position = Position::default();
        assert_eq!(position.scan(now), Scan::Sweep);
        position.taken(
            &Scan::Sweep,
            [(0, 5), (0, 9)],
            900,
            Duration::from_millis(1),
            now,
        );
        assert_eq!(position.scan(now), Scan::Sweep);
        assert_eq!(position.sweep_due_in(now), None);
    }

    #[test]
    fn claims_resume_after_a_costly_sweep_until_the_next_is_due() {
        let now = Instant::now();
        let mut position = Position::default();
        position.taken(
            &Scan::Sweep,
            [(0, 7), (5, 3), (0, 4), (5, 2)],
            50_000,
            Duration::from_millis(10),
            now,
        );
        assert_eq!(position.scan(now), Scan::Resume(vec![(5, 3), (0, 7)]));
        assert_eq!(
            position.sweep_due_in(now),
            Some(Duration::from_millis(190))
        );
        let later = now + Duration::from_millis(100);
        position.taken(
            &Scan::Resume(vec![(5, 3), (0, 7)]),
            [(0, 20), (-1, 8)],
            300,
            Duration::from_millis(1),
            later,
        );
        assert_eq!(
            position.scan(later),
            Scan::Resume(vec![(5, 3), (0, 20), (-1, 8)])
        );
        // A stray behind the position does not move it back.
        position.taken(
            &Scan::Sweep,
            [(0, 2)],
            40_000,
            Duration::from_millis(10),
            now + Duration::from_millis(200),
        );
        assert_eq!(
            position.scan(now + Duration::from_millis(250)),
            Scan::Resume(vec![(5, 3), (0, 20), (-1, 8)])
        );
        assert_eq!(
            position.scan(now + Duration::from_millis(390)),
            Scan::Sweep
        );
    }

    #[test]
    fn a_position_remembers_sixteen_priorities() {
        let now = Instant::now();
        let mut position = Position::default();
        position.taken(
            &Scan::Sweep,
            (0..40).map(|p| (p, 100 + p)),
            1_000_000,
            Duration::from_millis(1),
            now,
        );
        match position.scan(now) {
            Scan::Resume(levels) => {
                assert_eq!(levels.len(), MAX_LEVELS);
                assert_eq!(levels[0], (39, 139));
            }
            Scan::Sweep => panic!("the head is costly"),
        }
    }
}
