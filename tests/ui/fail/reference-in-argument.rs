use skiplock::{background_job, PerformError};

pub struct Mailer;

#[background_job]
fn send(mailer: Option<&Mailer>, to: String) -> Result<(), PerformError> {
    let _ = (mailer, to);
    Ok(())
}

fn main() {}
