//! The dashboard's sign-ins (`queue_dashboard_sessions`): keyed by the
//! SHA-256 of the cookie's value, tied to the SHA-256 of the token.

use diesel::prelude::*;
use diesel::sql_types::{Bytea, Double};

/// Stores a sign-in that lasts `lifetime_secs`, and removes the expired
/// ones (few: one row per sign-in).
pub(crate) fn start_session(
    conn: &mut PgConnection,
    id_hash: &[u8],
    token_hash: &[u8],
    lifetime_secs: f64,
) -> QueryResult<()> {
    diesel::sql_query(
        "WITH expired AS (DELETE FROM queue_dashboard_sessions WHERE expires_at <= now()) \
         INSERT INTO queue_dashboard_sessions (id_hash, token_hash, expires_at) \
         VALUES ($1, $2, now() + make_interval(secs => $3))",
    )
    .bind::<Bytea, _>(id_hash)
    .bind::<Bytea, _>(token_hash)
    .bind::<Double, _>(lifetime_secs)
    .execute(conn)?;
    Ok(())
}

/// Whether the sign-in is stored, signed in with this token, and not
/// expired.
pub(crate) fn session_is_live(
    conn: &mut PgConnection,
    id_hash: &[u8],
    token_hash: &[u8],
) -> QueryResult<bool> {
    #[derive(QueryableByName)]
    struct Live {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        live: bool,
    }
    let row: Live = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM queue_dashboard_sessions \
                         WHERE id_hash = $1 AND token_hash = $2 AND expires_at > now()) AS live",
    )
    .bind::<Bytea, _>(id_hash)
    .bind::<Bytea, _>(token_hash)
    .get_result(conn)?;
    Ok(row.live)
}

/// Ends a sign-in.
pub(crate) fn end_session(conn: &mut PgConnection, id_hash: &[u8]) -> QueryResult<()> {
    diesel::sql_query("DELETE FROM queue_dashboard_sessions WHERE id_hash = $1")
        .bind::<Bytea, _>(id_hash)
        .execute(conn)?;
    Ok(())
}
