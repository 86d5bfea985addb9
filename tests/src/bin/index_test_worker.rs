//! An index worker for the two-writer tests:
//! `index-test-worker DATABASE_URL UPSTREAM_PATH CHECKOUT SPARSE_DIR SEED`.
//! Serves the `index` queue with the demo registry's records and a sparse
//! directory; before one push in four, another writer's commit lands in the
//! upstream first (an empty commit made straight in the upstream
//! repository), so that push is rejected. Logs each accepted push
//! (`index updated`, with its commit) on stderr; prints `ready` once
//! running, then runs until killed.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use index_jobs::{Credentials, Index, RepoConfig, INDEX_QUEUE};
use skiplock_examples::registry::Records;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "index_jobs=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let [_, url, upstream, checkout, sparse, seed] = &args[..] else {
        eprintln!("usage: index-test-worker DATABASE_URL UPSTREAM_PATH CHECKOUT SPARSE_DIR SEED");
        std::process::exit(2);
    };
    let rng = Mutex::new(fastrand::Rng::with_seed(seed.parse().expect("a seed")));
    let other_writer = PathBuf::from(upstream);
    let index = Index::open(RepoConfig {
        upstream: upstream.clone(),
        checkout: checkout.into(),
        branch: "master".into(),
        author_name: "index test worker".into(),
        author_email: "worker@localhost".into(),
        credentials: Credentials::None,
    })
    .expect("open the index")
    .records(Records)
    .sparse_dir(sparse)
    .expect("the sparse directory")
    .max_push_attempts(4)
    .before_push(move || {
        if rng.lock().expect("rng").u8(0..4) == 0 {
            push_first(&other_writer);
        }
    });
    let runner = skiplock::Runner::builder(index)
        .database_url(url.as_str())
        .queue(INDEX_QUEUE, 1)
        .poll_interval(Duration::from_millis(50))
        .build()
        .expect("runner");
    skiplock_tests::run_until_killed(runner)
}

/// Another writer's commit on the upstream's branch (the same files).
fn push_first(upstream: &std::path::Path) {
    let Ok(repo) = git2::Repository::open_bare(upstream) else {
        return;
    };
    let Ok(head) = repo
        .find_reference("refs/heads/master")
        .and_then(|r| r.peel_to_commit())
    else {
        return;
    };
    let signature = git2::Signature::now("another writer", "other@localhost").expect("signature");
    // Moves the branch only if it is still `head`.
    let _ = head.tree().and_then(|tree| {
        repo.commit(
            Some("refs/heads/master"),
            &signature,
            &signature,
            "Another writer",
            &tree,
            &[&head],
        )
    });
}
