//! The index jobs against real git repositories: a bare upstream in a temp
//! dir, the worker's working clone, another clone racing it, and cargo
//! itself reading the result.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use index_jobs::{
    add_crate, create_bare_index, unyank, yank, Credentials, Index, IndexConfig, IndexDependency,
    IndexVersion, RepoConfig, INDEX_QUEUE,
};
use skiplock::{Job, RunSummary, Runner};
use skiplock_tests::TestDb;
use tempfile::TempDir;

/// A bare upstream index and a place for clones.
struct Upstream {
    dir: TempDir,
}

impl Upstream {
    fn new() -> Upstream {
        let dir = tempfile::tempdir().unwrap();
        let config = IndexConfig {
            dl: "https://crates.example/api/v1/crates".into(),
            api: Some("https://crates.example".into()),
        };
        create_bare_index(&dir.path().join("upstream.git"), &config, "master").unwrap();
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
            "publish it under that exact name",
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
        format!("[registries.test]\nindex = \"{}\"\n", upstream.url()),
    )
    .unwrap();
    let output = Command::new(env!("CARGO"))
        .arg("generate-lockfile")
        .current_dir(project.path())
        .env("CARGO_HOME", &cargo_home)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cargo: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lock = std::fs::read_to_string(project.path().join("Cargo.lock")).unwrap();
    let lines: Vec<&str> = lock.lines().collect();
    lines
        .windows(2)
        .filter(|w| w[0] == format!("name = \"{krate}\""))
        .map(|w| {
            w[1].trim_start_matches("version = \"")
                .trim_end_matches('"')
                .to_owned()
        })
        .collect()
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
    let pushes = std::sync::atomic::AtomicU32::new(0);
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
