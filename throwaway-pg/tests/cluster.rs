//! A throwaway cluster from the installed binaries: it serves, it goes away,
//! and it is what `Server::choose` falls back to when nothing answers.

use std::net::{SocketAddr, TcpListener, TcpStream};

use diesel::prelude::*;
use diesel::sql_types::Text;
use throwaway_pg::{Binaries, Cluster, Server};

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    value: String,
}

fn query(url: &str, sql: &str) -> String {
    let mut conn = PgConnection::establish(url).expect("connect");
    diesel::sql_query(sql)
        .get_result::<Row>(&mut conn)
        .expect("query")
        .value
}

/// An address where nothing listens.
fn closed_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

#[test]
fn a_throwaway_cluster_serves_and_is_gone_when_dropped() {
    let cluster = Cluster::start().expect("a cluster from the installed binaries");
    let url = cluster.url().to_owned();
    let dir = cluster.dir().to_owned();
    assert_eq!(
        query(&url, "SELECT current_user::text AS value"),
        "postgres"
    );
    assert_eq!(
        query(&url, "SELECT current_setting('server_encoding') AS value"),
        "UTF8"
    );
    let mut conn = PgConnection::establish(&url).unwrap();
    diesel::sql_query("CREATE DATABASE made_here")
        .execute(&mut conn)
        .unwrap();
    drop(conn);
    let made = throwaway_pg::with_database(&url, "made_here");
    assert_eq!(
        query(&made, "SELECT current_database()::text AS value"),
        "made_here"
    );
    let port = cluster.port();
    drop(cluster);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the server still listens on {port}"
    );
    assert!(!dir.exists(), "{} is left behind", dir.display());
}

#[test]
fn with_nothing_at_the_default_address_a_throwaway_cluster_serves() {
    let nowhere = closed_address();
    let default_url = format!("postgres://postgres@{nowhere}/test");
    let server = Server::choose(None, &default_url, nowhere).unwrap();
    assert!(matches!(server, Server::Throwaway(_)), "{server:?}");
    assert_eq!(
        query(server.url(), "SELECT 'served'::text AS value"),
        "served"
    );
}

#[test]
fn a_given_url_wins_and_a_listening_default_is_used_as_it_is() {
    let given = "postgres://someone@192.0.2.1:1/app".to_owned();
    let server = Server::choose(Some(given.clone()), "unused", closed_address()).unwrap();
    assert!(matches!(&server, Server::Url(url) if *url == given));

    let listening = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listening.local_addr().unwrap();
    let default_url = format!("postgres://postgres@{address}/test");
    let server = Server::choose(None, &default_url, address).unwrap();
    assert!(matches!(&server, Server::Url(url) if *url == default_url));
}

#[test]
fn without_server_binaries_the_error_says_in_one_line_what_to_install() {
    let empty = tempfile::tempdir().unwrap();
    let error = Binaries::find_in([empty.path().to_owned()]).unwrap_err();
    let message = error.to_string();
    assert!(!message.contains('\n'), "{message}");
    // What `fn main() -> Result<..>` prints: the message, not a struct.
    assert_eq!(format!("{error:?}"), message);
    assert!(message.contains("apt-get install postgresql"), "{message}");
    assert!(
        message.contains(&empty.path().display().to_string()),
        "{message}"
    );
}
