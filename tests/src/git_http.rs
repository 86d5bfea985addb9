//! A git server over HTTP that asks for a user and password: git's own
//! `git http-backend` (the CGI program web servers run for smart HTTP),
//! behind a server of the test's own that checks Basic authentication and
//! records what each request sent.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use base64::Engine;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// Method and URL (path and query).
    pub line: String,
    /// The `Authorization` header, decoded: `user:password`, if sent.
    pub login: Option<String>,
    /// The status answered.
    pub status: u16,
}

/// The running server (for the life of the test process).
#[derive(Debug, Clone)]
pub struct GitHttpServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
}

impl GitHttpServer {
    /// Serves the repositories under `root` (`http://127.0.0.1:PORT/NAME`),
    /// fetch and push, to requests that log in as `user` with `password`;
    /// others get 401.
    pub fn start(root: PathBuf, user: &str, password: &str) -> GitHttpServer {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("listen");
        let port = server.server_addr().to_ip().expect("ip").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let expected = format!("{user}:{password}");
        let user = user.to_owned();
        let log = seen.clone();
        std::thread::spawn(move || {
            for request in server.incoming_requests() {
                let login = request
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("Authorization"))
                    .and_then(|h| h.value.as_str().strip_prefix("Basic ").map(str::to_owned))
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                    .map(|b| String::from_utf8_lossy(&b).into_owned());
                let line = format!("{} {}", request.method(), request.url());
                let status = if login.as_deref() == Some(expected.as_str()) {
                    cgi(&root, &user, request)
                } else {
                    let header =
                        tiny_http::Header::from_bytes("WWW-Authenticate", "Basic realm=\"index\"")
                            .expect("header");
                    let _ = request.respond(tiny_http::Response::empty(401).with_header(header));
                    401
                };
                log.lock().expect("log").push(SeenRequest {
                    line,
                    login,
                    status,
                });
            }
        });
        GitHttpServer { port, seen }
    }

    /// The requests so far.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.seen.lock().expect("log").clone()
    }
}

/// Runs `git http-backend` for one request; returns the status it answered.
fn cgi(root: &std::path::Path, user: &str, mut request: tiny_http::Request) -> u16 {
    let url = request.url().to_owned();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let mut body = Vec::new();
    let _ = request.as_reader().read_to_end(&mut body);
    let content_type = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Content-Type"))
        .map(|h| h.value.as_str().to_owned())
        .unwrap_or_default();
    let mut child = Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", request.method().as_str())
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", content_type)
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_USER", user)
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("git http-backend");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&body);
    });
    let mut output = Vec::new();
    let _ = child
        .stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut output);
    let _ = writer.join();
    let _ = child.wait();
    // CGI: headers, a blank line, the body.
    let split = output
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| (at, 4))
        .or_else(|| {
            output
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|at| (at, 2))
        });
    let Some((at, gap)) = split else {
        let _ = request.respond(tiny_http::Response::empty(500));
        return 500;
    };
    let head = String::from_utf8_lossy(&output[..at]).into_owned();
    let mut status = 200;
    let mut headers = Vec::new();
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("Status") {
            status = value
                .split_whitespace()
                .next()
                .and_then(|code| code.parse().ok())
                .unwrap_or(500);
        } else if let Ok(header) = tiny_http::Header::from_bytes(name, value) {
            headers.push(header);
        }
    }
    let body = output[at + gap..].to_vec();
    let mut response = tiny_http::Response::from_data(body).with_status_code(status);
    for header in headers {
        response.add_header(header);
    }
    let _ = request.respond(response);
    status
}
