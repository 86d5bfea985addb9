use skiplock::{background_job, PerformError};

#[background_job]
fn render(template: impl ToString) -> Result<(), PerformError> {
    let _ = template.to_string();
    Ok(())
}

fn main() {}
