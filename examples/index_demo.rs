//! The index jobs end to end, the way a registry uses them: its publish
//! and yank handlers record the change in the database and enqueue the index
//! job in the same transaction; a runner with one worker on the `index` queue
//! updates a git index (a throwaway bare repository here) and pushes it.
//!
//! `cargo run -p skiplock-examples --example index-demo` (set `DATABASE_URL` to
//! use another server; the demo drops and creates its own `queue_index_demo`
//! database).

use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{Bool, Text};
use index_jobs::{
    add_crate, create_bare_index, unyank, yank, Credentials, Index, IndexConfig, IndexDependency,
    IndexVersion, RepoConfig, INDEX_QUEUE,
};
use skiplock::{Job, Runner};
use skiplock_examples::count;

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

    let url = skiplock_examples::fresh_database("queue_index_demo")?;
    let mut conn = PgConnection::establish(&url)?;
    skiplock::migrate(&mut conn)?;
    diesel::sql_query(
        "CREATE TABLE versions (crate_name TEXT NOT NULL, num TEXT NOT NULL, \
         yanked BOOLEAN NOT NULL DEFAULT false, PRIMARY KEY (crate_name, num))",
    )
    .execute(&mut conn)?;

    println!("\nthe registry's handlers, one transaction each:");
    publish(&mut conn, version("serde", "1.0.0", &[]))?;
    publish(&mut conn, version("serde", "1.0.1", &[]))?;
    publish(&mut conn, version("my-app", "0.1.0", &[("serde", "^1.0")]))?;
    set_yanked(&mut conn, "serde", "1.0.1", true)?;
    set_yanked(&mut conn, "serde", "1.0.1", false)?;
    set_yanked(&mut conn, "serde", "1.0.0", true)?;
    // At-least-once: the same publish delivered twice must not commit twice.
    add_crate(version("serde", "1.0.0", &[])).enqueue(&mut conn)?;
    println!("  replay: add serde 1.0.0 enqueued again (a retried request)");
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
    })?;
    let running = Runner::builder(index)
        .database_url(url.as_str())
        .queue(INDEX_QUEUE, 1)
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

/// A registry's publish handler: records the version and enqueues its
/// index job in one transaction, after validating it for the index.
fn publish(conn: &mut PgConnection, version: IndexVersion) -> DemoResult<()> {
    version.validate()?;
    conn.transaction(|conn| -> DemoResult<()> {
        diesel::sql_query("INSERT INTO versions (crate_name, num) VALUES ($1, $2)")
            .bind::<Text, _>(&version.name)
            .bind::<Text, _>(&version.vers)
            .execute(conn)?;
        println!("  publish {} {}", version.name, version.vers);
        add_crate(version).enqueue(conn)?;
        Ok(())
    })
}

/// A registry's yank / unyank handler.
fn set_yanked(conn: &mut PgConnection, name: &str, vers: &str, yanked: bool) -> DemoResult<()> {
    conn.transaction(|conn| -> DemoResult<()> {
        diesel::sql_query("UPDATE versions SET yanked = $3 WHERE crate_name = $1 AND num = $2")
            .bind::<Text, _>(name)
            .bind::<Text, _>(vers)
            .bind::<Bool, _>(yanked)
            .execute(conn)?;
        if yanked {
            println!("  yank {name} {vers}");
            yank(name.into(), vers.into()).enqueue(conn)?;
        } else {
            println!("  unyank {name} {vers}");
            unyank(name.into(), vers.into()).enqueue(conn)?;
        }
        Ok(())
    })
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
