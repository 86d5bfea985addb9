use skiplock::background_job;

#[background_job]
fn fire_and_forget(id: i64) {
    let _ = id;
}

fn main() {}
