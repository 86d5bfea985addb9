use skiplock::background_job;

#[background_job]
fn send(to: String) -> Result<(), String> {
    Err(format!("cannot mail {to}"))
}

fn main() {}
