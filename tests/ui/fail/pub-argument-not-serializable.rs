use skiplock::{background_job, PerformError};

pub struct Upload {
    pub bytes: Vec<u8>,
}

#[background_job]
pub fn store(upload: Upload) -> Result<(), PerformError> {
    let _ = upload.bytes;
    Ok(())
}

fn main() {}
