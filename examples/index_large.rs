//! What a large crate costs the index jobs: a crate with 2,000 versions,
//! then one more published, synced from the registry's records (the whole
//! file rewritten from them), next to the per-change `add_crate` job on
//! the same file. Git index and sparse directory, local upstream.
//!
//! `cargo run --release -p skiplock-examples --example index-large [-- VERSIONS]`

use std::time::{Duration, Instant};

use diesel::prelude::*;
use index_jobs::{Change, Credentials, Index, IndexDependency, IndexVersion, RepoConfig};
use skiplock_examples::registry::{self, Records, VERSIONS_TABLE};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let versions: usize = std::env::args().nth(1).map_or(Ok(2000), |n| n.parse())?;
    let dir = tempfile::tempdir()?;
    let upstream = registry::local_upstream(dir.path())?;
    let database = skiplock_examples::fresh_database("queue_index_large")?;
    let url = database.url.clone();
    let mut conn = PgConnection::establish(&url)?;
    skiplock::migrate(&mut conn)?;
    diesel::sql_query(VERSIONS_TABLE).execute(&mut conn)?;
    let index = Index::open(RepoConfig {
        upstream: upstream.display().to_string(),
        checkout: dir.path().join("checkout"),
        branch: "master".into(),
        author_name: "bench".into(),
        author_email: "bench@localhost".into(),
        credentials: Credentials::None,
    })?
    .records(Records)
    .sparse_dir(dir.path().join("sparse"))?;

    let line = |n: usize| {
        let mut v = IndexVersion::new("big", format!("1.{n}.0"), format!("{n:064x}"));
        v.deps = (0..5)
            .map(|d| IndexDependency::new(format!("dep{d}"), "^1"))
            .collect();
        v.features.insert("default".into(), vec!["std".into()]);
        v.features.insert("std".into(), Vec::new());
        v
    };
    let started = Instant::now();
    for n in 0..versions {
        registry::publish(&mut conn, &line(n)).map_err(|e| e.to_string())?;
    }
    index.sync_crate(&mut conn, "big")?;
    let file = std::fs::metadata(dir.path().join("sparse/3/b/big"))?.len();
    println!(
        "{versions} versions published and synced in {:.1} s; the file is {} KiB",
        started.elapsed().as_secs_f64(),
        file / 1024
    );

    let mut sync = Vec::new();
    let mut add = Vec::new();
    let mut read = Vec::new();
    for round in 0..5 {
        let next = line(versions + 2 * round);
        registry::publish(&mut conn, &next).map_err(|e| e.to_string())?;
        let t = Instant::now();
        index_jobs::RegistryRecords::versions(&Records, &mut conn, "big")
            .map_err(|e| e.to_string())?;
        read.push(t.elapsed());
        let t = Instant::now();
        index.sync_crate(&mut conn, "big")?;
        sync.push(t.elapsed());
        let t = Instant::now();
        index.apply(&Change::Add(line(versions + 2 * round + 1)))?;
        add.push(t.elapsed());
    }
    let median = |mut d: Vec<Duration>| {
        d.sort();
        d[d.len() / 2].as_secs_f64() * 1000.0
    };
    println!(
        "one more version of a crate with {versions}: sync_crate {:.0} ms (of which reading the \
         records {:.0} ms), add_crate {:.0} ms (median of 5; fetch, write, commit, push and the \
         sparse copy included)",
        median(sync),
        median(read),
        median(add)
    );
    Ok(())
}
