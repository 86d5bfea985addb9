//! The index jobs against real git repositories: a bare upstream in a temp
//! dir, the worker's working clone, another clone racing it, and cargo
//! itself reading the result.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{Bool, Text};
use index_jobs::{
    add_crate, create_bare_index, sync_crate, unyank, yank, Credentials, Index, IndexConfig,
    IndexDependency, IndexVersion, RegistryRecords, RepoConfig, INDEX_QUEUE,
};
use skiplock::{BoxError, Job, RunSummary, Runner};
use skiplock_examples::registry::{Records, VERSIONS_TABLE};
use skiplock_tests::process::Process;
use skiplock_tests::TestDb;
use tempfile::TempDir;

/// A bare upstream index and a place for clones.
struct Upstream {
    dir: TempDir,
}

impl Upstream {
    fn new() -> Upstream {
        Upstream::with_config(&IndexConfig {
            dl: "https://crates.example/api/v1/crates".into(),
            api: Some("https://crates.example".into()),
        })
    }

    fn with_config(config: &IndexConfig) -> Upstream {
        let dir = tempfile::tempdir().unwrap();
        create_bare_index(&dir.path().join("upstream.git"), config, "master").unwrap();
        Upstream { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("upstream.git")
    }

    fn url(&self) -> String {
        format!("file://{}", self.path().display())
    }

    fn repo(&self) -> git2::Repository {
        git2::Repository::open_bare(self.path()).unwrap()
    }

    fn config(&self, checkout: &str) -> RepoConfig {
        RepoConfig {
            upstream: self.path().display().to_string(),
            checkout: self.dir.path().join(checkout),
            branch: "master".into(),
            author_name: "registry bot".into(),
            author_email: "bot@crates.example".into(),
            credentials: Credentials::None,
        }
    }

    fn head(&self) -> git2::Oid {
        self.repo().refname_to_id("refs/heads/master").unwrap()
    }

    /// Commit messages, newest first, and whether every commit has at most one parent.
    fn history(&self) -> (Vec<String>, bool) {
        let repo = self.repo();
        let mut commit = repo.find_commit(self.head()).unwrap();
        let mut messages = vec![commit.message().unwrap().to_owned()];
        let mut linear = true;
        while commit.parent_count() > 0 {
            linear &= commit.parent_count() == 1;
            commit = commit.parent(0).unwrap();
            messages.push(commit.message().unwrap().to_owned());
        }
        (messages, linear)
    }

    /// The file at `path` on the upstream branch, if any.
    fn file(&self, path: &str) -> Option<String> {
        let repo = self.repo();
        let tree = repo.find_commit(self.head()).unwrap().tree().unwrap();
        let entry = tree.get_path(Path::new(path)).ok()?;
        let blob = repo.find_blob(entry.id()).unwrap();
        Some(String::from_utf8(blob.content().to_vec()).unwrap())
    }

    fn lines(&self, path: &str) -> Vec<serde_json::Value> {
        self.file(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn version(name: &str, vers: &str) -> IndexVersion {
    IndexVersion::new(name, vers, "a".repeat(64))
}

fn runner(db: &TestDb, index: Index) -> Runner<Index> {
    skiplock_tests::init_tracing();
    Runner::builder(index)
        .database_url(db.url())
        .queue(INDEX_QUEUE, 1)
        .build()
        .unwrap()
}

/// Enqueues `job`, runs the queue, returns what happened.
fn run(db: &TestDb, runner: &Runner<Index>, job: impl Job) -> RunSummary {
    job.enqueue(&mut db.conn()).unwrap();
    runner.run_pending().unwrap()
}

fn succeeded(summary: &RunSummary) {
    assert!(summary.failed.is_empty(), "{:?}", summary.failed);
    assert_eq!(summary.succeeded.len(), 1);
}

#[test]
fn add_yank_and_unyank_each_commit_their_change_to_the_crate_file() {
    let upstream = Upstream::new();
    let db = TestDb::create();
    let runner = runner(&db, Index::open(upstream.config("checkout")).unwrap());
    let mut serde = version("Serde", "1.0.0");
    serde.deps.push(IndexDependency {
        optional: true,
        target: Some("cfg(unix)".into()),
        ..IndexDependency::new("serde_derive", "^1.0")
    });
    serde
        .features
        .insert("derive".into(), vec!["serde_derive".into()]);

    succeeded(&run(&db, &runner, add_crate(serde.clone())));
    let file = upstream
        .file("se/rd/serde")
        .expect("the crate file, lower-cased and sharded");
    assert_eq!(
        file,
        format!("{}\n", serde_json::to_string(&serde).unwrap())
    );
    assert_eq!(upstream.history().0[0], "Updating crate `Serde#1.0.0`");
    let repo = upstream.repo();
    let commit = repo.find_commit(upstream.head()).unwrap();
    assert_eq!(commit.author().name(), Some("registry bot"));
    assert_eq!(commit.author().email(), Some("bot@crates.example"));

    succeeded(&run(&db, &runner, add_crate(version("Serde", "1.0.1"))));
    succeeded(&run(&db, &runner, yank("Serde".into(), "1.0.0".into())));
    assert_eq!(upstream.history().0[0], "Yanking crate `Serde#1.0.0`");
    let lines = upstream.lines("se/rd/serde");
    assert_eq!(
        (lines[0]["yanked"].as_bool(), lines[1]["yanked"].as_bool()),
        (Some(true), Some(false))
    );
    // Only the yanked line changed.
    let file_after = upstream.file("se/rd/serde").unwrap();
    assert_eq!(
        file_after.lines().nth(1),
        Some(
            serde_json::to_string(&version("Serde", "1.0.1"))
                .unwrap()
                .as_str()
        )
    );

    succeeded(&run(&db, &runner, unyank("Serde".into(), "1.0.0".into())));
    assert_eq!(upstream.history().0[0], "Unyanking crate `Serde#1.0.0`");
    assert_eq!(upstream.lines("se/rd/serde")[0]["yanked"], false);
    assert_eq!(
        upstream.file("se/rd/serde").unwrap().lines().next(),
        file.lines().next()
    );
    let (messages, linear) = upstream.history();
    assert_eq!(messages.len(), 5, "{messages:?}");
    assert!(linear);
}

#[test]
fn a_job_run_twice_leaves_the_same_index_and_makes_no_second_commit() {
    let upstream = Upstream::new();
    let db = TestDb::create();
    let runner = runner(&db, Index::open(upstream.config("checkout")).unwrap());
    let tokio = version("tokio", "1.40.0");

    for job_run in 0..2 {
        succeeded(&run(&db, &runner, add_crate(tokio.clone())));
        assert_eq!(upstream.history().0.len(), 2, "add run {job_run}");
    }
    for job_run in 0..2 {
        succeeded(&run(&db, &runner, yank("tokio".into(), "1.40.0".into())));
        assert_eq!(upstream.history().0.len(), 3, "yank run {job_run}");
    }
    // A replay of the add after the yank: the same version, still a no-op.
    succeeded(&run(&db, &runner, add_crate(tokio.clone())));
    for job_run in 0..2 {
        succeeded(&run(&db, &runner, unyank("tokio".into(), "1.40.0".into())));
        assert_eq!(upstream.history().0.len(), 4, "unyank run {job_run}");
    }
    assert_eq!(upstream.lines("to/ki/tokio").len(), 1);
}

#[test]
fn a_push_rejected_because_another_clone_pushed_first_is_fetched_reset_and_reapplied() {
    let upstream = Upstream::new();
    let db = TestDb::create();
    // Between this worker's commit and its push, another writer pushes.
    let raced = AtomicBool::new(false);
    let other_checkout = upstream.dir.path().join("other");
    let other_config = upstream.config("other");
    let index = Index::open(upstream.config("checkout"))
        .unwrap()
        .before_push(move || {
            if !raced.swap(true, Ordering::SeqCst) {
                let other = Index::open(RepoConfig {
                    checkout: other_checkout.clone(),
                    ..other_config.clone()
                })
                .unwrap();
                other
                    .apply(&index_jobs::Change::Add(version("regex", "1.10.0")))
                    .unwrap();
            }
        });
    let runner = runner(&db, index);
    succeeded(&run(&db, &runner, add_crate(version("regex", "1.11.0"))));

    let (messages, linear) = upstream.history();
    assert!(linear, "history has a merge: {messages:?}");
    assert_eq!(
        messages[..3],
        [
            "Updating crate `regex#1.11.0`".to_owned(),
            "Updating crate `regex#1.10.0`".to_owned(),
            "Initialize the index".to_owned()
        ]
    );
    let versions: Vec<_> = upstream
        .lines("re/ge/regex")
        .iter()
        .map(|l| l["vers"].clone())
        .collect();
    assert_eq!(versions, ["1.10.0", "1.11.0"], "both changes, each once");
}

enum Bad {
    Add(IndexVersion),
    Yank(String, String),
    Unyank(String, String),
}

#[test]
fn bad_input_gives_a_clear_permanent_error_and_leaves_the_index_untouched() {
    let upstream = Upstream::new();
    let db = TestDb::create();
    let runner = runner(&db, Index::open(upstream.config("checkout")).unwrap());
    succeeded(&run(&db, &runner, add_crate(version("anyhow", "1.0.0"))));
    let head = upstream.head();
    let file = upstream.file("an/yh/anyhow");

    let mut bad_req = version("fine", "1.0.0");
    bad_req.deps.push(IndexDependency::new("dep", "~>1"));
    let mut other_content = version("anyhow", "1.0.0");
    other_content.cksum = "b".repeat(64);
    let mut bad_cksum = version("fine", "1.0.0");
    bad_cksum.cksum = "xyz".into();
    let yank_job = |name: &str, vers: &str| Bad::Yank(name.into(), vers.into());
    let cases = [
        (
            Bad::Add(version("../../etc/passwd", "1.0.0")),
            "invalid crate name `../../etc/passwd`",
        ),
        (
            Bad::Add(version("9lives", "1.0.0")),
            "must start with a letter",
        ),
        (Bad::Add(version("std", "1.0.0")), "reserved"),
        (Bad::Add(version(&"a".repeat(65), "1.0.0")), "65 characters"),
        (Bad::Add(version("fine", "1.0")), "invalid version `1.0`"),
        (Bad::Add(bad_req), "requirement of dependency `dep`"),
        (Bad::Add(bad_cksum), "64 lowercase hex digits"),
        (Bad::Add(other_content), "versions are immutable"),
        (
            Bad::Add(version("AnyHow", "2.0.0")),
            "which cargo takes for the same name as `AnyHow`",
        ),
        (
            yank_job("missing", "1.0.0"),
            "crate `missing` is not in the index",
        ),
        (yank_job("anyhow", "9.9.9"), "has no version `9.9.9`"),
        (
            Bad::Unyank("anyhow".into(), "x.y".into()),
            "invalid version `x.y`",
        ),
        (yank_job("a/b", "1.0.0"), "'/' is not allowed"),
    ];
    for (bad, expected) in cases {
        let summary = match bad {
            Bad::Add(v) => run(&db, &runner, add_crate(v)),
            Bad::Yank(name, vers) => run(&db, &runner, yank(name, vers)),
            Bad::Unyank(name, vers) => run(&db, &runner, unyank(name, vers)),
        };
        assert_eq!(summary.failed.len(), 1, "{expected}: {summary:?}");
        let failure = &summary.failed[0];
        assert!(failure.dead, "{expected}: bad input must not be retried");
        assert!(
            failure.error.contains(expected),
            "expected {expected:?} in {:?}",
            failure.error
        );
        assert_eq!(upstream.head(), head, "{expected}: the index was changed");
    }
    assert_eq!(upstream.file("an/yh/anyhow"), file);
    assert!(!upstream.dir.path().join("etc").exists());
}

/// Runs `cargo generate-lockfile` in a project depending on `dependency`
/// from the upstream registry; returns the locked versions of `krate`.
fn cargo_locks(upstream: &Upstream, dependency: &str, krate: &str) -> Vec<String> {
    cargo_resolves(&upstream.url(), dependency, krate, false)
}

/// Runs real cargo in a new project depending on `dependency` from the
/// registry whose index is at `index` (`generate-lockfile`, then `fetch`
/// if `download`: every `.crate` downloaded and its checksum verified);
/// returns the locked versions of `krate`.
fn cargo_resolves(index: &str, dependency: &str, krate: &str, download: bool) -> Vec<String> {
    try_cargo_resolves(index, dependency, krate, download).unwrap_or_else(|e| panic!("{e}"))
}

/// [`cargo_resolves`], or what cargo said when it failed.
fn try_cargo_resolves(
    index: &str,
    dependency: &str,
    krate: &str,
    download: bool,
) -> Result<Vec<String>, String> {
    let project = tempfile::tempdir().unwrap();
    let cargo_home = project.path().join("cargo-home");
    std::fs::create_dir_all(project.path().join("src")).unwrap();
    std::fs::create_dir_all(project.path().join(".cargo")).unwrap();
    std::fs::write(project.path().join("src/main.rs"), "fn main() {}\n").unwrap();
    std::fs::write(
        project.path().join("Cargo.toml"),
        format!(
            "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
             [dependencies]\n{dependency}\n\n[workspace]\n"
        ),
    )
    .unwrap();
    std::fs::write(
        project.path().join(".cargo/config.toml"),
        format!("[registries.test]\nindex = \"{index}\"\n"),
    )
    .unwrap();
    let commands: &[&str] = if download {
        &["generate-lockfile", "fetch"]
    } else {
        &["generate-lockfile"]
    };
    for command in commands {
        let output = Command::new(env!("CARGO"))
            .arg(command)
            .current_dir(project.path())
            .env("CARGO_HOME", &cargo_home)
            .env_remove("CARGO_TARGET_DIR")
            .output()
            .unwrap();
        if !output.status.success() {
            return Err(format!(
                "cargo {command}: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    let lock = std::fs::read_to_string(project.path().join("Cargo.lock")).unwrap();
    let lines: Vec<&str> = lock.lines().collect();
    Ok(lines
        .windows(2)
        .filter(|w| w[0] == format!("name = \"{krate}\""))
        .map(|w| {
            w[1].trim_start_matches("version = \"")
                .trim_end_matches('"')
                .to_owned()
        })
        .collect())
}

#[test]
fn cargo_resolves_crates_published_by_the_jobs_and_stops_picking_a_yanked_version() {
    let upstream = Upstream::new();
    let db = TestDb::create();
    let runner = runner(&db, Index::open(upstream.config("checkout")).unwrap());
    succeeded(&run(&db, &runner, add_crate(version("fancy-log", "1.0.0"))));
    succeeded(&run(&db, &runner, add_crate(version("fancy-log", "1.1.0"))));
    let mut app_lib = version("app_lib", "0.3.0");
    app_lib.deps.push(IndexDependency::new("fancy-log", "^1.0"));
    succeeded(&run(&db, &runner, add_crate(app_lib)));

    let direct = "fancy-log = { version = \"1\", registry = \"test\" }";
    assert_eq!(cargo_locks(&upstream, direct, "fancy-log"), ["1.1.0"]);
    let transitive = "app_lib = { version = \"0.3\", registry = \"test\" }";
    assert_eq!(cargo_locks(&upstream, transitive, "fancy-log"), ["1.1.0"]);

    succeeded(&run(&db, &runner, yank("fancy-log".into(), "1.1.0".into())));
    assert_eq!(cargo_locks(&upstream, direct, "fancy-log"), ["1.0.0"]);
    assert_eq!(cargo_locks(&upstream, transitive, "fancy-log"), ["1.0.0"]);

    succeeded(&run(
        &db,
        &runner,
        unyank("fancy-log".into(), "1.1.0".into()),
    ));
    assert_eq!(cargo_locks(&upstream, direct, "fancy-log"), ["1.1.0"]);
}

#[test]
fn a_push_rejected_again_and_again_fails_the_job_for_a_later_retry_after_a_bounded_number_of_tries()
{
    let upstream = Upstream::new();
    let db = TestDb::create();
    let other_checkout = upstream.dir.path().join("other");
    let other_config = upstream.config("other");
    let pushes = AtomicU32::new(0);
    // Another writer wins every race.
    let index = Index::open(upstream.config("checkout"))
        .unwrap()
        .max_push_attempts(3)
        .before_push(move || {
            let n = pushes.fetch_add(1, Ordering::SeqCst);
            let other = Index::open(RepoConfig {
                checkout: other_checkout.clone(),
                ..other_config.clone()
            })
            .unwrap();
            other
                .apply(&index_jobs::Change::Add(version(
                    "busy",
                    &format!("0.{n}.0"),
                )))
                .unwrap();
        });
    let runner = runner(&db, index);
    let summary = run(&db, &runner, add_crate(version("patient", "1.0.0")));
    assert_eq!(summary.failed.len(), 1);
    let failure = &summary.failed[0];
    assert!(!failure.dead, "a busy upstream is worth retrying later");
    assert!(
        failure.error.contains("rejected the push 3 times"),
        "{}",
        failure.error
    );
    assert_eq!(upstream.file("pa/ti/patient"), None);
    assert_eq!(upstream.lines("bu/sy/busy").len(), 3);
    assert!(upstream.history().1);
}

// --- sync jobs: the index converges to the registry's records ----------

/// The registry's publish handler: the record and the sync, one transaction
/// (without the web handler's validation, so that the jobs' own checks are
/// what refuses bad records). The table and its `RegistryRecords` are the
/// demo's (`skiplock_examples::registry`).
fn publish(conn: &mut PgConnection, version: &IndexVersion) {
    conn.transaction(|conn| {
        diesel::sql_query(
            "INSERT INTO versions (crate_name, num, line) VALUES ($1, $2, $3::jsonb)",
        )
        .bind::<Text, _>(&version.name)
        .bind::<Text, _>(&version.vers)
        .bind::<Text, _>(serde_json::to_string(version).unwrap())
        .execute(conn)?;
        sync_crate(version.name.clone()).enqueue(conn)?;
        Ok::<_, BoxError>(())
    })
    .unwrap();
}

/// The registry's yank and unyank handlers.
fn set_yanked(conn: &mut PgConnection, name: &str, vers: &str, yanked: bool) {
    conn.transaction(|conn| {
        let changed =
            diesel::sql_query("UPDATE versions SET yanked = $3 WHERE crate_name = $1 AND num = $2")
                .bind::<Text, _>(name)
                .bind::<Text, _>(vers)
                .bind::<Bool, _>(yanked)
                .execute(conn)?;
        assert_eq!(changed, 1, "{name} {vers}");
        sync_crate(name.to_owned()).enqueue(conn)?;
        Ok::<_, BoxError>(())
    })
    .unwrap();
}

/// What the crate's file must be, from the records.
fn file_from_records(conn: &mut PgConnection, name: &str) -> Option<String> {
    let versions = Records.versions(conn, name).unwrap();
    if versions.is_empty() {
        return None;
    }
    let lines: Vec<String> = versions
        .iter()
        .map(|v| serde_json::to_string(v).unwrap())
        .collect();
    Some(format!("{}\n", lines.join("\n")))
}

/// An index whose pushes are rejected while `rejections` is above 0: another
/// clone pushes first (and the counter goes down by one).
fn contested_index(upstream: &Upstream, rejections: Arc<AtomicU32>) -> Index {
    let other_config = upstream.config("other");
    let other: Mutex<Option<Index>> = Mutex::new(None);
    let noise = AtomicU32::new(0);
    Index::open(upstream.config("checkout"))
        .unwrap()
        .records(Records)
        .before_push(move || {
            let left = rejections.load(Ordering::SeqCst);
            if left == 0 {
                return;
            }
            rejections.store(left - 1, Ordering::SeqCst);
            let mut other = other.lock().unwrap();
            let other = other.get_or_insert_with(|| Index::open(other_config.clone()).unwrap());
            let n = noise.fetch_add(1, Ordering::SeqCst);
            other
                .apply(&index_jobs::Change::Add(version(
                    "noise",
                    &format!("0.0.{n}"),
                )))
                .unwrap();
        })
}

fn registry_db() -> TestDb {
    let db = TestDb::create();
    db.execute(VERSIONS_TABLE);
    db
}

#[test]
fn a_failed_yank_retried_after_a_later_unyank_leaves_the_version_as_the_records_say() {
    let upstream = Upstream::new();
    let db = registry_db();
    let rejections = Arc::new(AtomicU32::new(0));
    let runner = runner(
        &db,
        contested_index(&upstream, rejections.clone()).max_push_attempts(1),
    );
    let mut conn = db.conn();
    publish(&mut conn, &version("serde", "1.0.0"));
    succeeded(&runner.run_pending().unwrap());

    // The yank's push is rejected: its job fails and waits out a backoff.
    set_yanked(&mut conn, "serde", "1.0.0", true);
    rejections.store(1, Ordering::SeqCst);
    let summary = runner.run_pending().unwrap();
    assert_eq!(summary.failed.len(), 1, "{summary:?}");
    assert!(!summary.failed[0].dead);
    // The unyank meanwhile: its sync runs at once.
    set_yanked(&mut conn, "serde", "1.0.0", false);
    succeeded(&runner.run_pending().unwrap());
    // Then the yank's retry, which must not yank.
    succeeded(&skiplock::testing::run_all(&runner).unwrap());
    assert_eq!(upstream.lines("se/rd/serde")[0]["yanked"], false);
    assert_eq!(
        upstream.file("se/rd/serde"),
        file_from_records(&mut conn, "serde")
    );

    // A yank that runs before its version's publish has landed: the
    // publish's push is rejected, the yank's sync writes both.
    rejections.store(1, Ordering::SeqCst);
    publish(&mut conn, &version("serde", "2.0.0"));
    assert_eq!(runner.run_pending().unwrap().failed.len(), 1);
    set_yanked(&mut conn, "serde", "2.0.0", true);
    succeeded(&runner.run_pending().unwrap());
    assert_eq!(upstream.lines("se/rd/serde")[1]["yanked"], true);
    let before_retry = upstream.head();
    succeeded(&skiplock::testing::run_all(&runner).unwrap());
    assert_eq!(
        upstream.head(),
        before_retry,
        "the retry had nothing to commit"
    );
    assert_eq!(
        upstream.file("se/rd/serde"),
        file_from_records(&mut conn, "serde")
    );
    assert_eq!(db.count_jobs("true"), 0);
}

#[test]
fn two_hundred_random_interleavings_with_rejected_pushes_end_with_every_file_equal_to_the_records()
{
    let seed = std::env::var("INDEX_SEED").map_or(20261127, |s| s.parse().unwrap());
    let mut rng = fastrand::Rng::with_seed(seed);
    let upstream = Upstream::new();
    let db = registry_db();
    let rejections = Arc::new(AtomicU32::new(0));
    let runner = runner(
        &db,
        contested_index(&upstream, rejections.clone()).max_push_attempts(2),
    );
    let mut conn = db.conn();
    let mut crates: Vec<(String, u32)> = Vec::new();
    for round in 0..200 {
        // Two crates a round, one spelled with capitals and `_`.
        let names = [format!("round{round}-a"), format!("Round{round}_b")];
        for _ in 0..rng.usize(3..9) {
            let name = &names[rng.usize(0..2)];
            let published = crates
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0, |(_, count)| *count);
            match rng.u8(0..5) {
                0 | 1 => {
                    publish(&mut conn, &version(name, &format!("1.{published}.0")));
                    match crates.iter_mut().find(|(n, _)| n == name) {
                        Some((_, count)) => *count += 1,
                        None => crates.push((name.clone(), 1)),
                    }
                }
                2 if published > 0 => {
                    let vers = format!("1.{}.0", rng.u32(0..published));
                    set_yanked(&mut conn, name, &vers, rng.bool());
                }
                _ => {
                    rejections.store(rng.u32(0..4), Ordering::SeqCst);
                    if rng.bool() {
                        runner.run_pending().unwrap();
                    } else {
                        skiplock::testing::run_all(&runner).unwrap();
                    }
                }
            }
        }
    }
    rejections.store(0, Ordering::SeqCst);
    for _ in 0..10 {
        if db.count_jobs("true") == 0 {
            break;
        }
        skiplock::testing::run_all(&runner).unwrap();
    }
    assert_eq!(db.count_jobs("true"), 0, "every job ran (seed {seed})");
    assert!(crates.len() > 200, "{} crates", crates.len());
    for (name, _) in &crates {
        let path = index_jobs::crate_path(name).unwrap();
        assert_eq!(
            upstream.file(path.to_str().unwrap()),
            file_from_records(&mut conn, name),
            "{name} (seed {seed})"
        );
    }
    assert!(upstream.history().1, "a linear history");
}

fn records_runner(db: &TestDb, upstream: &Upstream) -> Runner<Index> {
    runner(
        db,
        Index::open(upstream.config("checkout"))
            .unwrap()
            .records(Records),
    )
}

#[test]
fn cargos_name_and_feature_rules_are_applied_before_anything_is_written() {
    let upstream = Upstream::new();
    let db = registry_db();
    let runner = records_runner(&db, &upstream);
    let mut conn = db.conn();
    publish(&mut conn, &version("abc", "1.0.0"));
    publish(&mut conn, &version("foo-bar", "1.0.0"));
    let summary = runner.run_pending().unwrap();
    assert_eq!((summary.succeeded.len(), summary.failed.len()), (2, 0));

    // A dependency spelled `Abc` is written as the index spells the crate,
    // in the features too; `dep:` features move to `features2` with `v: 2`.
    let mut app = version("app", "1.0.0");
    app.deps.push(IndexDependency {
        optional: true,
        ..IndexDependency::new("Abc", "^1")
    });
    app.features.insert("extra".into(), vec!["Abc/std".into()]);
    app.features.insert("lean".into(), vec!["dep:Abc".into()]);
    publish(&mut conn, &app);
    succeeded(&runner.run_pending().unwrap());
    let line = &upstream.lines("3/a/app")[0];
    assert_eq!(line["deps"][0]["name"], "abc");
    assert_eq!(line["features"], serde_json::json!({"extra": ["abc/std"]}));
    assert_eq!(line["features2"], serde_json::json!({"lean": ["dep:abc"]}));
    assert_eq!(line["v"], 2);
    // And cargo resolves it, the optional dependency through the new syntax.
    let dependency = "app = { version = \"1\", registry = \"test\", features = [\"lean\"] }";
    assert_eq!(cargo_locks(&upstream, dependency, "abc"), ["1.0.0"]);

    // What cargo could not use is refused, permanently, and nothing is written.
    let head = upstream.head();
    let mut missing_feature = version("missing-feature", "1.0.0");
    missing_feature
        .features
        .insert("a".into(), vec!["nope".into()]);
    let mut not_optional = version("not-optional", "1.0.0");
    not_optional.deps.push(IndexDependency::new("abc", "^1"));
    not_optional
        .features
        .insert("a".into(), vec!["dep:abc".into()]);
    let mut no_such_dep = version("no-such-dep", "1.0.0");
    no_such_dep
        .features
        .insert("a".into(), vec!["serde/derive".into()]);
    let mut format_3 = version("format-three", "1.0.0");
    format_3.v = Some(3);
    let cases = [
        (
            version("foo_bar", "2.0.0"),
            "already has this crate as `foo-bar`",
        ),
        (
            version("Foo-Bar", "2.0.0"),
            "already has this crate as `foo-bar`",
        ),
        (
            missing_feature,
            "`nope` is neither a feature nor an optional dependency",
        ),
        (not_optional, "`dep:abc` names no optional dependency"),
        (no_such_dep, "`serde` is no dependency of this version"),
        (format_3, "cargo cannot read other versions"),
    ];
    for (bad, expected) in cases {
        db.execute("DELETE FROM versions WHERE crate_name <> 'abc' AND crate_name <> 'foo-bar' AND crate_name <> 'app'");
        publish(&mut conn, &bad);
        let summary = runner.run_pending().unwrap();
        assert_eq!(summary.failed.len(), 1, "{expected}: {summary:?}");
        assert!(summary.failed[0].dead, "{expected}: not worth a retry");
        let error = &summary.failed[0].error;
        assert!(error.contains(expected), "{expected:?} in {error:?}");
        assert_eq!(upstream.head(), head, "{expected}: the index changed");
        // `IndexVersion::validate` tells the web handler the same, where it can.
        if !expected.contains("already has") {
            let refused = bad.validate().unwrap_err().to_string();
            assert!(refused.contains(expected), "{refused}");
        }
        db.execute("DELETE FROM queue_jobs");
    }
    assert_eq!(upstream.file("fo/o_/foo_bar"), None);

    // Build metadata makes another version; messages use the index's spelling.
    let summary = run(&db, &runner, yank("ABC".into(), "1.0.0+zzz".into()));
    assert!(
        summary.failed[0]
            .error
            .contains("crate `abc` has no version `1.0.0+zzz`"),
        "{summary:?}"
    );
    assert_eq!(upstream.head(), head);
    succeeded(&run(&db, &runner, yank("ABC".into(), "1.0.0".into())));
    assert_eq!(upstream.history().0[0], "Yanking crate `abc#1.0.0`");
}

/// The index of `upstream` with the demo registry's records and a sparse
/// directory.
fn sparse_index(upstream: &Upstream, sparse: &Path) -> Index {
    Index::open(upstream.config("checkout"))
        .unwrap()
        .records(Records)
        .sparse_dir(sparse)
        .unwrap()
}

/// An empty sparse directory served with `crates` (see [`serve_registry`]),
/// its port, and an upstream index whose downloads are those.
fn served_registry(crates: std::collections::HashMap<String, Vec<u8>>) -> (TempDir, u16, Upstream) {
    let sparse = tempfile::tempdir().unwrap();
    let port = serve_registry(sparse.path().to_owned(), crates);
    let upstream = Upstream::with_config(&IndexConfig {
        dl: format!("http://127.0.0.1:{port}/dl"),
        api: None,
    });
    (sparse, port, upstream)
}

/// A real `.crate` file made by `cargo package`, and its SHA-256.
fn packaged_crate(name: &str, vers: &str) -> (Vec<u8>, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/lib.rs"), "pub fn hello() {}\n").unwrap();
    std::fs::write(
        dir.path().join("Cargo.toml"),
        format!(
            "[package]\nname = \"{name}\"\nversion = \"{vers}\"\nedition = \"2021\"\n\
             description = \"test\"\nlicense = \"MIT\"\n\n[workspace]\n"
        ),
    )
    .unwrap();
    let output = Command::new(env!("CARGO"))
        .args(["package", "--no-verify", "--allow-dirty", "--offline"])
        .current_dir(dir.path())
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cargo package: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let file = dir
        .path()
        .join(format!("target/package/{name}-{vers}.crate"));
    let bytes = std::fs::read(&file).unwrap();
    let sum = Command::new("sha256sum").arg(&file).output().unwrap();
    let sum = String::from_utf8(sum.stdout).unwrap();
    (bytes, sum.split_whitespace().next().unwrap().to_owned())
}

/// Serves `sparse` (the sparse index) and `crates` (at
/// `/dl/{name}/{version}/download`) over HTTP on 127.0.0.1, from a thread
/// that lives as long as the test; returns the port.
fn serve_registry(sparse: PathBuf, crates: std::collections::HashMap<String, Vec<u8>>) -> u16 {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let port = server.server_addr().to_ip().unwrap().port();
    std::thread::spawn(move || {
        for request in server.incoming_requests() {
            let url = request.url().trim_start_matches('/').to_owned();
            let body = if let Some(download) = url.strip_prefix("dl/") {
                crates.get(download).cloned()
            } else if url.split('/').all(|part| !part.is_empty() && part != "..") {
                std::fs::read(sparse.join(&url)).ok()
            } else {
                None
            };
            let _ = match body {
                Some(body) => request.respond(tiny_http::Response::from_data(body)),
                None => request.respond(tiny_http::Response::empty(404)),
            };
        }
    });
    port
}

#[test]
fn cargo_resolves_and_downloads_through_the_sparse_protocol_and_honours_yanks() {
    // Real `.crate` files first: the index needs their checksums.
    let mut crates = std::collections::HashMap::new();
    let mut lines = Vec::new();
    for vers in ["1.0.0", "1.1.0"] {
        let (bytes, sum) = packaged_crate("fancy-log", vers);
        crates.insert(format!("fancy-log/{vers}/download"), bytes);
        lines.push(IndexVersion::new("fancy-log", vers, sum));
    }
    let (sparse, port, upstream) = served_registry(crates);
    let db = registry_db();
    let index = sparse_index(&upstream, sparse.path());
    let runner = runner(&db, index);
    let mut conn = db.conn();
    for line in &lines {
        publish(&mut conn, line);
    }
    let summary = runner.run_pending().unwrap();
    assert!(summary.failed.is_empty(), "{summary:?}");
    // The same files as the git index.
    assert_eq!(
        std::fs::read_to_string(sparse.path().join("fa/nc/fancy-log")).ok(),
        upstream.file("fa/nc/fancy-log")
    );
    assert_eq!(
        std::fs::read_to_string(sparse.path().join("config.json")).ok(),
        upstream.file("config.json")
    );

    let index_url = format!("sparse+http://127.0.0.1:{port}/");
    let direct = "fancy-log = { version = \"1\", registry = \"test\" }";
    assert_eq!(
        cargo_resolves(&index_url, direct, "fancy-log", true),
        ["1.1.0"]
    );
    set_yanked(&mut conn, "fancy-log", "1.1.0", true);
    succeeded(&runner.run_pending().unwrap());
    assert_eq!(
        cargo_resolves(&index_url, direct, "fancy-log", true),
        ["1.0.0"]
    );
    set_yanked(&mut conn, "fancy-log", "1.1.0", false);
    succeeded(&runner.run_pending().unwrap());
    assert_eq!(
        cargo_resolves(&index_url, direct, "fancy-log", true),
        ["1.1.0"]
    );
    // A crate the registry no longer has leaves both indexes.
    db.execute("DELETE FROM versions");
    sync_crate("fancy-log".into()).enqueue(&mut conn).unwrap();
    succeeded(&runner.run_pending().unwrap());
    assert_eq!(upstream.file("fa/nc/fancy-log"), None);
    assert!(!sparse.path().join("fa/nc/fancy-log").exists());
    assert_eq!(upstream.history().0[0], "Deleting crate `fancy-log`");
}

// --- the sparse directory: filled, verified, shared by writers ---------

/// The sparse index's files (not the writers' state), relative to `dir`,
/// with their bytes.
fn sparse_files(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    skiplock_tests::files_under(dir)
        .into_iter()
        .map(|file| file.strip_prefix(dir).unwrap().to_owned())
        .filter(|path| {
            !path
                .components()
                .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
        })
        .map(|path| {
            let bytes = std::fs::read(dir.join(&path)).unwrap();
            (path, bytes)
        })
        .collect()
}

/// Temporary files left in the sparse directory (outside its state).
fn leftover_temporaries(dir: &Path) -> Vec<PathBuf> {
    skiplock_tests::files_under(dir)
        .into_iter()
        .filter(|file| {
            !file.starts_with(dir.join(".skiplock")) && file.to_string_lossy().ends_with(".tmp")
        })
        .collect()
}

/// Every file of the upstream's git index at its head, with its bytes.
fn git_files(upstream: &Upstream) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let repo = upstream.repo();
    let tree = repo.find_commit(upstream.head()).unwrap().tree().unwrap();
    let mut files = std::collections::BTreeMap::new();
    tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
        if entry.kind() == Some(git2::ObjectType::Blob) {
            let blob = repo.find_blob(entry.id()).unwrap();
            files.insert(
                Path::new(dir).join(entry.name().unwrap()),
                blob.content().to_vec(),
            );
        }
        git2::TreeWalkResult::Ok
    })
    .unwrap();
    files
}

#[test]
fn a_fill_puts_every_crate_of_an_existing_index_in_the_sparse_directory_for_cargo() {
    const CRATES: usize = 1000;
    // The crate cargo downloads is real; the others only need their lines.
    let (bytes, sum) = packaged_crate("c0537", "1.0.0");
    let crates = std::collections::HashMap::from([("c0537/1.0.0/download".to_owned(), bytes)]);
    let (sparse, port, upstream) = served_registry(crates);
    let db = registry_db();
    let mut conn = db.conn();
    // An index of 1,000 crates made by the jobs, without a sparse directory.
    {
        let runner = records_runner(&db, &upstream);
        for n in 0..CRATES {
            let name = format!("c{n:04}");
            let checksum = if n == 537 {
                sum.clone()
            } else {
                "b".repeat(64)
            };
            publish(&mut conn, &IndexVersion::new(&name, "1.0.0", checksum));
        }
        let summary = runner.run_pending().unwrap();
        assert_eq!(summary.succeeded.len(), CRATES, "{:?}", summary.failed);
    }
    // Sparse enabled afterwards: a job writes its own crate only.
    let index = sparse_index(&upstream, sparse.path());
    let runner = runner(&db, index);
    publish(&mut conn, &version("c0001", "1.1.0"));
    succeeded(&runner.run_pending().unwrap());
    assert_eq!(
        sparse_files(sparse.path()).len(),
        2,
        "config.json and c0001"
    );
    let index_url = format!("sparse+http://127.0.0.1:{port}/");
    let wanted = "c0537 = { version = \"1\", registry = \"test\" }";
    let before = try_cargo_resolves(&index_url, wanted, "c0537", true).unwrap_err();
    assert!(before.contains("c0537"), "{before}");
    let check = runner.context().verify_sparse().unwrap();
    assert_eq!(check.missing.len(), CRATES - 1, "{check:?}");
    assert!(!check.is_clean());

    // A fill cut short (its progress callback panics), then run again: it
    // carries on, writing only what the first left.
    let mut seen = Vec::new();
    let cut = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runner.context().fill_sparse(|p| {
            seen.push(*p);
            assert!(p.done < 400, "cut short");
        })
    }));
    assert!(cut.is_err());
    let written_before = seen.last().unwrap().changed;
    assert!(written_before > 300, "{written_before}");
    let total = seen[0].total;
    assert_eq!(total, CRATES + 1, "every crate file and config.json");
    let mut last = None;
    let began = std::time::Instant::now();
    let report = runner
        .context()
        .fill_sparse(|p| {
            if let Some(previous) = last.replace(p.done) {
                assert_eq!(p.done, previous + 1);
            }
        })
        .unwrap();
    eprintln!("fill of {} files: {:?}", report.files, began.elapsed());
    assert_eq!(last, Some(total));
    assert_eq!(report.files, CRATES + 1);
    assert_eq!(report.written, CRATES - 1 - written_before, "{report:?}");
    assert_eq!((report.removed, report.newer), (0, 0));
    assert_eq!(report.commit, upstream.head().to_string());
    // Byte for byte the git index, readable by a web server of another user.
    assert_eq!(sparse_files(sparse.path()), git_files(&upstream));
    assert!(leftover_temporaries(sparse.path()).is_empty());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(sparse.path().join("c0/53/c0537"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o044, 0o044, "{mode:o}");
    assert!(runner.context().verify_sparse().unwrap().is_clean());
    // Real cargo resolves and downloads a crate no job touched since.
    assert_eq!(cargo_resolves(&index_url, wanted, "c0537", true), ["1.0.0"]);

    // Verify finds what went wrong since; a fill repairs that alone.
    std::fs::remove_file(sparse.path().join("c0/12/c0123")).unwrap();
    std::fs::write(sparse.path().join("c0/99/c0999"), "garbage\n").unwrap();
    std::fs::create_dir_all(sparse.path().join("zz/zz")).unwrap();
    std::fs::write(sparse.path().join("zz/zz/zzzz-stale"), "").unwrap();
    let check = runner.context().verify_sparse().unwrap();
    assert_eq!(check.missing, [PathBuf::from("c0/12/c0123")]);
    assert_eq!(check.different, [PathBuf::from("c0/99/c0999")]);
    assert_eq!(check.extra, [PathBuf::from("zz/zz/zzzz-stale")]);
    let report = runner.context().fill_sparse(|_| {}).unwrap();
    assert_eq!((report.written, report.removed), (2, 1), "{report:?}");
    assert_eq!(sparse_files(sparse.path()), git_files(&upstream));
}

#[test]
fn a_fill_never_puts_an_older_version_over_one_a_worker_wrote_meanwhile() {
    let upstream = Upstream::new();
    let sparse = tempfile::tempdir().unwrap();
    let filler = Index::open(upstream.config("filler"))
        .unwrap()
        .sparse_dir(sparse.path())
        .unwrap();
    let worker = Index::open(upstream.config("worker"))
        .unwrap()
        .sparse_dir(sparse.path())
        .unwrap();
    for name in ["aaa", "zz-late"] {
        worker
            .apply(&index_jobs::Change::Add(version(name, "1.0.0")))
            .unwrap();
    }
    std::fs::remove_file(sparse.path().join("zz/-l/zz-late")).unwrap();
    // Once the fill has its commit (and before it reaches `zz-late`), the
    // worker publishes a version of it: the fill's version is older.
    let mut published = false;
    let report = filler
        .fill_sparse(|_| {
            if !published {
                published = true;
                worker
                    .apply(&index_jobs::Change::Add(version("zz-late", "2.0.0")))
                    .unwrap();
            }
        })
        .unwrap();
    assert!(published);
    assert_eq!(report.newer, 1, "{report:?}");
    assert_eq!(
        std::fs::read_to_string(sparse.path().join("zz/-l/zz-late")).ok(),
        upstream.file("zz/-l/zz-late"),
        "the worker's newer version stays"
    );
    assert_eq!(upstream.lines("zz/-l/zz-late").len(), 2);
    let check = filler.verify_sparse().unwrap();
    assert!(check.is_clean(), "{check:?}");
}

#[test]
fn two_writers_of_one_process_fill_the_same_directory_at_once_without_a_clash() {
    // One process: both writers have its pid, as two containers' workers
    // both have pid 1.
    let upstream = Upstream::new();
    let writer = Index::open(upstream.config("writer"))
        .unwrap()
        .max_push_attempts(20);
    for n in 0..150 {
        writer
            .apply(&index_jobs::Change::Add(version(&format!("k{n}"), "1.0.0")))
            .unwrap();
    }
    for round in 0..3 {
        let sparse = tempfile::tempdir().unwrap();
        let fillers: Vec<Index> = ["one", "two"]
            .iter()
            .map(|name| {
                Index::open(upstream.config(&format!("{name}-{round}")))
                    .unwrap()
                    .sparse_dir(sparse.path())
                    .unwrap()
            })
            .collect();
        std::thread::scope(|scope| {
            let fills: Vec<_> = fillers
                .iter()
                .map(|filler| scope.spawn(move || filler.fill_sparse(|_| {})))
                .collect();
            for fill in fills {
                fill.join().unwrap().unwrap();
            }
        });
        assert_eq!(sparse_files(sparse.path()), git_files(&upstream));
        assert!(leftover_temporaries(sparse.path()).is_empty());
    }
}

/// Starts `index-test-worker` as pid 1 of a pid namespace of its own (as
/// in a container), and waits for it to run.
fn index_worker(
    db: &TestDb,
    upstream: &Upstream,
    checkout: &Path,
    sparse: &Path,
    seed: u64,
) -> Process {
    let mut command = Command::new("unshare");
    command
        .args(["--pid", "--fork", "--kill-child"])
        .arg(env!("CARGO_BIN_EXE_index-test-worker"))
        .arg(db.url())
        .arg(upstream.path())
        .arg(checkout)
        .arg(sparse)
        .arg(seed.to_string());
    let worker = Process::spawn(command);
    worker.wait_for("ready", Duration::from_secs(30));
    worker
}

/// The commits whose push a worker saw accepted.
fn accepted(worker: &Process) -> Vec<git2::Oid> {
    worker
        .text()
        .lines()
        .filter(|line| line.contains("index updated"))
        .filter_map(|line| line.split("commit=").nth(1))
        .map(|rest| git2::Oid::from_str(&rest[..40]).unwrap())
        .collect()
}

#[test]
fn two_index_workers_as_pid_1_sharing_a_path_upstream_and_the_sparse_directory_lose_nothing() {
    let seed = std::env::var("INDEX_SEED").map_or(20261203, |s| s.parse().unwrap());
    let mut rng = fastrand::Rng::with_seed(seed);
    let upstream = Upstream::new();
    let sparse = tempfile::tempdir().unwrap();
    let db = registry_db();
    // Both start at once on an empty sparse directory, both pid 1.
    let (one, two) = std::thread::scope(|scope| {
        let start = |name: &'static str, seed: u64| {
            let checkout = upstream.dir.path().join(name);
            let (db, upstream, sparse) = (&db, &upstream, sparse.path());
            scope.spawn(move || index_worker(db, upstream, &checkout, sparse, seed))
        };
        let (one, two) = (start("one", seed), start("two", seed + 1));
        (one.join().unwrap(), two.join().unwrap())
    });
    let mut workers = [one, two];
    let mut conn = db.conn();
    let names: Vec<String> = (0..20).map(|n| format!("crate-{n:02}")).collect();
    let mut published = vec![0u32; names.len()];
    for _ in 0..200 {
        let at = rng.usize(0..names.len());
        let name = &names[at];
        if published[at] == 0 || rng.u8(0..3) == 0 {
            publish(&mut conn, &version(name, &format!("1.{}.0", published[at])));
            published[at] += 1;
        } else {
            let vers = format!("1.{}.0", rng.u32(0..published[at]));
            set_yanked(&mut conn, name, &vers, rng.bool());
        }
        std::thread::sleep(Duration::from_millis(rng.u64(0..15)));
    }
    // A job whose pushes were all rejected waits out its backoff: retried
    // at once here.
    skiplock_tests::wait_until("every job ran", Duration::from_secs(120), || {
        for job in skiplock::failing_jobs(&mut conn, 100).unwrap() {
            let _ = skiplock::retry_job(&mut conn, skiplock::JobId(job.id));
        }
        db.count_jobs("true") == 0
    });
    for worker in &mut workers {
        assert!(worker.is_running(), "{}", worker.text());
    }
    // Every push a worker saw accepted is in the upstream's history.
    let repo = upstream.repo();
    let head = upstream.head();
    let accepted: Vec<_> = workers.iter().map(accepted).collect();
    assert!(
        accepted.iter().all(|a| a.len() >= 10),
        "both workers pushed: {:?}",
        accepted.iter().map(Vec::len).collect::<Vec<_>>()
    );
    for commit in accepted.iter().flatten() {
        assert!(
            *commit == head || repo.graph_descendant_of(head, *commit).unwrap(),
            "the accepted push {commit} is not in the upstream's history (seed {seed})"
        );
    }
    assert!(upstream.history().1, "a linear history");
    let rejected = workers
        .iter()
        .map(|w| w.text().matches("push rejected").count())
        .sum::<usize>();
    assert!(rejected >= 5, "{rejected} pushes rejected");
    // Every file: the records, the git index and the sparse directory agree.
    for name in &names {
        let path = index_jobs::crate_path(name).unwrap();
        let wanted = file_from_records(&mut conn, name);
        assert_eq!(
            upstream.file(path.to_str().unwrap()),
            wanted,
            "{name} (seed {seed})"
        );
        assert_eq!(
            std::fs::read_to_string(sparse.path().join(&path)).ok(),
            wanted,
            "{name}: sparse (seed {seed})"
        );
    }
    assert_eq!(sparse_files(sparse.path()), git_files(&upstream));
    assert!(leftover_temporaries(sparse.path()).is_empty());
}
