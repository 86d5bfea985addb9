//! Embedded schema migrations, recorded in a table of their own.
//!
//! The applied versions live in `queue_schema_migrations`, not in diesel's
//! `__diesel_schema_migrations`, so an application that manages its own schema
//! with diesel never sees (or reverts) the queue's migrations, and the other
//! way round.

use diesel::migration::{Migration, MigrationVersion};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::errors::MigrationError;
use crate::storage;

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions applied by this call, oldest first. Empty when the schema was
    /// already up to date.
    pub applied: Vec<String>,
    /// The schema version now in place (the newest applied migration).
    pub current_version: String,
}

/// Creates or upgrades the queue's tables in the database behind `conn`.
///
/// Idempotent and safe to run from several processes at once (an advisory
/// lock makes them take turns), and a schema that is already up to date is
/// left untouched. Each applied version is recorded in
/// `queue_schema_migrations`, so a later release upgrades a live table in
/// place, without stopping enqueues and claims for more than a moment:
///
/// - each migration runs in a transaction of its own, which waits at most
///   300 ms for a lock (an `ALTER TABLE` queued behind a long transaction
///   would otherwise hold up every enqueue behind it); when it times out,
///   it is tried again, up to 100 times, logged at each try;
/// - no migration rewrites the table: columns are added with constant
///   defaults, backfills take row locks only, and the jobs table's indexes
///   are built and dropped `CONCURRENTLY`, outside any transaction.
///
/// Call it outside a transaction of your own (a concurrent index build
/// cannot run inside one).
///
/// ```no_run
/// # use diesel::prelude::*;
/// let mut conn = PgConnection::establish("postgres://postgres@127.0.0.1/app")?;
/// let report = skiplock::migrate(&mut conn)?;
/// println!("queue schema at version {}", report.current_version);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn migrate(conn: &mut PgConnection) -> Result<MigrationReport, MigrationError> {
    storage::lock_for_migration(conn)?;
    let result = run_pending(conn);
    // The lock is the session's: released whatever happened.
    let unlocked = storage::unlock_after_migration(conn);
    let report = result?;
    unlocked?;
    Ok(report)
}

/// How long a migration's statement waits for a lock before it gives up
/// and is tried again.
pub(crate) const MIGRATION_LOCK_TIMEOUT: std::time::Duration =
    std::time::Duration::from_millis(300);

/// How many times a migration is tried while its locks time out.
pub(crate) const MIGRATION_TRIES: u32 = 100;

fn run_pending(conn: &mut PgConnection) -> Result<MigrationReport, MigrationError> {
    let mut harness = QueueHarness { conn };
    let applied = harness
        .run_pending_migrations(MIGRATIONS)
        .map_err(MigrationError::Migration)?
        .into_iter()
        .map(|v| v.to_string())
        .collect();
    let current_version = harness
        .applied_migrations()
        .map_err(MigrationError::Migration)?
        .into_iter()
        .map(|v| v.to_string())
        .max()
        .unwrap_or_default();
    Ok(MigrationReport {
        applied,
        current_version,
    })
}

/// Whether a migration failed because a lock wait timed out.
fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.to_string().contains("lock timeout") {
            return true;
        }
        cause = error.source();
    }
    false
}

/// Runs `attempt` until it does not time out on a lock (at most
/// [`MIGRATION_TRIES`] times), waiting a little longer between tries.
fn with_retries(
    version: &MigrationVersion<'_>,
    mut attempt: impl FnMut() -> HarnessResult<()>,
) -> HarnessResult<()> {
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt() {
            Err(error) if tries < MIGRATION_TRIES && timed_out(error.as_ref()) => {
                let wait = std::time::Duration::from_millis(50 * u64::from(tries.min(20)));
                tracing::warn!(%version, tries, retry_in_ms = wait.as_millis() as u64,
                    "a queue migration waited too long for a lock another transaction holds; \
                     trying again");
                std::thread::sleep(wait);
            }
            other => return other,
        }
    }
}

/// Runs the embedded migrations against the queue's own version table.
struct QueueHarness<'a> {
    conn: &'a mut PgConnection,
}

type HarnessResult<T> = diesel::migration::Result<T>;

impl MigrationHarness<Pg> for QueueHarness<'_> {
    fn run_migration(
        &mut self,
        migration: &dyn Migration<Pg>,
    ) -> HarnessResult<MigrationVersion<'static>> {
        let version = migration.name().version().as_owned();
        let conn = &mut *self.conn;
        if migration.metadata().run_in_transaction() {
            with_retries(&version, || {
                conn.transaction(|conn| -> HarnessResult<()> {
                    storage::limit_lock_wait(conn, MIGRATION_LOCK_TIMEOUT)?;
                    migration.run(conn)?;
                    storage::record_migration(conn, &version.to_string())?;
                    Ok(())
                })
            })?;
        } else {
            // One statement that cannot run in a transaction (an index
            // built or dropped concurrently, which takes no lock that stops
            // writes, and waits for older transactions as long as they
            // run): idempotent, so recorded after.
            migration.run(conn)?;
            storage::record_migration(conn, &version.to_string())?;
        }
        Ok(version)
    }

    fn revert_migration(
        &mut self,
        migration: &dyn Migration<Pg>,
    ) -> HarnessResult<MigrationVersion<'static>> {
        let version = migration.name().version().as_owned();
        self.conn.transaction(|conn| -> HarnessResult<()> {
            migration.revert(conn)?;
            storage::forget_migration(conn, &version.to_string())?;
            Ok(())
        })?;
        Ok(version)
    }

    fn applied_migrations(&mut self) -> HarnessResult<Vec<MigrationVersion<'static>>> {
        Ok(storage::applied_migrations(self.conn)?
            .into_iter()
            .map(MigrationVersion::from)
            .collect())
    }
}
