//! The index jobs end to end, the way a registry uses them: its publish
//! and yank handlers record the change in its tables and enqueue the
//! crate's sync in the same transaction; a runner with one worker on the
//! `index` queue brings the crate's file to what the tables say, in a git
//! index (a throwaway bare repository here) and a sparse index directory.
//!
//! `cargo run -p skiplock-examples --example index-demo` (set `DATABASE_URL` to
//! use another server; the demo drops and creates its own `queue_index_demo`
//! database).

use std::time::Duration;

use diesel::prelude::*;
use index_jobs::{
    create_bare_index, sync_crate, Credentials, Index, IndexConfig, IndexDependency, IndexVersion,
    RepoConfig, INDEX_QUEUE,
};
use skiplock::{Enqueued, Job, Runner};
use skiplock_examples::count;
use skiplock_examples::registry::{self, Records, VERSIONS_TABLE};

type DemoResult<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> DemoResult<()> {
    let filter =
        std::env::var("RUST_LOG").unwrap_or_else(|_| "index_jobs=info,skiplock=info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(false)
        .init();

    // A throwaway upstream index, as a registry's git host would hold it.
    let dir = tempfile::tempdir()?;
    let upstream = dir.path().join("index.git");
    let config = IndexConfig {
        dl: "https://crates.example/api/v1/crates".into(),
        api: Some("https://crates.example".into()),
    };
    create_bare_index(&upstream, &config, "master")?;
    println!("upstream index: {}", upstream.display());

    let database = skiplock_examples::fresh_database("queue_index_demo")?;
    let url = database.url.clone();
    let mut conn = PgConnection::establish(&url)?;
    skiplock::migrate(&mut conn)?;
    diesel::sql_query(VERSIONS_TABLE).execute(&mut conn)?;

    println!("\nthe registry's handlers, one transaction each:");
    publish(&mut conn, version("serde", "1.0.0", &[]))?;
    publish(&mut conn, version("serde", "1.0.1", &[]))?;
    publish(&mut conn, version("my-app", "0.1.0", &[("serde", "^1.0")]))?;
    set_yanked(&mut conn, "serde", "1.0.1", true)?;
    set_yanked(&mut conn, "serde", "1.0.1", false)?;
    set_yanked(&mut conn, "serde", "1.0.0", true)?;
    // At-least-once: a sync run twice commits nothing the second time.
    sync_crate("serde".into()).enqueue(&mut conn)?;
    let queued = count(&mut conn, "SELECT count(*) AS n FROM queue_jobs")?;
    println!("  {queued} index jobs queued");

    println!("\nthe index worker (queue `{INDEX_QUEUE}`, one worker):");
    let index = Index::open(RepoConfig {
        upstream: upstream.display().to_string(),
        checkout: dir.path().join("checkout"),
        branch: "master".into(),
        author_name: "crates.example bot".into(),
        author_email: "bot@crates.example".into(),
        credentials: Credentials::None,
    })?
    .records(Records)
    .sparse_dir(dir.path().join("sparse"))?;
    let running = Runner::builder(index)
        .database_url(url.as_str())
        .exclusive_queue(INDEX_QUEUE)
        .poll_interval(Duration::from_millis(50))
        .build()?
        .start();
    let finished = skiplock_examples::wait_for_zero(
        &mut conn,
        "SELECT count(*) AS n FROM queue_jobs",
        Duration::from_secs(60),
    )?;
    running.shutdown(Duration::from_secs(30));
    if !finished {
        return Ok(());
    }

    let repo = git2::Repository::open_bare(&upstream)?;
    let head = repo.find_commit(repo.refname_to_id("refs/heads/master")?)?;
    for path in ["se/rd/serde", "my/-a/my-app"] {
        let blob = repo.find_blob(head.tree()?.get_path(std::path::Path::new(path))?.id())?;
        println!("\n$ cat {path}");
        print!("{}", String::from_utf8_lossy(blob.content()));
    }
    let sparse = std::fs::read_to_string(dir.path().join("sparse/se/rd/serde"))?;
    println!(
        "\nthe sparse index (served as static files) has the same file: {}",
        {
            sparse.as_bytes()
                == repo
                    .find_blob(head.tree()?.get_path("se/rd/serde".as_ref())?.id())?
                    .content()
        }
    );
    println!("\n$ git log --format='%h %an: %s'");
    let mut commit = Some(head);
    while let Some(c) = commit {
        let short = c.as_object().short_id()?;
        println!(
            "{} {}: {}",
            short.as_str().unwrap_or("?"),
            c.author().name().unwrap_or("?"),
            c.summary().unwrap_or("")
        );
        commit = c.parents().next();
    }
    Ok(())
}

/// The registry's publish handler (see `skiplock_examples::registry`).
fn publish(conn: &mut PgConnection, version: IndexVersion) -> DemoResult<()> {
    let enqueued =
        registry::publish(conn, &version).map_err(|e| e as Box<dyn std::error::Error>)?;
    println!(
        "  publish {} {}: {}",
        version.name,
        version.vers,
        said(enqueued)
    );
    Ok(())
}

/// The registry's yank / unyank handler.
fn set_yanked(conn: &mut PgConnection, name: &str, vers: &str, yanked: bool) -> DemoResult<()> {
    let enqueued = registry::set_yanked(conn, name, vers, yanked)
        .map_err(|e| e as Box<dyn std::error::Error>)?;
    let verb = if yanked { "yank" } else { "unyank" };
    println!("  {verb} {name} {vers}: {}", said(enqueued));
    Ok(())
}

fn said(enqueued: Enqueued) -> &'static str {
    match enqueued {
        Enqueued::Inserted(_) => "sync enqueued",
        Enqueued::Duplicate => "a sync of the crate already waits; it will write this too",
    }
}

fn version(name: &str, vers: &str, deps: &[(&str, &str)]) -> IndexVersion {
    // The SHA-256 of the .crate file; a stand-in here.
    let cksum = format!("{:0>64x}", name.len() * 1000 + vers.len());
    IndexVersion {
        deps: deps
            .iter()
            .map(|(dep, req)| IndexDependency::new(*dep, *req))
            .collect(),
        ..IndexVersion::new(name, vers, cksum)
    }
}
