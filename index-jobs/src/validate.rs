//! What the index accepts. Everything is checked before anything touches
//! the disk; every refusal says what was wrong and what is valid.

use std::collections::BTreeMap;

use crate::model::{IndexDependency, IndexVersion};

/// Input the index refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} `{value}`: {rule}")]
pub struct InvalidInput {
    /// What the value is ("crate name", "version", ...).
    pub what: String,
    /// The refused value (shortened when very long).
    pub value: String,
    /// What is valid.
    pub rule: String,
}

fn invalid(what: &str, value: &str, rule: impl Into<String>) -> InvalidInput {
    let mut shown: String = value.chars().take(80).collect();
    if shown.len() < value.len() {
        shown.push('…');
    }
    InvalidInput {
        what: what.to_owned(),
        value: shown.escape_debug().to_string(),
        rule: rule.into(),
    }
}

/// Names no crate may take: Windows device names (they cannot be files) and
/// the names of the standard library's crates.
pub const RESERVED_NAMES: &[&str] = &[
    "alloc",
    "core",
    "proc_macro",
    "proc-macro",
    "std",
    "test",
    "con",
    "prn",
    "aux",
    "nul",
    "com1",
    "com2",
    "com3",
    "com4",
    "com5",
    "com6",
    "com7",
    "com8",
    "com9",
    "lpt1",
    "lpt2",
    "lpt3",
    "lpt4",
    "lpt5",
    "lpt6",
    "lpt7",
    "lpt8",
    "lpt9",
];

/// Crate names: ASCII letters, digits, `-` and `_`, starting with a letter,
/// at most 64 characters, not reserved.
pub(crate) fn crate_name(name: &str, what: &str) -> Result<(), InvalidInput> {
    const RULE: &str = "use 1 to 64 ASCII letters, digits, `-` or `_`, starting with a letter";
    if name.is_empty() || name.len() > 64 {
        return Err(invalid(
            what,
            name,
            format!("{RULE} (this one has {} characters)", name.len()),
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(invalid(
            what,
            name,
            format!("{RULE}; it must start with a letter"),
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(invalid(
            what,
            name,
            format!("{RULE}; {bad:?} is not allowed"),
        ));
    }
    let lower = name.to_ascii_lowercase();
    if RESERVED_NAMES.contains(&lower.as_str()) {
        return Err(invalid(what, name, "this name is reserved; choose another"));
    }
    Ok(())
}

/// A semver version such as `1.2.3` or `1.0.0-beta.1`.
pub(crate) fn version(vers: &str) -> Result<semver::Version, InvalidInput> {
    semver::Version::parse(vers).map_err(|e| {
        invalid(
            "version",
            vers,
            format!("{e}; use semver: MAJOR.MINOR.PATCH, such as `1.2.3`"),
        )
    })
}

fn version_req(dep: &str, req: &str) -> Result<(), InvalidInput> {
    semver::VersionReq::parse(req).map(drop).map_err(|e| {
        invalid(
            &format!("version requirement of dependency `{dep}`"),
            req,
            format!("{e}; use a cargo requirement such as `^1.2`, `>=0.3, <0.5` or `*`"),
        )
    })
}

fn feature_name(name: &str) -> Result<(), InvalidInput> {
    let ok = name.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "feature name",
            name,
            "use ASCII letters, digits, `_`, `-`, `+` or `.`, starting with a letter, digit or `_`",
        ))
    }
}

fn printable(what: &str, value: &str) -> Result<(), InvalidInput> {
    if value.is_empty() || value.chars().any(char::is_control) {
        return Err(invalid(
            what,
            value,
            "use a non-empty value without control characters",
        ));
    }
    Ok(())
}

fn features(map: &BTreeMap<String, Vec<String>>) -> Result<(), InvalidInput> {
    for (name, enables) in map {
        feature_name(name)?;
        for value in enables {
            printable(&format!("value of feature `{name}`"), value)?;
        }
    }
    Ok(())
}

fn dependency(dep: &IndexDependency) -> Result<(), InvalidInput> {
    crate_name(&dep.name, "dependency name")?;
    if let Some(package) = &dep.package {
        crate_name(package, &format!("package of dependency `{}`", dep.name))?;
    }
    version_req(&dep.name, &dep.req)?;
    for feature in &dep.features {
        printable(&format!("feature of dependency `{}`", dep.name), feature)?;
    }
    if let Some(target) = &dep.target {
        printable(&format!("target of dependency `{}`", dep.name), target)?;
    }
    Ok(())
}

/// How cargo compares crate names: ASCII case-insensitively, `-` equal to `_`.
pub fn cargo_key(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

/// The index format versions cargo reads: 1, and 2 (`features2`).
fn format_version(line: &IndexVersion) -> Result<(), InvalidInput> {
    match line.v {
        None | Some(1) | Some(2) => Ok(()),
        Some(v) => Err(invalid(
            "index format version",
            &v.to_string(),
            "use 1 (or leave it out), or 2 for `dep:` and `?/` features; cargo cannot read other versions",
        )),
    }
}

/// What each feature enables must exist in this version, the way cargo
/// checks it when it reads the entry: another feature, an optional
/// dependency (as itself or as `dep:name`), or a feature of a dependency
/// (`dep/feature`, or `dep?/feature` for an optional one).
fn feature_references(line: &IndexVersion) -> Result<(), InvalidInput> {
    let all = || line.features.iter().chain(line.features2.iter().flatten());
    let dep = |name: &str| line.deps.iter().find(|d| d.name == name);
    let optional = |name: &str| dep(name).is_some_and(|d| d.optional);
    // An optional dependency named with `dep:` anywhere has no implicit feature.
    let explicit: Vec<&str> = all()
        .flat_map(|(_, values)| values)
        .filter_map(|value| value.strip_prefix("dep:"))
        .collect();
    for (feature, values) in all() {
        for value in values {
            let what = format!("value of feature `{feature}`");
            let refuse = |rule: String| Err(invalid(&what, value, rule));
            if let Some(name) = value.strip_prefix("dep:") {
                if !optional(name) {
                    return refuse(format!(
                        "`dep:{name}` names no optional dependency of this version; \
                         declare `{name}` as an optional dependency, or remove it"
                    ));
                }
            } else if let Some((name, _)) = value.split_once('/') {
                let weak = name.strip_suffix('?');
                let name = weak.unwrap_or(name);
                if weak.is_some() && !optional(name) {
                    return refuse(format!(
                        "`{name}?/...` needs `{name}` to be an optional dependency of this version"
                    ));
                }
                if dep(name).is_none() {
                    return refuse(format!(
                        "`{name}` is no dependency of this version; `name/feature` \
                         enables a feature of a dependency"
                    ));
                }
            } else {
                let is_feature = all().any(|(f, _)| f == value);
                let implicit = optional(value) && !explicit.contains(&value.as_str());
                if !is_feature && !implicit {
                    return refuse(format!(
                        "`{value}` is neither a feature nor an optional dependency of this version"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Checks a whole new version.
pub(crate) fn index_version(version_line: &IndexVersion) -> Result<semver::Version, InvalidInput> {
    crate_name(&version_line.name, "crate name")?;
    let parsed = version(&version_line.vers)?;
    let cksum = &version_line.cksum;
    if cksum.len() != 64
        || !cksum
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    {
        return Err(invalid(
            "checksum",
            cksum,
            "use the SHA-256 of the .crate file: 64 lowercase hex digits",
        ));
    }
    for dep in &version_line.deps {
        dependency(dep)?;
    }
    features(&version_line.features)?;
    if let Some(features2) = &version_line.features2 {
        features(features2)?;
    }
    format_version(version_line)?;
    feature_references(version_line)?;
    if let Some(links) = &version_line.links {
        printable("links", links)?;
    }
    if let Some(rust_version) = &version_line.rust_version {
        let ok = !rust_version.is_empty()
            && rust_version.split('.').count() <= 3
            && rust_version
                .split('.')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
        if !ok {
            return Err(invalid(
                "rust_version",
                rust_version,
                "use a Rust version such as `1.70` or `1.70.1`",
            ));
        }
    }
    Ok(parsed)
}

/// Features using `dep:` or `?/` move to `features2`, and the line says
/// `v: 2`, as cargo expects (older cargo versions skip such lines instead
/// of failing on them).
pub(crate) fn move_new_syntax_features(line: &mut IndexVersion) {
    let new_syntax = |values: &Vec<String>| {
        values
            .iter()
            .any(|v| v.starts_with("dep:") || v.contains("?/"))
    };
    let moved: Vec<String> = line
        .features
        .iter()
        .filter(|(_, values)| new_syntax(values))
        .map(|(name, _)| name.clone())
        .collect();
    for name in moved {
        if let Some(values) = line.features.remove(&name) {
            line.features2
                .get_or_insert_with(BTreeMap::new)
                .insert(name, values);
        }
    }
    if line.features2.as_ref().is_some_and(|f| f.is_empty()) {
        line.features2 = None;
    }
    if line.features2.is_some() {
        line.v = Some(2);
    }
}

impl IndexVersion {
    /// Checks the version as the index jobs will: the crate name, semver
    /// version, checksum, dependency names and requirements, features and
    /// what they enable, the format version `v`.
    /// Call it in the web handler, before enqueueing, to refuse bad input
    /// in the request rather than in the job.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        index_version(self).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_names() {
        for good in [
            "a",
            "serde",
            "serde_json",
            "tokio-util",
            "A1",
            &"x".repeat(64),
        ] {
            assert!(crate_name(good, "crate name").is_ok(), "{good}");
        }
        for (bad, says) in [
            ("", "0 characters"),
            (&"x".repeat(65) as &str, "65 characters"),
            ("1abc", "start with a letter"),
            ("_abc", "start with a letter"),
            ("ab.c", "'.' is not allowed"),
            ("a b", "' ' is not allowed"),
            ("Std", "reserved"),
            ("nul", "reserved"),
            ("é", "start with a letter"),
        ] {
            let error = crate_name(bad, "crate name").unwrap_err().to_string();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn versions_and_requirements() {
        assert!(version("1.0.0-beta.1+build.5").is_ok());
        let error = version("1.0").unwrap_err().to_string();
        assert!(error.contains("MAJOR.MINOR.PATCH"), "{error}");
        assert!(version_req("d", ">=0.3, <0.5").is_ok());
        let error = version_req("d", "~>1").unwrap_err().to_string();
        assert!(
            error.contains("dependency `d`") && error.contains("`^1.2`"),
            "{error}"
        );
    }
}
