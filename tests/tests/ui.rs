//! Compile tests of `#[background_job]`: every accepted shape compiles
//! (`ui/pass`), and every misuse fails with the reviewed message, spanned on
//! the offending tokens (`ui/fail/*.stderr`). Regenerate with
//! `TRYBUILD=overwrite cargo test -p skiplock-tests --test ui`, then read every diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/*.rs");
    t.compile_fail("ui/fail/*.rs");
}

/// What the compiler counts, not only what it shows: rustc prints identical
/// diagnostics once, so a `.stderr` cannot tell one error from three at the
/// same place (an IDE lists all three). Every failing case is checked as a
/// binary of a crate of its own, and the errors rustc reports for it (in
/// its JSON, undeduplicated) must be exactly those its reviewed `.stderr`
/// shows.
#[test]
fn each_case_is_as_many_errors_to_the_compiler_as_its_stderr_shows() {
    use std::path::PathBuf;
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned();
    let fail = workspace.join("tests/ui/fail");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&fail)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
        .collect();
    cases.sort();
    let app = tempfile::tempdir().unwrap();
    let mut manifest = format!(
        "[package]\nname = \"ui-errors\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\
         autobins = false\n\n[workspace]\n\n[dependencies]\n\
         skiplock = {{ path = {:?}, features = [\"anyhow\", \"eyre\", \"tokio\"] }}\n\
         diesel = {{ version = \"2.3\", default-features = false, features = [\"postgres\"] }}\n\
         serde = {{ version = \"1\", features = [\"derive\"] }}\n",
        workspace.join("queue").display()
    );
    for case in &cases {
        manifest.push_str(&format!(
            "\n[[bin]]\nname = {:?}\npath = {:?}\n",
            case.file_stem().unwrap().to_str().unwrap(),
            case.display()
        ));
    }
    std::fs::write(app.path().join("Cargo.toml"), manifest).unwrap();
    std::fs::copy(workspace.join("Cargo.lock"), app.path().join("Cargo.lock")).unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let check = std::process::Command::new(cargo)
        .args([
            "check",
            "--bins",
            "--keep-going",
            "--message-format=json",
            "--manifest-path",
        ])
        .arg(app.path().join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", workspace.join("target/ui-errors"))
        .output()
        .expect("run cargo");
    let mut reported = std::collections::BTreeMap::<String, usize>::new();
    for line in String::from_utf8_lossy(&check.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let diagnostic = &message["message"];
        if message["reason"] == "compiler-message"
            && diagnostic["level"] == "error"
            && !diagnostic["message"]
                .as_str()
                .unwrap_or_default()
                .starts_with("aborting due to")
        {
            let target = message["target"]["name"].as_str().unwrap().to_owned();
            *reported.entry(target).or_default() += 1;
        }
    }
    let mut wrong = Vec::new();
    for case in &cases {
        let name = case.file_stem().unwrap().to_str().unwrap();
        let shown = std::fs::read_to_string(case.with_extension("stderr"))
            .unwrap()
            .lines()
            .filter(|line| line.starts_with("error"))
            .count();
        let counted = reported.get(name).copied().unwrap_or(0);
        if counted != shown {
            wrong.push(format!(
                "{name}: rustc reports {counted}, the .stderr shows {shown}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{}\n{}",
        wrong.join("\n"),
        String::from_utf8_lossy(&check.stderr)
    );
}
