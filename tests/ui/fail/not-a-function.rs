use skiplock::background_job;

#[background_job]
struct AddCrate {
    name: String,
}

fn main() {}
