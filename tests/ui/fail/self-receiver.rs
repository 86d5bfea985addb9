use skiplock::{background_job, PerformError};

struct Index;

impl Index {
    #[background_job]
    fn add_crate(&self, name: String) -> Result<(), PerformError> {
        let _ = name;
        Ok(())
    }
}

fn main() {}
