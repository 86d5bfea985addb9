//! How a runner's threads are woken: per-queue wake-ups and the stop flag.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

/// Idle workers of one queue wait here; a new job (or a stop) wakes them.
#[derive(Debug, Default)]
pub(crate) struct Wakeup {
    generation: Mutex<u64>,
    changed: Condvar,
    /// The queue is paused: its workers start nothing new.
    paused: AtomicBool,
    /// The queue runs one worker across all runners.
    pub(crate) exclusive: bool,
    /// This runner's worker of an exclusive queue waits for another's to end.
    standby: AtomicBool,
}

impl Wakeup {
    /// Records whether this runner's worker stands by; returns whether it did.
    pub(crate) fn set_standby(&self, standby: bool) -> bool {
        self.standby.swap(standby, Ordering::SeqCst)
    }

    pub(crate) fn is_standby(&self) -> bool {
        self.standby.load(Ordering::SeqCst)
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Records the queue's pause; a resumed queue's workers are woken.
    pub(crate) fn set_paused(&self, paused: bool) {
        if self.paused.swap(paused, Ordering::SeqCst) && !paused {
            self.wake_all();
        }
    }

    /// The current generation: read it *before* looking for jobs, then wait
    /// for it to change, so a wake-up in between is never missed.
    pub(crate) fn generation(&self) -> u64 {
        *self
            .generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self) {
        *self
            .generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner) += 1;
    }

    /// Wakes one idle worker (it wakes the next if it finds a full batch).
    pub(crate) fn wake_one(&self) {
        self.bump();
        self.changed.notify_one();
    }

    /// Wakes every idle worker.
    pub(crate) fn wake_all(&self) {
        self.bump();
        self.changed.notify_all();
    }
}

/// The stop flag and the wake-ups of every queue of a runner.
///
/// A stop wakes every thread at once, whatever it waits on: the workers
/// and the sleepers (watchdogs, the periodic thread) through condition
/// variables, and the wake-up thread, which waits in `poll(2)` on its
/// listener's socket, through the read end of a socket pair that a stop
/// writes to (its *bell*). So a runner stops in the time its threads take
/// to finish what they do, not in their sleeps' length (an idle runner of
/// eight workers took 70 to 90 ms).
#[derive(Debug)]
pub(crate) struct Signals {
    stopped: AtomicBool,
    queues: HashMap<String, Wakeup>,
    /// Sleepers wait here for a stop.
    sleep: (Mutex<()>, Condvar),
    /// `(read end, write end)`; none when the system refused a socket
    /// pair (then the wake-up thread sees a stop within 50 ms).
    bell: Option<(UnixStream, UnixStream)>,
}

impl Signals {
    /// The wake-ups of `queues`, each with whether it is exclusive.
    pub(crate) fn new<'a>(queues: impl IntoIterator<Item = (&'a str, bool)>) -> Self {
        Signals {
            stopped: AtomicBool::new(false),
            queues: queues
                .into_iter()
                .map(|(q, exclusive)| {
                    let wakeup = Wakeup {
                        exclusive,
                        ..Wakeup::default()
                    };
                    (q.to_owned(), wakeup)
                })
                .collect(),
            sleep: (Mutex::new(()), Condvar::new()),
            bell: UnixStream::pair().ok().filter(|(read, write)| {
                read.set_nonblocking(true).is_ok() && write.set_nonblocking(true).is_ok()
            }),
        }
    }

    pub(crate) fn queue(&self, queue: &str) -> Option<&Wakeup> {
        self.queues.get(queue)
    }

    pub(crate) fn queue_names(&self) -> impl Iterator<Item = &str> {
        self.queues.keys().map(String::as_str)
    }

    pub(crate) fn wake_all_queues(&self) {
        self.queues.values().for_each(Wakeup::wake_all);
    }

    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.wake_all_queues();
        {
            // Under the sleepers' lock: none is between its look at the
            // flag and its wait.
            let _sleepers = self.sleep.0.lock().unwrap_or_else(PoisonError::into_inner);
            self.sleep.1.notify_all();
        }
        if let Some((_, write)) = &self.bell {
            // (Full already: it has rung.)
            let mut write: &UnixStream = write;
            let _ = write.write(&[1]);
        }
    }

    /// A descriptor that becomes readable once the runner stops, for a
    /// thread that waits in `poll(2)`.
    pub(crate) fn bell(&self) -> Option<RawFd> {
        self.bell.as_ref().map(|(read, _)| read.as_raw_fd())
    }

    /// Sleeps for `duration`, or until the runner stops.
    pub(crate) fn sleep(&self, duration: Duration) {
        let guard = self.sleep.0.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = self
            .sleep
            .1
            .wait_timeout_while(guard, duration, |()| !self.is_stopped())
            .unwrap_or_else(PoisonError::into_inner);
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Sleeps until `wakeup` moves past `seen`, the runner stops, or
    /// `timeout` passes.
    pub(crate) fn wait(&self, wakeup: &Wakeup, seen: u64, timeout: Duration) {
        let generation = wakeup
            .generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let _ = wakeup
            .changed
            .wait_timeout_while(generation, timeout, |g| *g == seen && !self.is_stopped())
            .unwrap_or_else(PoisonError::into_inner);
    }
}
