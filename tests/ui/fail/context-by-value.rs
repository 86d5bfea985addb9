use skiplock::{background_job, PerformError};

pub struct Mailer;

#[background_job]
fn send(mailer: Mailer, to: String) -> Result<(), PerformError> {
    let _ = (mailer, to);
    Ok(())
}

fn main() {}
