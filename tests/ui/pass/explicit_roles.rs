//! Where the type alone does not show a parameter's role, `#[job(..)]` says it.

use skiplock::{background_job, Job, PerformError};

mod db {
    pub type Conn = diesel::PgConnection;
}

/// A context type that happens to be called `PgConnection`.
pub struct PgConnection;

#[background_job]
fn via_alias(#[job(connection)] conn: &mut db::Conn, id: i64) -> Result<(), PerformError> {
    let _ = (conn, id);
    Ok(())
}

#[background_job]
fn oddly_named_context(#[job(context)] ctx: &PgConnection) -> Result<(), PerformError> {
    let _ = ctx;
    Ok(())
}

fn main() {
    let _: &dyn Fn(&()) = &|_: &<ViaAliasJob as Job>::Context| {};
    let _: &dyn Fn(&PgConnection) = &|_: &<OddlyNamedContextJob as Job>::Context| {};
    let _ = (via_alias(1), oddly_named_context());
}
