//! `#[serde(..)]` on an argument reaches the stored field (say, a default
//! for an argument added after jobs were queued); `mut` parameters work.

use skiplock::{background_job, PerformError};

#[background_job]
fn resize(path: String, #[serde(default)] width: Option<u32>, mut retries: u8) -> Result<(), PerformError> {
    retries += 1;
    let _ = (path, width, retries);
    Ok(())
}

fn main() {
    let old_row = r#"{"path": "a.png", "retries": 0}"#;
    let job: ResizeJob = serde_json::from_str(old_row).unwrap();
    assert_eq!(job.width, None);
    let json = serde_json::to_value(resize("b.png".into(), Some(3), 1)).unwrap();
    assert_eq!(json, serde_json::json!({"path": "b.png", "width": 3, "retries": 1}));
}
