//! Arguments whose types and names are ones the generated code could use
//! for itself: they are the user's, and stored as they are.

use skiplock::{background_job, PerformError};

#[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
struct S(u8);

#[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
struct D(u8);

#[background_job]
fn names(value: S, serializer: D, r#type: String, deserializer: Vec<S>) -> Result<(), PerformError> {
    let _ = (value, serializer, r#type, deserializer);
    Ok(())
}

fn main() {
    let json = serde_json::to_value(names(S(1), D(2), "t".into(), vec![S(3)])).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"value": 1, "serializer": 2, "type": "t", "deserializer": [3]})
    );
    let back: NamesJob = serde_json::from_value(json).unwrap();
    assert_eq!((back.value, back.serializer), (S(1), D(2)));
}
