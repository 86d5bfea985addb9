//! What a signup sets off.

use std::sync::atomic::Ordering;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use skiplock::{background_job, PerformError};

use crate::App;

/// Mails a new user; reads and marks the user on the job's own pooled connection.
#[background_job(queue = "mail")]
pub fn send_welcome_mail(
    app: &App,
    conn: &mut PgConnection,
    user_id: i64,
) -> Result<(), PerformError> {
    #[derive(QueryableByName)]
    struct Email {
        #[diesel(sql_type = Text)]
        email: String,
    }
    let user: Email =
        diesel::sql_query("UPDATE users SET welcomed = true WHERE id = $1 RETURNING email")
            .bind::<BigInt, _>(user_id)
            .get_result(conn)?;
    app.say(format!("send_welcome_mail: mailed {}", user.email));
    Ok(())
}

/// Counts a signup on the transaction that holds the job's lock: the count
/// and the job's completion commit together, exactly once.
#[background_job(transaction)]
pub fn count_signup(app: &App, conn: &mut PgConnection) -> Result<(), diesel::result::Error> {
    diesel::sql_query("UPDATE stats SET signups = signups + 1").execute(conn)?;
    app.say("count_signup: stats.signups += 1 (commits with the job)");
    Ok(())
}

/// Pushes the user to a CRM that is down at first: fails once, then succeeds.
#[background_job(backoff = "1s")]
pub fn sync_to_crm(app: &App, user_id: i64) -> Result<(), PerformError> {
    if app.crm_calls.fetch_add(1, Ordering::SeqCst) == 0 {
        app.say("sync_to_crm: CRM answered 503, retry after the backoff");
        return Err(PerformError::msg("CRM answered 503 Service Unavailable"));
    }
    app.say(format!("sync_to_crm: user {user_id} synced"));
    Ok(())
}
