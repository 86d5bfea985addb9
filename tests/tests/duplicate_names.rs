//! Two job types registered under one stored name: no runner starts in a
//! binary that links both, and the error names both Rust types. (Its own
//! test binary, since the registry is global to a binary.)

use queue::{Runner, RunnerError};
use queue_tests::{test_job, TestDb};

mod mail {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    pub(crate) struct Notify;
    queue_tests::test_job!(
        Notify,
        "notify",
        queue = "default",
        context = (),
        [],
        |self, ctx, db| { Ok(()) }
    );
}

mod chat {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    pub(crate) struct Notify {
        pub(crate) channel: String,
    }
    queue_tests::test_job!(
        Notify,
        "notify",
        queue = "chat",
        context = (),
        [],
        |self, ctx, db| { Ok(()) }
    );
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Unrelated;
test_job!(
    Unrelated,
    "unrelated",
    queue = "other",
    context = (),
    [],
    |self, ctx, db| { Ok(()) }
);

#[test]
fn a_runner_refuses_to_start_when_two_jobs_claim_the_same_name_and_names_both() {
    let db = TestDb::create();
    // Even a runner serving neither queue: the stored name is ambiguous for all.
    let error = Runner::builder(())
        .database_url(db.url())
        .queue("other", 1)
        .build()
        .unwrap_err();
    let RunnerError::DuplicateJobType {
        job_type,
        first,
        second,
    } = &error
    else {
        panic!("expected DuplicateJobType, got {error}");
    };
    assert_eq!(job_type, "notify");
    assert_eq!(
        (*first, *second),
        (
            "duplicate_names::chat::Notify",
            "duplicate_names::mail::Notify"
        )
    );
    let message = error.to_string();
    assert!(
        message.contains("`duplicate_names::chat::Notify` and `duplicate_names::mail::Notify`"),
        "{message}"
    );
}
