//! Where a crate's file lives in the index.

use std::path::PathBuf;

use crate::validate::{self, InvalidInput};

/// The path, relative to the index root, of the file of crate `name`:
/// `1/a`, `2/ab`, `3/a/abc`, `ab/cd/abcd...`, all lower-cased.
///
/// The name is validated first, so no input yields a path outside the index.
pub fn crate_path(name: &str) -> Result<PathBuf, InvalidInput> {
    validate::crate_name(name, "crate name")?;
    let name = name.to_ascii_lowercase();
    let path = match name.len() {
        1 => format!("1/{name}"),
        2 => format!("2/{name}"),
        3 => format!("3/{}/{name}", &name[..1]),
        _ => format!("{}/{}/{name}", &name[0..2], &name[2..4]),
    };
    Ok(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::crate_path;

    #[test]
    fn sharding_follows_cargo() {
        for (name, path) in [
            ("a", "1/a"),
            ("AB", "2/ab"),
            ("abc", "3/a/abc"),
            ("Serde_JSON", "se/rd/serde_json"),
            ("tokio", "to/ki/tokio"),
        ] {
            assert_eq!(crate_path(name).unwrap().to_str(), Some(path));
        }
    }

    #[test]
    fn names_that_could_escape_the_index_are_refused() {
        for name in ["", "../x", "a/b", "..", "/etc", "a\\b", "ab/../../c", "con"] {
            assert!(crate_path(name).is_err(), "{name}");
        }
    }
}
