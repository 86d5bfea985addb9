//! Two crates register jobs under the same stored name: no runner starts in
//! a binary that links both, and the error names both Rust types. (Its own
//! test binary, since the registry is global to a binary.)

use skiplock::{Runner, RunnerError};
use skiplock_tests::TestDb;

#[test]
fn a_runner_refuses_to_start_when_two_crates_register_the_same_job_name_and_names_both() {
    // Both crates are linked: a binary that enqueues both kinds of jobs.
    let _ = (
        mail_notify::notify_by_mail("ada@example.com".into()),
        chat_notify::notify_in_chat("#ops".into()),
    );
    let db = TestDb::create();
    // Even a runner serving neither job's queue: the stored name is ambiguous for all.
    let error = Runner::builder(())
        .database_url(db.url())
        .queue("elsewhere", 1)
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
            "chat_notify::NotifyInChatJob",
            "mail_notify::NotifyByMailJob"
        )
    );
    let message = error.to_string();
    assert!(
        message.contains("`chat_notify::NotifyInChatJob` and `mail_notify::NotifyByMailJob`"),
        "{message}"
    );
}
