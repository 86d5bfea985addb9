use skiplock::{background_job, PerformError};

struct Stats {
    runs: u64,
}

#[background_job]
fn bump(stats: &mut Stats) -> Result<(), PerformError> {
    stats.runs += 1;
    Ok(())
}

fn main() {}
