//! Image work.

use diesel::prelude::*;
use diesel::sql_types::{Integer, Text};
use skiplock::{background_job, PerformError};

use crate::App;

/// Makes a thumbnail, recording which process made it.
#[background_job(queue = "images")]
pub fn resize(app: &App, conn: &mut PgConnection, image: String) -> Result<(), PerformError> {
    diesel::sql_query("INSERT INTO thumbnails (image, pid) VALUES ($1, $2)")
        .bind::<Text, _>(&image)
        .bind::<Integer, _>(std::process::id() as i32)
        .execute(conn)?;
    app.say(format!("resize: {image}"));
    Ok(())
}
