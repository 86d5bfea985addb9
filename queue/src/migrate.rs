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
/// Idempotent and safe to run from several processes at once: the migrations
/// run in one transaction under an advisory lock, and a schema that is
/// already up to date is left untouched. Each applied version is recorded in
/// `queue_schema_migrations`, so a later release upgrades a live table in place.
///
/// ```no_run
/// # use diesel::prelude::*;
/// let mut conn = PgConnection::establish("postgres://postgres@127.0.0.1/app")?;
/// let report = skiplock::migrate(&mut conn)?;
/// println!("queue schema at version {}", report.current_version);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn migrate(conn: &mut PgConnection) -> Result<MigrationReport, MigrationError> {
    conn.transaction(|conn| {
        storage::lock_for_migration(conn)?;
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
    })
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
        // Always transactional: we are already inside `migrate`'s transaction,
        // so this is a savepoint.
        self.conn.transaction(|conn| -> HarnessResult<()> {
            migration.run(conn)?;
            storage::record_migration(conn, &version.to_string())?;
            Ok(())
        })?;
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
