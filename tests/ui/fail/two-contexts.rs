use skiplock::{background_job, PerformError};

struct Git;
struct Mailer;

#[background_job]
fn publish(git: &Git, mailer: &Mailer, name: String) -> Result<(), PerformError> {
    let _ = (git, mailer, name);
    Ok(())
}

fn main() {}
