//! The `index-worker` binary: configured by environment, runs the index
//! queue, and stops gracefully on SIGTERM and SIGINT. (Here rather than in
//! `tests/` because only this package's tests can locate its binary.)

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

use index_jobs::{add_crate, create_bare_index, IndexConfig, IndexVersion};
use skiplock::Job;
use skiplock_tests::{wait_until, TestDb};

fn version(name: &str) -> IndexVersion {
    IndexVersion::new(name, "0.1.0", "0".repeat(64))
}

#[test]
fn the_worker_binary_runs_index_jobs_and_stops_gracefully_on_sigterm_and_sigint() {
    for signal in ["TERM", "INT"] {
        let dir = tempfile::tempdir().unwrap();
        let upstream = dir.path().join("upstream.git");
        let config = IndexConfig {
            dl: "https://dl.example".into(),
            api: None,
        };
        create_bare_index(&upstream, &config, "master").unwrap();
        let db = TestDb::create();

        let mut worker = Command::new(env!("CARGO_BIN_EXE_index-worker"))
            .env("DATABASE_URL", db.url())
            .env("INDEX_URL", &upstream)
            .env("INDEX_CHECKOUT", dir.path().join("checkout"))
            .env("INDEX_SPARSE_DIR", dir.path().join("sparse"))
            .env("INDEX_POLL_MS", "50")
            .env("INDEX_GIT_TOKEN", "s3cret-token")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(worker.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(line.contains("running the `index` queue"), "{line}");

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

        let kill = Command::new("kill")
            .args([format!("-{signal}"), worker.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let status = worker.wait().unwrap();
        let mut rest = String::new();
        stdout.read_to_string(&mut rest).unwrap();
        let mut stderr = String::new();
        worker
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(status.success(), "SIG{signal}: {status}\n{rest}\n{stderr}");
        assert!(
            rest.contains("index-worker: stopped"),
            "SIG{signal}: {rest}"
        );
        assert!(
            !stderr.contains("s3cret-token") && !rest.contains("s3cret-token"),
            "a credential was logged"
        );
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
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(at) = dirs.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                dirs.push(entry.path());
            } else if std::fs::read(entry.path())
                .unwrap()
                .windows(secret.len())
                .any(|w| w == secret.as_bytes())
            {
                found.push(entry.path());
            }
        }
    }
    found
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
        let config = IndexConfig {
            dl: "https://dl.example".into(),
            api: None,
        };
        create_bare_index(&served.join("index.git"), &config, "master").unwrap();
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
        let mut worker = Command::new(env!("CARGO_BIN_EXE_index-worker"))
            .env("DATABASE_URL", db.url())
            .env("INDEX_URL", &url)
            .env_remove("INDEX_GIT_TOKEN")
            .env("INDEX_CHECKOUT", &checkout)
            .env("INDEX_SPARSE_DIR", dir.path().join("sparse"))
            .env("INDEX_POLL_MS", "50")
            .env("RUST_LOG", "trace")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(worker.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(line.contains("running the `index` queue"), "{line}");
        add_crate(version("hello")).enqueue(&mut db.conn()).unwrap();
        let upstream = git2::Repository::open_bare(served.join("index.git")).unwrap();
        wait_until("the worker pushed", Duration::from_secs(30), || {
            let head = upstream.refname_to_id("refs/heads/master").unwrap();
            let tree = upstream.find_commit(head).unwrap().tree().unwrap();
            tree.get_path(std::path::Path::new("he/ll/hello")).is_ok()
        });
        Command::new("kill")
            .args(["-TERM", &worker.id().to_string()])
            .status()
            .unwrap();
        assert!(worker.wait().unwrap().success());
        let mut output = String::new();
        stdout.read_to_string(&mut output).unwrap();
        worker
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut output)
            .unwrap();
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
