//! The records of a crates.io-format index: one JSON object per line per
//! version, in the file of its crate.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One version of a crate, as cargo reads it from the index (one line).
///
/// Field names and meanings are cargo's (see "Index format" in the Cargo
/// book). Optional newer fields are left out of the line when absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexVersion {
    /// The crate's name, as published (case preserved).
    pub name: String,
    /// The version, a semver string.
    pub vers: String,
    /// Its dependencies.
    pub deps: Vec<IndexDependency>,
    /// SHA-256 of the `.crate` file, 64 lowercase hex digits.
    pub cksum: String,
    /// Features and what each enables.
    pub features: BTreeMap<String, Vec<String>>,
    /// Whether the version is yanked.
    pub yanked: bool,
    /// The native library this crate links, if any.
    #[serde(default)]
    pub links: Option<String>,
    /// Features using the newer syntax (`dep:`, `?/`), for index version 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features2: Option<BTreeMap<String, Vec<String>>>,
    /// The index format version of this line (2 when `features2` is used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<u32>,
    /// The minimum supported Rust version, such as `1.70`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rust_version: Option<String>,
}

/// One dependency of an [`IndexVersion`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexDependency {
    /// The name the dependent uses (the rename, when `package` is set).
    pub name: String,
    /// The version requirement, such as `^1.2`.
    pub req: String,
    /// Features enabled on the dependency.
    pub features: Vec<String>,
    /// Whether the dependency is optional.
    pub optional: bool,
    /// Whether the dependency's default features are enabled.
    pub default_features: bool,
    /// The `cfg` or target triple the dependency is limited to.
    pub target: Option<String>,
    /// `normal`, `dev` or `build`.
    pub kind: Option<DependencyKind>,
    /// The dependency's real crate name when `name` is a rename.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
}

/// Kinds of dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DependencyKind {
    /// A dependency of the library and binaries.
    Normal,
    /// A dependency of tests, examples and benchmarks only.
    Dev,
    /// A dependency of the build script.
    Build,
}

/// The registry's `config.json`, at the root of the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexConfig {
    /// Where cargo downloads `.crate` files (may use `{crate}` and `{version}` markers).
    pub dl: String,
    /// The registry's web API, for `cargo publish` and friends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
}

impl IndexVersion {
    /// A version with no dependencies, no features, not yanked; fill in
    /// the rest by field.
    pub fn new(name: impl Into<String>, vers: impl Into<String>, cksum: impl Into<String>) -> Self {
        IndexVersion {
            name: name.into(),
            vers: vers.into(),
            deps: Vec::new(),
            cksum: cksum.into(),
            features: BTreeMap::new(),
            yanked: false,
            links: None,
            features2: None,
            v: None,
            rust_version: None,
        }
    }
}

impl IndexDependency {
    /// A normal, required dependency with default features, on any target.
    pub fn new(name: impl Into<String>, req: impl Into<String>) -> Self {
        IndexDependency {
            name: name.into(),
            req: req.into(),
            features: Vec::new(),
            optional: false,
            default_features: true,
            target: None,
            kind: Some(DependencyKind::Normal),
            package: None,
        }
    }
}
