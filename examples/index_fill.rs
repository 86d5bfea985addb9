//! How long filling the sparse index takes: an index of N crates (1,000 by
//! default, published one by one through `Index::apply`, which the index
//! jobs run; with `--direct`, written as one commit, for sizes where
//! publishing one by one would take hours), then an empty sparse
//! directory filled from it, filled again (nothing left to write), and
//! verified. Local upstream, the disk of this machine.
//!
//! `cargo run --release -p skiplock-examples --example index-fill [-- CRATES [--direct]]`

use std::time::Instant;

use index_jobs::{Change, Credentials, Index, IndexVersion, RepoConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let direct = args.iter().any(|a| a == "--direct");
    let crates: usize = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map_or(Ok(1000), |n| n.parse())?;
    let dir = tempfile::tempdir()?;
    let upstream = skiplock_examples::registry::local_upstream(dir.path())?;
    let repo_config = |checkout: &str| RepoConfig {
        upstream: upstream.display().to_string(),
        checkout: dir.path().join(checkout),
        branch: "master".into(),
        author_name: "bench".into(),
        author_email: "bench@localhost".into(),
        credentials: Credentials::None,
    };
    let version =
        |n: usize| IndexVersion::new(format!("crate{n:06}"), "1.0.0", format!("{n:064x}"));
    let started = Instant::now();
    if direct {
        write_in_one_commit(&upstream, crates, &version)?;
    } else {
        let publisher = Index::open(repo_config("publisher"))?;
        for n in 0..crates {
            publisher.apply(&Change::Add(version(n)))?;
        }
    }
    println!(
        "{crates} crates in the git index ({}) in {:.1} s",
        if direct {
            "one commit"
        } else {
            "published one by one"
        },
        started.elapsed().as_secs_f64()
    );

    let sparse = dir.path().join("sparse");
    let began = Instant::now();
    let filler = Index::open(repo_config("filler"))?.sparse_dir(&sparse)?;
    let opened = began.elapsed();
    let began = Instant::now();
    let first = filler.fill_sparse(|_| {})?;
    let fill = began.elapsed();
    let began = Instant::now();
    let again = filler.fill_sparse(|_| {})?;
    let refill = began.elapsed();
    let began = Instant::now();
    let check = filler.verify_sparse()?;
    let verify = began.elapsed();
    assert!(check.is_clean(), "{check:?}");
    println!(
        "clone of the index for the fill: {:.2} s",
        opened.as_secs_f64()
    );
    println!(
        "fill of an empty sparse directory: {} files, {} written, in {:.2} s ({:.0} files/s)",
        first.files,
        first.written,
        fill.as_secs_f64(),
        first.files as f64 / fill.as_secs_f64()
    );
    println!(
        "fill again (nothing to write): {} written, in {:.2} s",
        again.written,
        refill.as_secs_f64()
    );
    println!(
        "verify: {} files, clean, in {:.2} s",
        check.files,
        verify.as_secs_f64()
    );
    Ok(())
}

/// Adds every crate's file to the upstream's branch in one commit.
fn write_in_one_commit(
    upstream: &std::path::Path,
    crates: usize,
    version: &dyn Fn(usize) -> IndexVersion,
) -> Result<(), Box<dyn std::error::Error>> {
    let repo = git2::Repository::open_bare(upstream)?;
    let head = repo.find_reference("refs/heads/master")?.peel_to_commit()?;
    let mut update = git2::build::TreeUpdateBuilder::new();
    for n in 0..crates {
        let v = version(n);
        let line = format!("{}\n", serde_json::to_string(&v)?);
        let blob = repo.blob(line.as_bytes())?;
        update.upsert(index_jobs::crate_path(&v.name)?, blob, git2::FileMode::Blob);
    }
    let tree = update.create_updated(&repo, &head.tree()?)?;
    let tree = repo.find_tree(tree)?;
    let author = git2::Signature::now("bench", "bench@localhost")?;
    repo.commit(
        Some("refs/heads/master"),
        &author,
        &author,
        "Add every crate",
        &tree,
        &[&head],
    )?;
    Ok(())
}
