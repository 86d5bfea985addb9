//! A registry's side of the index jobs, as the demos keep it: a table of
//! published versions, the [`RegistryRecords`] that reads it, and the
//! publish and yank handlers that change it and enqueue the index sync in
//! the same transaction.

use diesel::prelude::*;
use diesel::sql_types::{Bool, Text};
use index_jobs::{cargo_key, sync_crate, IndexVersion, RegistryRecords};
use skiplock::{BoxError, Enqueued, Job};

/// The registry's table: one row per published version, its index line
/// as published, and whether it is yanked.
pub const VERSIONS_TABLE: &str = "CREATE TABLE versions ( \
    id BIGSERIAL PRIMARY KEY, crate_name TEXT NOT NULL, num TEXT NOT NULL, \
    line JSONB NOT NULL, yanked BOOLEAN NOT NULL DEFAULT false, \
    UNIQUE (crate_name, num))";

/// The index reads what it should say from the `versions` table.
#[derive(Debug, Clone, Copy, Default)]
pub struct Records;

impl RegistryRecords for Records {
    fn versions(&self, conn: &mut PgConnection, name: &str) -> Result<Vec<IndexVersion>, BoxError> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            line: String,
            #[diesel(sql_type = Bool)]
            yanked: bool,
        }
        let rows: Vec<Row> = diesel::sql_query(
            "SELECT line::text AS line, yanked FROM versions \
             WHERE lower(replace(crate_name, '_', '-')) = $1 ORDER BY id",
        )
        .bind::<Text, _>(cargo_key(name))
        .load(conn)?;
        rows.into_iter()
            .map(|row| {
                let mut version: IndexVersion = serde_json::from_str(&row.line)?;
                version.yanked = row.yanked;
                Ok(version)
            })
            .collect()
    }
}

/// The publish handler: validates the version for the index, records it
/// and enqueues the crate's sync, in one transaction. Says whether a sync
/// was stored (one already waiting will write this version too).
pub fn publish(conn: &mut PgConnection, version: &IndexVersion) -> Result<Enqueued, BoxError> {
    version.validate()?;
    conn.transaction(|conn| {
        diesel::sql_query(
            "INSERT INTO versions (crate_name, num, line) VALUES ($1, $2, $3::jsonb)",
        )
        .bind::<Text, _>(&version.name)
        .bind::<Text, _>(&version.vers)
        .bind::<Text, _>(serde_json::to_string(version)?)
        .execute(conn)?;
        Ok(sync_crate(version.name.clone()).enqueue(conn)?)
    })
}

/// The yank and unyank handler.
pub fn set_yanked(
    conn: &mut PgConnection,
    name: &str,
    num: &str,
    yanked: bool,
) -> Result<Enqueued, BoxError> {
    conn.transaction(|conn| {
        let changed =
            diesel::sql_query("UPDATE versions SET yanked = $3 WHERE crate_name = $1 AND num = $2")
                .bind::<Text, _>(name)
                .bind::<Text, _>(num)
                .bind::<Bool, _>(yanked)
                .execute(conn)?;
        if changed == 0 {
            return Err(format!("no version {num} of `{name}`").into());
        }
        Ok(sync_crate(name.to_owned()).enqueue(conn)?)
    })
}

/// A new bare index upstream at `dir/index.git` (downloads from a made-up
/// host), for the index examples.
pub fn local_upstream(dir: &std::path::Path) -> Result<std::path::PathBuf, git2::Error> {
    let upstream = dir.join("index.git");
    let config = index_jobs::IndexConfig {
        dl: "https://crates.example/api/v1/crates".into(),
        api: None,
    };
    index_jobs::create_bare_index(&upstream, &config, "master")?;
    Ok(upstream)
}
