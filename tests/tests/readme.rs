//! The front door: the README's dependency block and hello program are the
//! ones in `examples/hello.rs` and on the crate's documentation page, and a
//! crate outside this workspace that depends on `skiplock` by path builds
//! and runs the program verbatim.

use std::path::{Path, PathBuf};
use std::process::Command;

use skiplock_tests::TestDb;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_owned()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(workspace().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The first fenced block opening with "```" + `info` after `heading`.
fn block_after(markdown: &str, heading: &str, info: &str) -> String {
    let from = markdown
        .find(heading)
        .unwrap_or_else(|| panic!("no `{heading}` in the markdown"));
    let fence = format!("```{info}\n");
    let start = from
        + markdown[from..]
            .find(&fence)
            .unwrap_or_else(|| panic!("no ```{info} block after `{heading}`"))
        + fence.len();
    let len = markdown[start..]
        .find("```\n")
        .expect("the block is closed");
    markdown[start..start + len].to_owned()
}

const HEADING: &str = "## Add it to your application";

#[test]
fn the_readme_program_is_examples_hello_and_the_crate_front_page() {
    let hello = read("examples/hello.rs");
    let readme = read("README.md");
    let crate_page = read("queue/README.md");
    assert_eq!(block_after(&readme, HEADING, "rust"), hello);
    assert_eq!(block_after(&crate_page, "", "rust,no_run"), hello);
    assert_eq!(
        block_after(&readme, HEADING, "toml"),
        block_after(&crate_page, "", "toml")
    );
    // The crate's front page leads with the attribute, not a hand-written `impl Job`.
    let front = &crate_page[..crate_page.find("```toml").unwrap()];
    assert!(front.contains("#[background_job]"), "{front}");
    assert!(!crate_page.contains("impl Job for"), "{crate_page}");
}

#[test]
fn a_crate_outside_the_workspace_builds_and_runs_the_readme_program() {
    let readme = read("README.md");
    let dependencies = block_after(&readme, HEADING, "toml");
    let published = "skiplock = \"0.1\"\n";
    assert!(
        dependencies.contains(published),
        "the README's dependency block names `skiplock` by version:\n{dependencies}"
    );
    // Until it is published, the same line by path; everything else verbatim.
    let by_path = format!(
        "skiplock = {{ path = {:?} }}\n",
        workspace().join("queue").display()
    );
    let dependencies = dependencies.replace(published, &by_path);

    let app = tempfile::tempdir().unwrap();
    std::fs::write(
        app.path().join("Cargo.toml"),
        format!(
            "[package]\nname = \"hello-app\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\n\
             [workspace]\n\n{dependencies}"
        ),
    )
    .unwrap();
    std::fs::create_dir(app.path().join("src")).unwrap();
    std::fs::write(
        app.path().join("src/main.rs"),
        block_after(&readme, HEADING, "rust"),
    )
    .unwrap();
    // The workspace's lock file pins the same versions, so the shared
    // target directory is reused from one run to the next.
    std::fs::copy(
        workspace().join("Cargo.lock"),
        app.path().join("Cargo.lock"),
    )
    .unwrap();

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = workspace().join("target/outside-hello");
    let build = Command::new(&cargo)
        .args(["build", "--quiet", "--manifest-path"])
        .arg(app.path().join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("run cargo");
    assert!(
        build.status.success(),
        "the README's program does not build outside the workspace:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );

    let db = TestDb::create_empty();
    let run = Command::new(target.join("debug/hello-app"))
        .env("DATABASE_URL", db.url())
        .output()
        .expect("run the program");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(stdout, "Hello, Ferris!\ngreeted Ferris\n");
    assert_eq!(db.count_jobs("true"), 0, "the job ran and was deleted");
}
