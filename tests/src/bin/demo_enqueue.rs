//! Enqueues `resize` jobs of the example application and exits, without a
//! runner or a context: `demo-enqueue DATABASE_URL IMAGE...`. Prints the ids.

use diesel::{Connection, PgConnection};
use skiplock::Job;
use skiplock_examples::images::resize;

fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .expect("usage: demo-enqueue DATABASE_URL IMAGE...");
    let mut conn = PgConnection::establish(&url).expect("connect");
    for image in args {
        let id = resize(image)
            .enqueue(&mut conn)
            .expect("enqueue")
            .id()
            .expect("stored");
        println!("{id}");
    }
}
