//! The `index-worker` binary: configured by environment, runs the index
//! queue, and stops gracefully on SIGTERM and SIGINT. (Here rather than in
//! `tests/` because only this package's tests can locate its binary.)

use std::process::Command;
use std::time::Duration;

use index_jobs::{add_crate, create_bare_index, IndexConfig, IndexVersion};
use skiplock::Job;
use skiplock_tests::process::Process;
use skiplock_tests::{wait_until, TestDb};

/// A new bare index at `dir/name`.
fn bare_index(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let upstream = dir.join(name);
    let config = IndexConfig {
        dl: "https://dl.example".into(),
        api: None,
    };
    create_bare_index(&upstream, &config, "master").unwrap();
    upstream
}

fn version(name: &str) -> IndexVersion {
    IndexVersion::new(name, "0.1.0", "0".repeat(64))
}

#[test]
fn the_worker_binary_runs_index_jobs_and_stops_gracefully_on_sigterm_and_sigint() {
    for signal in ["TERM", "INT"] {
        let dir = tempfile::tempdir().unwrap();
        let upstream = bare_index(dir.path(), "upstream.git");
        let db = TestDb::create();

        let mut command = Command::new(env!("CARGO_BIN_EXE_index-worker"));
        command
            .env("DATABASE_URL", db.url())
            .env("INDEX_URL", &upstream)
            .env("INDEX_CHECKOUT", dir.path().join("checkout"))
            .env("INDEX_SPARSE_DIR", dir.path().join("sparse"))
            .env("INDEX_POLL_MS", "50")
            .env("INDEX_GIT_TOKEN", "s3cret-token");
        let mut worker = Process::spawn(command);
        worker.wait_for("running the `index` queue", Duration::from_secs(20));

        add_crate(version("hello")).enqueue(&mut db.conn()).unwrap();
        let repo = git2::Repository::open_bare(&upstream).unwrap();
        wait_until(
            "the worker pushed the crate",
            Duration::from_secs(20),
            || {
                let head = repo.refname_to_id("refs/heads/master").unwrap();
                let tree = repo.find_commit(head).unwrap().tree().unwrap();
                tree.get_path(std::path::Path::new("he/ll/hello")).is_ok()
            },
        );
        wait_until("the sparse copy", Duration::from_secs(5), || {
            dir.path().join("sparse/he/ll/hello").is_file()
                && dir.path().join("sparse/config.json").is_file()
        });

        worker.signal(signal);
        let (status, output) = worker.finish();
        assert!(status.success(), "SIG{signal}: {status}\n{output}");
        assert!(
            output.contains("index-worker: stopped"),
            "SIG{signal}: {output}"
        );
        assert!(!output.contains("s3cret-token"), "a credential was logged");
    }
}

#[test]
fn the_worker_binary_explains_a_bad_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_index-worker"))
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env("INDEX_URL", dir.path().join("no-such-index.git"))
        .env("INDEX_CHECKOUT", dir.path().join("checkout"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("index-worker: cannot open the index"),
        "{stderr}"
    );

    let output = Command::new(env!("CARGO_BIN_EXE_index-worker"))
        .env_clear()
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--database-url"), "{stderr}");
}

#[test]
fn the_worker_binary_never_prints_its_database_or_index_credentials() {
    const SECRET: &str = "hunter2-Sw0rdfish";
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], database_url: &str| {
        Command::new(env!("CARGO_BIN_EXE_index-worker"))
            .args(args)
            .env("DATABASE_URL", database_url)
            .env(
                "INDEX_URL",
                format!("https://token:{SECRET}@git.example/index.git"),
            )
            .env("INDEX_CHECKOUT", dir.path().join("checkout"))
            .output()
            .unwrap()
    };
    let well_formed = format!("postgres://app:{SECRET}@127.0.0.1:1/none");
    let malformed = format!("postgres://app:{SECRET}@[::1/none");
    for (args, url) in [
        (&["--help"][..], &well_formed),
        (&[], &well_formed),
        (&[], &malformed),
    ] {
        let output = run(args, url);
        for text in [&output.stdout, &output.stderr] {
            let text = String::from_utf8_lossy(text);
            assert!(!text.contains(SECRET), "{args:?} {url}: {text}");
        }
    }
}

/// Every file under `dir` (the checkout with its `.git`) that holds `secret`.
fn files_holding(dir: &std::path::Path, secret: &str) -> Vec<std::path::PathBuf> {
    skiplock_tests::files_under(dir)
        .into_iter()
        .filter(|file| {
            std::fs::read(file)
                .unwrap()
                .windows(secret.len())
                .any(|w| w == secret.as_bytes())
        })
        .collect()
}

#[test]
fn a_token_in_the_index_url_logs_in_and_is_written_and_logged_nowhere() {
    use skiplock_tests::git_http::GitHttpServer;
    const TOKEN: &str = "ghp_T0kenInTheUrl9";
    // `https://TOKEN@host/..` (user only), and `https://user:TOKEN@host/..`.
    for (userinfo, login) in [
        (TOKEN.to_owned(), format!("{TOKEN}:")),
        (
            format!("x-access-token:{TOKEN}"),
            format!("x-access-token:{TOKEN}"),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let served = dir.path().join("served");
        bare_index(&served, "index.git");
        let (user, password) = login.split_once(':').unwrap();
        let server = GitHttpServer::start(served.clone(), user, password);
        let address = format!("http://127.0.0.1:{}/index.git", server.port);
        let url = address.replacen("://", &format!("://{userinfo}@"), 1);
        let checkout = dir.path().join("checkout");
        if userinfo.contains(':') {
            // A checkout an older release made: the token in its remote's URL.
            let repo =
                git2::Repository::clone(served.join("index.git").to_str().unwrap(), &checkout)
                    .unwrap();
            repo.remote_set_url("origin", &url).unwrap();
            assert_eq!(files_holding(&checkout, TOKEN).len(), 1);
        }
        let db = TestDb::create();
        let mut command = Command::new(env!("CARGO_BIN_EXE_index-worker"));
        command
            .env("DATABASE_URL", db.url())
            .env("INDEX_URL", &url)
            .env_remove("INDEX_GIT_TOKEN")
            .env("INDEX_CHECKOUT", &checkout)
            .env("INDEX_SPARSE_DIR", dir.path().join("sparse"))
            .env("INDEX_POLL_MS", "50")
            .env("RUST_LOG", "trace");
        let mut worker = Process::spawn(command);
        worker.wait_for("running the `index` queue", Duration::from_secs(20));
        add_crate(version("hello")).enqueue(&mut db.conn()).unwrap();
        let upstream = git2::Repository::open_bare(served.join("index.git")).unwrap();
        wait_until("the worker pushed", Duration::from_secs(30), || {
            let head = upstream.refname_to_id("refs/heads/master").unwrap();
            let tree = upstream.find_commit(head).unwrap().tree().unwrap();
            tree.get_path(std::path::Path::new("he/ll/hello")).is_ok()
        });
        worker.signal("TERM");
        let (status, output) = worker.finish();
        assert!(status.success(), "{output}");
        assert!(output.contains("cloning the index") || userinfo.contains(':'));
        assert!(
            !output.contains(TOKEN),
            "{userinfo}: a log line holds the token"
        );
        // The server saw the login on the push, from the credential callback.
        let seen = server.seen();
        assert!(
            seen.iter().any(|r| r.line.contains("git-receive-pack")
                && r.login.as_deref() == Some(login.as_str())
                && r.status == 200),
            "{seen:?}"
        );
        assert_eq!(
            files_holding(&checkout, TOKEN),
            Vec::<std::path::PathBuf>::new()
        );
        let repo = git2::Repository::open(&checkout).unwrap();
        let remote = repo.find_remote("origin").unwrap();
        assert_eq!(remote.url(), Some(address.as_str()));
    }
}

#[test]
fn the_worker_binary_fills_and_verifies_the_sparse_directory_without_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = bare_index(dir.path(), "upstream.git");
    // An index of 50 crates, made before the sparse directory existed.
    let index = index_jobs::Index::open(index_jobs::RepoConfig {
        upstream: upstream.display().to_string(),
        checkout: dir.path().join("publisher"),
        branch: "master".into(),
        author_name: "registry".into(),
        author_email: "registry@localhost".into(),
        credentials: index_jobs::Credentials::None,
    })
    .unwrap();
    for n in 0..50 {
        index
            .apply(&index_jobs::Change::Add(version(&format!("crate{n}"))))
            .unwrap();
    }
    let sparse = dir.path().join("sparse");
    let run = |command: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_index-worker"))
            .args(command)
            .env_remove("DATABASE_URL")
            .env("INDEX_URL", &upstream)
            .env("INDEX_CHECKOUT", dir.path().join("filler"))
            .env("INDEX_SPARSE_DIR", &sparse)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code(), text)
    };
    let (code, text) = run(&["verify-sparse"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("missing: cr/at/crate0"), "{text}");
    assert!(text.contains("51 files at"), "{text}");
    assert!(text.contains("50 missing, 0 different, 0 extra"), "{text}");
    assert!(text.contains("run `index-worker fill-sparse`"), "{text}");

    let (code, text) = run(&["fill-sparse"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("filling: 51 of 51 files looked at"), "{text}");
    assert!(text.contains(": 51 files, 50 written, 0 removed"), "{text}");
    for n in 0..50 {
        let path = format!("cr/at/crate{n}");
        let in_git = Command::new("git")
            .args(["--git-dir", upstream.to_str().unwrap(), "show"])
            .arg(format!("master:{path}"))
            .output()
            .unwrap();
        assert_eq!(std::fs::read(sparse.join(&path)).unwrap(), in_git.stdout);
    }
    let (code, text) = run(&["verify-sparse"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("0 missing, 0 different, 0 extra"), "{text}");
    // Run again: nothing left to write.
    let (code, text) = run(&["fill-sparse"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains(": 51 files, 0 written"), "{text}");

    let output = Command::new(env!("CARGO_BIN_EXE_index-worker"))
        .arg("fill-sparse")
        .env_clear()
        .env("INDEX_URL", &upstream)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--sparse-dir (or INDEX_SPARSE_DIR) is required"),
        "{stderr}"
    );
}

/// An `index-worker` process on `upstream`, running.
fn start_worker(db: &TestDb, upstream: &std::path::Path, checkout: &std::path::Path) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_index-worker"));
    command
        .env("DATABASE_URL", db.url())
        .env("INDEX_URL", upstream)
        .env("INDEX_CHECKOUT", checkout)
        .env("INDEX_POLL_MS", "100")
        .env("RUST_LOG", "info");
    let worker = Process::spawn(command);
    worker.wait_for("running the `index` queue", Duration::from_secs(20));
    worker
}

/// How many pushes it made.
fn updates(worker: &Process) -> usize {
    worker.text().matches("index updated").count()
}

#[test]
fn a_second_index_worker_says_so_stands_by_and_takes_over_when_the_first_dies() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = bare_index(dir.path(), "upstream.git");
    let db = TestDb::create();
    let mut first = start_worker(&db, &upstream, &dir.path().join("one"));
    let mut conn = db.conn();
    add_crate(version("first")).enqueue(&mut conn).unwrap();
    wait_until("the first worker ran it", Duration::from_secs(20), || {
        updates(&first) == 1
    });
    let second = start_worker(&db, &upstream, &dir.path().join("two"));
    wait_until(
        "the second says it stands by",
        Duration::from_secs(10),
        || second.text().contains("stands by"),
    );
    let line = second.text();
    let line = line.lines().find(|l| l.contains("stands by")).unwrap();
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("`index` runs one worker across all runners"),
        "{line}"
    );
    // The runners' records say who has the queue and who waits.
    wait_until("the standby is announced", Duration::from_secs(10), || {
        let runners = skiplock::runners(&mut conn).unwrap();
        let standing_by = |pid: u32| {
            runners
                .iter()
                .find(|r| r.pid == pid as i32)
                .map(|r| (r.exclusive.clone(), r.standby.clone()))
        };
        let index = vec!["index".to_owned()];
        standing_by(first.child.id()) == Some((index.clone(), vec![]))
            && standing_by(second.child.id()) == Some((index.clone(), index))
    });
    // Only the first runs the queue's jobs.
    for n in 0..5 {
        add_crate(version(&format!("more{n}")))
            .enqueue(&mut conn)
            .unwrap();
    }
    wait_until("the first ran them", Duration::from_secs(20), || {
        updates(&first) == 6
    });
    assert_eq!(updates(&second), 0);

    // The first dies: its session ends, the second takes the queue.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    add_crate(version("after")).enqueue(&mut conn).unwrap();
    wait_until("the second took over", Duration::from_secs(10), || {
        updates(&second) == 1
    });
    assert!(
        second.text().contains("runs the exclusive queue now"),
        "{}",
        second.text()
    );
}
