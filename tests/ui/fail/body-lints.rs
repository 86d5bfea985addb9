#![deny(unused_variables, unused_imports)]

use skiplock::{background_job, PerformError};

#[background_job]
fn add_crate(name: String) -> Result<(), PerformError> {
    use std::collections::HashMap;
    let length = name.len();
    Ok(())
}

fn main() {
    let _ = add_crate(String::new());
}
