//! One job, enqueued in the application's transaction and run by a worker.

use std::sync::mpsc::{channel, Sender};
use std::time::Duration;

use diesel::prelude::*;
use skiplock::{background_job, Job, PerformError, Runner};

/// A job is an ordinary function: `greet(name)` builds it, `.enqueue(conn)` stores it.
/// `&Sender<String>` is the runner's context, shared by its jobs; `name` is stored as JSON.
#[background_job]
fn greet(greeted: &Sender<String>, name: String) -> Result<(), PerformError> {
    println!("Hello, {name}!");
    greeted.send(name)?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut conn = PgConnection::establish(&url)?;
    skiplock::migrate(&mut conn)?; // creates or upgrades the queue's tables

    // Enqueue in the application's own transaction: stored with its data, or not at all.
    conn.transaction(|conn| greet("Ferris".into()).enqueue(conn))?;

    // Workers: one thread here; in production, as many processes as you like.
    let (sender, greeted) = channel::<String>();
    let runner = Runner::builder(sender)
        .database_url(&url)
        .queue("default", 1)
        .build()?;
    let running = runner.start();
    println!("greeted {}", greeted.recv_timeout(Duration::from_secs(10))?);
    running.shutdown(Duration::from_secs(10));
    Ok(())
}
