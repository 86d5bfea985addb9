use skiplock::{background_job, PerformError};

struct Upload {
    bytes: Vec<u8>,
}

#[background_job]
fn store(upload: Upload) -> Result<(), PerformError> {
    let _ = upload.bytes;
    Ok(())
}

fn main() {}
