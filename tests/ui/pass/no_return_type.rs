//! A function with no return type is a job that cannot fail.

use std::sync::atomic::{AtomicUsize, Ordering};

use skiplock::background_job;

pub struct Counter(AtomicUsize);

#[background_job]
fn count(counter: &Counter, by: usize) {
    counter.0.fetch_add(by, Ordering::SeqCst);
}

fn main() {
    let counter = Counter(AtomicUsize::new(0));
    CountJob::perform(&counter, 2);
    assert_eq!(counter.0.load(Ordering::SeqCst), 2);
    let _ = count(1);
}
