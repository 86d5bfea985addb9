//! The `skiplock` command end to end: a real process against a real database
//! holding ready, scheduled, failing and dead jobs.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use skiplock_tests::TestDb;

fn queue_cmd(db_url: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_skiplock"))
        .args(args)
        .env("DATABASE_URL", db_url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn run(db: &TestDb, args: &[&str]) -> (i32, String, String) {
    let out = queue_cmd(db.url(), args, "");
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// A queue with one job in each state; returns (ready, scheduled, failing, dead) ids.
fn prepared_queue(db: &TestDb, failing_for: &str) -> (i64, i64, i64, i64) {
    db.execute(&format!(
        "INSERT INTO queue_jobs (id, job_type, queue, payload) VALUES (1, 'send_mail', 'mail', '{{\"to\": \"ada@example.com\"}}'); \
         INSERT INTO queue_jobs (id, job_type, queue, payload, run_at, scheduled) \
             VALUES (2, 'send_mail', 'mail', '{{}}', now() + interval '1 hour', true); \
         INSERT INTO queue_jobs (id, job_type, queue, payload, run_at, scheduled, attempts, first_failed_at, last_failed_at, last_error) \
             VALUES (3, 'sync_crm', 'default', '{{}}', now() + interval '5 minutes', true, 2, now() - interval '{failing_for}', now(), \
                     'CRM answered 503 Service Unavailable: the upstream is down for maintenance until further notice, retry later'); \
         INSERT INTO queue_jobs (id, job_type, queue, payload, attempts, first_failed_at, last_failed_at, last_error, dead_at) \
             VALUES (4, 'charge_card', 'default', '{{\"cents\": 100}}', 1, now(), now(), 'card declined', now()); \
         SELECT setval('queue_jobs_id_seq', 10); \
         INSERT INTO queue_runners (id, hostname, pid, queues) VALUES ('r1', 'host-a', 42, '{{mail,default}}');"
    ));
    (1, 2, 3, 4)
}

#[test]
fn read_commands_show_each_state_as_tables_and_json() {
    let db = TestDb::create();
    prepared_queue(&db, "20 minutes");

    let (code, out, _) = run(&db, &["status"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("QUEUE") && lines[0].contains("OLDEST READY"),
        "{out}"
    );
    assert!(
        out.contains("charge_card") && out.contains("send_mail") && out.contains("sync_crm"),
        "{out}"
    );

    let (code, json, _) = run(&db, &["status", "--json"]);
    assert_eq!(code, 0);
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    let row = |t: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["job_type"] == t)
            .unwrap()
            .clone()
    };
    assert_eq!(
        (
            row("send_mail")["ready"].as_i64(),
            row("send_mail")["scheduled"].as_i64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(row("sync_crm")["failing"], 1);
    assert_eq!(row("charge_card")["dead"], 1);
    assert!(row("send_mail")["oldest_ready_secs"].as_f64().unwrap() >= 0.0);

    let (code, out, _) = run(&db, &["failed"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("sync_crm") && out.contains("CRM answered 503") && out.contains('…'),
        "{out}"
    );
    assert!(
        !out.contains("until further notice"),
        "shortened by default: {out}"
    );
    let (_, out, _) = run(&db, &["failed", "--verbose"]);
    assert!(out.contains("until further notice, retry later"), "{out}");

    let (code, json, _) = run(&db, &["dead", "--json"]);
    assert_eq!(code, 0);
    let dead: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(dead[0]["id"], 4);
    assert_eq!(dead[0]["last_error"], "card declined");

    let (code, out, _) = run(&db, &["show", "1"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("job 1 (queued)") && out.contains("\"to\": \"ada@example.com\""),
        "{out}"
    );
    let (code, json, _) = run(&db, &["show", "4", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&json).unwrap()["payload"]["cents"],
        100
    );

    let (code, out, _) = run(&db, &["runners"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("host-a") && out.contains("mail,default"),
        "{out}"
    );
}

#[test]
fn retry_and_discard_change_exactly_what_they_say() {
    let db = TestDb::create();
    prepared_queue(&db, "20 minutes");

    let (code, out, _) = run(&db, &["retry", "4"]);
    assert_eq!((code, out.trim()), (0, "retried 1 job(s)"));
    assert_eq!(
        db.count_jobs("id = 4 AND dead_at IS NULL AND attempts = 0 AND NOT scheduled"),
        1
    );
    assert_eq!(
        db.count_jobs("id = 3 AND attempts = 2"),
        1,
        "another job changed"
    );

    // A bulk change asks first; no answer changes nothing.
    let out = queue_cmd(db.url(), &["discard", "--type", "sync_crm"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("discard 1 job(s)? [y/N]"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing changed"));
    assert_eq!(db.count_jobs("true"), 4);
    let out = queue_cmd(db.url(), &["discard", "--type", "sync_crm"], "y\n");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(db.count_jobs("id = 3"), 0);
    assert_eq!(db.count_jobs("true"), 3);

    // --all selects failed jobs only: none left.
    let (code, out, _) = run(&db, &["retry", "--all", "--yes"]);
    assert_eq!((code, out.trim()), (0, "no matching job: nothing to retry"));
    assert_eq!(db.count_jobs("true"), 3);

    // Unknown ids are reported, the rest is done.
    let (code, out, err) = run(&db, &["discard", "2", "999"]);
    assert_eq!(code, 1);
    assert_eq!(out.trim(), "discarded 1 job(s)");
    assert!(err.contains("no job with id 999"), "{err}");
    assert_eq!(db.count_jobs("true"), 2);

    let (code, _, err) = run(&db, &["retry"]);
    assert_eq!(code, 1);
    assert!(err.contains("name the jobs to retry"), "{err}");
}

#[test]
fn bulk_retry_and_discard_change_a_thousand_jobs_a_statement() {
    let db = TestDb::create();
    db.execute(
        "INSERT INTO queue_jobs (job_type, queue, payload, attempts, first_failed_at, last_failed_at, last_error, dead_at) \
         SELECT 'sync_crm', CASE WHEN n % 2 = 0 THEN 'a' ELSE 'b' END, '{}', 3, now(), now() - n * interval '1 ms', 'down', \
                CASE WHEN n % 3 = 0 THEN now() END \
         FROM generate_series(1, 2500) n; \
         INSERT INTO queue_jobs (job_type, queue, payload) SELECT 'sync_crm', 'a', '{}' FROM generate_series(1, 10)",
    );
    // The database's commits, once every session has flushed its own (the
    // command's process has ended, which flushes them).
    let mut conn = db.conn();
    let mut commits = || {
        diesel::connection::SimpleConnection::batch_execute(
            &mut conn,
            "SELECT pg_stat_force_next_flush()",
        )
        .unwrap();
        skiplock_tests::count(
            &mut conn,
            "SELECT xact_commit AS n FROM pg_stat_database WHERE datname = current_database()",
        )
    };
    let before = commits();
    let (code, out, _) = run(&db, &["retry", "--queue", "a", "--yes"]);
    assert_eq!((code, out.trim()), (0, "retried 1250 job(s)"));
    let after = commits();
    // One job per transaction would be 1,250 of them.
    assert!(after - before < 60, "{} transactions", after - before);
    assert_eq!(
        db.count_jobs("queue = 'a' AND attempts = 0 AND dead_at IS NULL AND NOT scheduled"),
        1_260
    );
    let out = queue_cmd(db.url(), &["discard", "--all"], "y\n");
    assert!(String::from_utf8_lossy(&out.stdout).contains("discard 1250 job(s)? [y/N]"));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(db.count_jobs("true"), 1_260);
}

#[test]
fn monitor_exits_0_1_or_2_with_a_summary_line_fit_for_a_page() {
    // Healthy: a fresh ready job, a live runner.
    let db = TestDb::create();
    db.execute(
        "INSERT INTO queue_jobs (job_type, queue, payload) VALUES ('send_mail', 'mail', '{}'); \
         INSERT INTO queue_runners (id, hostname, pid, queues) VALUES ('r1', 'h', 1, '{mail}')",
    );
    let (code, out, _) = run(&db, &["monitor"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("OK: 1 ready"), "{out}");

    // Warning: a job failing for 20 minutes (warn at 10 m, page at 1 h).
    db.execute(
        "INSERT INTO queue_jobs (job_type, queue, payload, attempts, first_failed_at, scheduled, run_at) \
         VALUES ('sync_crm', 'mail', '{}', 3, now() - interval '20 minutes', true, now() + interval '1 minute')",
    );
    let (code, out, _) = run(&db, &["monitor"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("WARNING: `sync_crm` on `mail` has been failing for 20m"),
        "{out}"
    );
    let (code, _, _) = run(&db, &["monitor", "--failing-warning", "30m"]);
    assert_eq!(code, 0, "thresholds come from flags");

    // Critical: a dead job.
    db.execute(
        "INSERT INTO queue_jobs (job_type, queue, payload, attempts, dead_at, last_error) \
         VALUES ('charge_card', 'mail', '{}', 1, now(), 'declined')",
    );
    let (code, out, _) = run(&db, &["monitor", "--json"]);
    assert_eq!(code, 2, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["level"], "critical");
    assert!(report["summary"]
        .as_str()
        .unwrap()
        .starts_with("CRITICAL: 1 dead job(s): charge_card"));

    // Critical: ready jobs and no runner alive; a long-running job is not "waiting".
    let db = TestDb::create();
    db.execute(
        "INSERT INTO queue_jobs (id, job_type, queue, payload, run_at) VALUES (1, 'reindex', 'index', '{}', now() - interval '2 hours'); \
         INSERT INTO queue_runners (id, hostname, pid, queues, running) VALUES ('r1', 'h', 1, '{index}', '{1}')",
    );
    let (code, out, _) = run(&db, &["monitor"]);
    assert_eq!(
        code, 0,
        "a job running for 2 hours is running, not waiting: {out}"
    );
    db.execute("UPDATE queue_runners SET last_seen_at = now() - interval '10 minutes'");
    let (code, out, _) = run(&db, &["monitor"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("no runner serving `index` was seen in the last 5m00s"),
        "{out}"
    );
}

#[test]
fn bad_input_gives_a_clear_message_and_a_nonzero_exit_without_changing_anything() {
    let db = TestDb::create();
    prepared_queue(&db, "1 minute");

    let (code, _, err) = run(&db, &["show", "12345"]);
    assert_eq!(code, 1);
    assert_eq!(err.trim(), "skiplock: no job with id 12345");

    let out = queue_cmd("postgres://nobody:s3cret@127.0.0.1:1/none", &["status"], "");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot connect to the database at postgres://nobody:***@127.0.0.1:1/none"),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");

    let out = queue_cmd("not a url", &["status"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect to the database"));

    let out = queue_cmd("postgres://nobody@127.0.0.1:1/none", &["monitor"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("CRITICAL: cannot check the queue"));

    let empty = TestDb::create_empty();
    for command in [
        &["status"][..],
        &["dead"],
        &["retry", "1"],
        &["discard", "--all", "--yes"],
    ] {
        let (code, _, err) = run(&empty, command);
        assert_eq!(code, 1, "{command:?}");
        assert!(
            err.contains("no queue schema") && err.contains("skiplock migrate"),
            "{err}"
        );
    }
    let (code, out, _) = run(&empty, &["migrate"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("applied 29 migration(s)"), "{out}");
    let (_, out, _) = run(&empty, &["migrate"]);
    assert!(out.starts_with("the queue schema is up to date"), "{out}");

    let (code, _, err) = run(&db, &["monitor", "--failing-warning", "ten minutes"]);
    assert_eq!(code, 2);
    assert!(err.contains("write a number and a unit"), "{err}");
    assert_eq!(db.count_jobs("true"), 4, "nothing changed");
}

/// A password that must never be printed.
const SECRET: &str = "hunter2-Sw0rdfish";

fn assert_no_secret(what: &str, out: &Output) {
    for text in [&out.stdout, &out.stderr] {
        let text = String::from_utf8_lossy(text);
        assert!(
            !text.contains(SECRET),
            "{what} printed the password: {text}"
        );
    }
}

#[test]
fn the_monitor_answers_within_10_s_when_the_server_accepts_and_never_answers() {
    // A server that accepts connections and never says a word.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    let url = format!("postgres://app:{SECRET}@127.0.0.1:{port}/queue");
    let started = std::time::Instant::now();
    let out = queue_cmd(&url, &["monitor"], "");
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(2));
    assert!(took < std::time::Duration::from_secs(10), "took {took:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("CRITICAL: cannot check the queue: cannot connect to the database"),
        "{stdout}"
    );
    assert!(stdout.contains("timeout"), "{stdout}");
    assert_no_secret("monitor", &out);
    // The timeout is the command's to choose.
    let started = std::time::Instant::now();
    let out = queue_cmd(&url, &["status", "--connect-timeout", "2s"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_no_secret("status", &out);
}

#[test]
fn no_password_appears_in_any_output_whatever_the_connection_string() {
    let malformed = [
        format!("postgres://postgres:{SECRET}@[::1/db"),
        format!("postgres://postgres:{SECRET}@127.0.0.1:1/db?sslmode=bogus"),
        format!("postgresql://u@127.0.0.1:1/db?password={SECRET}"),
        format!("host=127.0.0.1 port=1 password={SECRET} dbname=x"),
        format!("host=127.0.0.1 port=1 password='{SECRET}' dbname=x sslmode=bogus"),
        format!("host=127.0.0.1 port=1 password={SECRET} dbname=x bogus_key=1"),
    ];
    for url in &malformed {
        for command in [
            &["status"][..],
            &["monitor"],
            &["migrate"],
            &["dead"],
            &["web"],
        ] {
            let out = queue_cmd(url, command, "");
            assert_ne!(out.status.code(), Some(0), "{url} {command:?}");
            assert_no_secret(&format!("{command:?} with {url}"), &out);
            let all = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
            assert!(all.contains("cannot connect to the database"), "{all}");
        }
    }
    // `--help` names the variable, never its value.
    let out = queue_cmd(&malformed[0], &["--help"], "");
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("DATABASE_URL"));
    assert_no_secret("--help", &out);
    let out = queue_cmd(&malformed[0], &["monitor", "--help"], "");
    assert_no_secret("monitor --help", &out);
}

#[test]
fn threshold_flags_reject_out_of_range_values_with_a_clear_error() {
    let db = TestDb::create();
    for (flag, value) in [
        ("--failing-warning", "999999999999999999d"),
        ("--waiting-critical", "18446744073709551615s"),
        ("--no-runner", "11y"),
    ] {
        let (code, _, err) = run(&db, &["monitor", flag, value]);
        assert_eq!(code, 2, "{flag} {value}");
        assert!(
            err.contains("longer than ten years") || err.contains("too large"),
            "{flag} {value}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    let (code, _, err) = run(&db, &["monitor", "--failing-warning", "3650d"]);
    assert!(code <= 2 && !err.contains("error"), "{err}");
}

#[test]
fn pause_and_resume_a_queue_and_status_shows_it() {
    let db = TestDb::create();
    prepared_queue(&db, "1 minute");
    let (code, out, _) = run(&db, &["pause", "mail"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        "paused queue `mail`: running jobs finish, nothing new starts"
    );
    let (_, out, _) = run(&db, &["pause", "mail"]);
    assert_eq!(out.trim(), "queue `mail` was already paused");
    let (_, out, _) = run(&db, &["status"]);
    assert!(out.contains("mail (paused)"), "{out}");
    // No runner is alive here: no one registers the types.
    assert!(
        out.contains("no live runner registers `send_mail` on `mail`: its 2 job(s) wait"),
        "{out}"
    );
    assert!(out.contains("paused: mail since "), "{out}");
    let (_, json, _) = run(&db, &["status", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    for row in rows.as_array().unwrap() {
        assert_eq!(row["paused"], row["queue"] == "mail", "{row}");
    }
    let (code, out, _) = run(&db, &["resume", "mail"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "resumed queue `mail`");
    let (_, out, _) = run(&db, &["status"]);
    assert!(!out.contains("paused"), "{out}");
    let (code, _, err) = run(&db, &["pause", ""]);
    assert_eq!(code, 1);
    assert!(err.contains("the queue name is empty"), "{err}");
}

#[test]
fn the_monitor_warns_when_no_live_runner_registers_a_waiting_type() {
    let db = TestDb::create();
    // A live runner serves `mail` but registers only `send_digest`.
    db.execute(
        "INSERT INTO queue_runners (id, hostname, pid, queues, job_types) \
         VALUES ('r1', 'host', 1, '{mail}', '{send_digest}'); \
         INSERT INTO queue_jobs (job_type, queue, payload, run_at) \
         VALUES ('send_mail', 'mail', '{}', now() - interval '20 minutes')",
    );
    let (code, out, _) = run(
        &db,
        &[
            "monitor",
            "--waiting-warning",
            "1h",
            "--waiting-critical",
            "2h",
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with(
            "WARNING: `send_mail` on `mail`: no live runner registers this type; 1 job(s) waiting for 20m"
        ),
        "{out}"
    );
    let (code, out, _) = run(
        &db,
        &[
            "monitor",
            "--waiting-warning",
            "1h",
            "--waiting-critical",
            "2h",
            "--unregistered",
            "30m",
        ],
    );
    assert_eq!(code, 0, "{out}");
}

/// One HTTP/1.0 request to the dashboard; the status code and the body.
fn http(address: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let (status, _, body) = http_with(address, method, path, &[], body);
    (status, body)
}

/// A request with extra headers (`Host` defaults to the address); the
/// status, the response's headers and its body.
fn http_with(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    let mut head = String::new();
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        head.push_str(&format!("Host: {address}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\n{head}\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response[9..12].parse().unwrap();
    let (headers, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (status, headers.to_owned(), body.to_owned())
}

/// The value of the first `name="csrf"` field of a page.
fn csrf_of(page: &str) -> String {
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no form in {page}"))
        .to_owned()
}

/// Signs in to the dashboard at `address`; the session cookie (`name=value`)
/// and the Set-Cookie line.
fn sign_in(address: &str, token: &str) -> (String, String) {
    let (status, _, login) = http_with(address, "GET", "/login", &[], "");
    assert_eq!(status, 200, "{login}");
    let (status, headers, body) = http_with(
        address,
        "POST",
        "/login",
        &[],
        &format!("csrf={}&token={token}", csrf_of(&login)),
    );
    assert_eq!(status, 303, "{headers}{body}");
    let set_cookie = headers
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie in {headers}"))
        .to_owned();
    let cookie = set_cookie["set-cookie:".len()..]
        .trim()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    (cookie, set_cookie)
}

fn location(headers: &str) -> String {
    headers
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("location:"))
        .map(|l| l["location:".len()..].trim().to_owned())
        .unwrap_or_default()
}

/// Starts `skiplock web` on a free port; the process, its address and what it printed first.
fn start_web(
    url: &str,
    args: &[&str],
    token: Option<&str>,
) -> (std::process::Child, String, String) {
    use std::io::BufRead;
    let mut command = Command::new(env!("CARGO_BIN_EXE_skiplock"));
    command
        .args(["web", "--bind", "127.0.0.1:0"])
        .args(args)
        .env("DATABASE_URL", url)
        .env_remove("SKIPLOCK_WEB_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(token) = token {
        command.env("SKIPLOCK_WEB_TOKEN", token);
    }
    let mut child = command.spawn().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut printed = String::new();
    for _ in 0..2 {
        stdout.read_line(&mut printed).unwrap();
    }
    let address = printed
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no address in {printed:?}"))
        .to_owned();
    (child, address, printed)
}

#[test]
fn web_serves_the_dashboard_without_the_password_and_acts_only_for_the_token() {
    let db = TestDb::create();
    prepared_queue(&db, "20 minutes");
    // Trust authentication ignores the password; it must still never show.
    let url = db
        .url()
        .replacen("postgres@", &format!("postgres:{SECRET}@"), 1);
    assert!(url.contains(SECRET), "{url}");

    let (mut web, address, printed) = start_web(&url, &[], None);
    assert!(
        printed.contains("sign in to read and to act; the token"),
        "{printed}"
    );
    let token = printed.trim().rsplit(' ').next().unwrap().to_owned();
    assert_eq!(token.len(), 64, "{printed}");
    assert!(!printed.contains(SECRET));
    let (cookie, _) = sign_in(&address, &token);
    for path in [
        "/",
        "/jobs?state=failing",
        "/jobs?state=dead",
        "/jobs/3",
        "/runners",
    ] {
        // Signed out: the sign-in form, nothing else.
        let (status, headers, body) = http_with(&address, "GET", path, &[], "");
        assert_eq!(
            (status, location(&headers)),
            (303, "/login".into()),
            "{path}"
        );
        assert!(!body.contains("CRM"), "{path}: {body}");
        let (status, _, body) = http_with(&address, "GET", path, &[("Cookie", &cookie)], "");
        assert_eq!(status, 200, "{path}: {body}");
        assert!(!body.contains(SECRET), "{path} shows the password");
        assert!(!body.contains(&token), "{path} shows the token");
    }
    let (_, _, job) = http_with(&address, "GET", "/jobs/3", &[("Cookie", &cookie)], "");
    assert!(job.contains("CRM answered 503"), "{job}");
    // An action without signing in, or with a guessed form value, is refused.
    let (status, _) = http(&address, "POST", "/jobs/3/retry", "csrf=guess");
    assert_eq!(status, 403);
    let (status, _) = http(
        &address,
        "POST",
        "/login",
        &format!("csrf=guess&token={token}"),
    );
    assert_eq!(status, 403);
    assert_eq!(
        db.count_jobs("id = 3 AND attempts = 2"),
        1,
        "nothing changed"
    );
    let out = queue_cmd(&url, &["web", "--help"], "");
    assert_no_secret("web --help", &out);
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&token));
    unsafe { libc::kill(web.id() as i32, libc::SIGTERM) };
    assert!(web.wait().unwrap().success(), "stops cleanly on SIGTERM");

    // Read-only: signed in, the operator reads and cannot act.
    let (mut web, address, printed) = start_web(&url, &["--read-only"], Some("chosen-token"));
    assert!(
        printed.contains("read-only: sign in to read; no actions"),
        "{printed}"
    );
    assert!(!printed.contains("chosen-token"), "{printed}");
    let (cookie, _) = sign_in(&address, "chosen-token");
    let (_, _, page) = http_with(&address, "GET", "/", &[("Cookie", &cookie)], "");
    assert!(
        page.contains("read-only") && !page.contains("Sign in to act") && !page.contains("pause"),
        "{page}"
    );
    let (status, _, _) = http_with(
        &address,
        "POST",
        "/queues/mail/pause",
        &[("Cookie", &cookie)],
        &format!("csrf={}", csrf_of(&page)),
    );
    assert_eq!(status, 403);
    assert_eq!(db.count_jobs("true"), 4);
    web.kill().unwrap();
    let _ = web.wait();
}

#[test]
fn status_and_the_dashboard_show_each_schedule_with_its_last_and_next_tick() {
    let db = TestDb::create();
    prepared_queue(&db, "1 minute");
    // Runner `r1` (seen just now) declares `cleanup`; no one declares `old-report`.
    db.execute(
        "UPDATE queue_runners SET schedules = '{cleanup}'; \
         INSERT INTO queue_schedules (name, cron, time_zone, last_tick, next_tick) VALUES \
           ('cleanup', '0 */5 * * * *', 'UTC', '2026-11-27 10:00:00+00', '2026-11-27 10:05:00+00'), \
           ('old-report', '0 3 * * *', 'Europe/Paris', NULL, '2026-11-28 02:00:00+00')",
    );
    let (code, out, _) = run(&db, &["status"]);
    assert_eq!(code, 0);
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {out}"))
            .to_owned()
    };
    let cleanup = line("cleanup");
    assert!(
        cleanup.contains("0 */5 * * * *")
            && cleanup.contains("2026-11-27 10:00:00 UTC")
            && cleanup.contains("2026-11-27 10:05:00 UTC"),
        "{cleanup}"
    );
    let old = line("old-report");
    assert!(
        old.contains("Europe/Paris")
            && old.contains("never")
            && old.contains("stopped: no live runner declares it"),
        "{old}"
    );

    let (mut web, address, _) = start_web(db.url(), &["--read-only", "--public-read"], None);
    let (status, page) = http(&address, "GET", "/", "");
    assert_eq!(status, 200);
    assert!(page.contains("data-schedule=\"cleanup\""), "{page}");
    assert!(page.contains("2026-11-27T10:05:00+00:00"), "{page}");
    assert!(
        page.contains("stopped: no live runner declares it"),
        "{page}"
    );
    web.kill().unwrap();
    let _ = web.wait();
}

#[test]
fn status_and_runners_show_who_has_an_exclusive_queue_and_who_stands_by() {
    let db = TestDb::create();
    let start = || {
        skiplock::Runner::builder(())
            .database_url(db.url())
            .exclusive_queue("git")
            .poll_interval(std::time::Duration::from_millis(100))
            .build()
            .unwrap()
            .start()
    };
    let announced = |count: usize, standing_by: usize| {
        let mut conn = db.conn();
        skiplock_tests::wait_until(
            "the runners announce themselves",
            std::time::Duration::from_secs(10),
            || {
                let runners = skiplock::runners(&mut conn).unwrap();
                runners.len() == count
                    && runners.iter().filter(|r| !r.standby.is_empty()).count() == standing_by
                    && runners.iter().all(|r| r.exclusive == ["git"])
            },
        );
        skiplock::runners(&mut conn).unwrap()
    };
    let first = start();
    let first_id = announced(1, 0)[0].id.clone();
    let second = start();
    let runners = announced(2, 1);
    let second_id = runners
        .iter()
        .find(|r| r.id != first_id)
        .unwrap()
        .id
        .clone();
    let (code, out, _) = run(&db, &["status"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("exclusive queue `git`: run by {first_id} (host ")),
        "{out}"
    );
    assert!(
        out.contains("1 more runner(s) serve it and stand by (started twice?): ")
            && out.contains(&second_id),
        "{out}"
    );
    let (_, out, _) = run(&db, &["runners"]);
    let line = |id: &str| out.lines().find(|l| l.contains(id)).unwrap().to_owned();
    assert!(line(&first_id).contains("git (exclusive)"), "{out}");
    assert!(line(&second_id).contains("git (standby)"), "{out}");

    // The first stops: the second has the queue.
    first.shutdown(std::time::Duration::from_secs(10));
    announced(1, 0);
    let (_, out, _) = run(&db, &["status"]);
    assert!(
        out.contains(&format!("exclusive queue `git`: run by {second_id}")),
        "{out}"
    );
    assert!(!out.contains("stand by"), "{out}");
    second.shutdown(std::time::Duration::from_secs(10));
}

#[test]
fn reindex_gives_back_index_space_and_is_refused_while_a_transaction_holds_the_horizon() {
    use diesel::connection::SimpleConnection;
    let db = TestDb::create();
    let mut holder = db.conn();
    holder
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
        .unwrap();
    db.execute(
        "INSERT INTO queue_jobs (job_type, queue, payload) \
         SELECT 'ended', 'mail', 'null' FROM generate_series(1, 50000); \
         DELETE FROM queue_jobs",
    );
    std::thread::sleep(std::time::Duration::from_millis(1_200));
    let (code, out, err) = run(&db, &["reindex", "--wait", "1s"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.starts_with("skiplock: the database's xmin horizon is held back")
            && err.contains("idle in transaction"),
        "{err}"
    );
    holder.batch_execute("ROLLBACK").unwrap();
    let (code, out, err) = run(&db, &["reindex"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\nqueue_jobs_ready_idx "), "{out}");
    assert!(out.contains("rebuilt 8 index(es): "), "{out}");
    let (code, json, _) = run(&db, &["reindex", "--json"]);
    assert_eq!(code, 0);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    let ready = report["rebuilt"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "queue_jobs_ready_idx")
        .unwrap();
    // The second rebuild found the first one's small index.
    assert!(ready["bytes_before"].as_i64().unwrap() < 100_000, "{ready}");
}

#[test]
fn a_sign_in_is_a_session_of_its_own_that_expires_and_that_signing_out_ends_for_good() {
    let db = TestDb::create();
    prepared_queue(&db, "20 minutes");
    let (mut web, address, _) =
        start_web(db.url(), &["--session-lifetime", "4s"], Some("the-token"));
    let (first, set_cookie) = sign_in(&address, "the-token");
    assert!(
        set_cookie.contains("HttpOnly")
            && set_cookie.contains("SameSite=Strict")
            && set_cookie.contains("Max-Age=4")
            && !set_cookie.contains("Secure"),
        "{set_cookie}"
    );
    // Each sign-in is its own session; the database keeps their hashes,
    // never the cookie's value.
    let (second, _) = sign_in(&address, "the-token");
    assert_ne!(first, second);
    let value = first.split_once('=').unwrap().1;
    assert_eq!(
        skiplock_tests::count(
            &mut db.conn(),
            &format!(
                "SELECT count(*) AS n FROM queue_dashboard_sessions \
                 WHERE encode(id_hash, 'hex') = encode(sha256('{value}'::bytea), 'hex')"
            )
        ),
        1
    );
    assert_eq!(
        skiplock_tests::count(
            &mut db.conn(),
            &format!(
                "SELECT count(*) AS n FROM queue_dashboard_sessions \
                 WHERE position('{value}'::bytea in id_hash) > 0"
            )
        ),
        0
    );
    let (status, _, page) = http_with(&address, "GET", "/jobs/3", &[("Cookie", &first)], "");
    assert_eq!(status, 200);
    let csrf = csrf_of(&page);
    // Signing out ends the session on the server: the copied cookie,
    // replayed, neither reads nor acts.
    let (status, headers, _) = http_with(
        &address,
        "POST",
        "/logout",
        &[("Cookie", &first)],
        &format!("csrf={csrf}"),
    );
    assert_eq!(status, 303);
    assert!(headers.contains("Max-Age=0"), "{headers}");
    // A session that ended: its cookie neither reads nor retries.
    let assert_ended = |cookie: &str, csrf: &str| {
        let (status, headers, _) = http_with(&address, "GET", "/", &[("Cookie", cookie)], "");
        assert_eq!((status, location(&headers)), (303, "/login".into()));
        let (status, _, _) = http_with(
            &address,
            "POST",
            "/jobs/3/retry",
            &[("Cookie", cookie)],
            &format!("csrf={csrf}"),
        );
        assert_eq!(status, 403);
        assert_eq!(db.count_jobs("id = 3 AND attempts = 2"), 1, "not retried");
    };
    assert_ended(&first, &csrf);
    // The other sign-in still works, until it expires.
    let (status, _, page) = http_with(&address, "GET", "/jobs/3", &[("Cookie", &second)], "");
    assert_eq!(status, 200);
    let csrf = csrf_of(&page);
    std::thread::sleep(std::time::Duration::from_millis(4_500));
    assert_ended(&second, &csrf);
    web.kill().unwrap();
    let _ = web.wait();

    // A new token ends the old token's sessions; behind https, the cookie
    // is Secure.
    let (mut web, address, _) = start_web(db.url(), &["--https"], Some("the-token"));
    let (old, set_cookie) = sign_in(&address, "the-token");
    assert!(set_cookie.contains("; Secure"), "{set_cookie}");
    web.kill().unwrap();
    let _ = web.wait();
    let (mut web, address, _) = start_web(db.url(), &[], Some("another-token"));
    let (status, _, _) = http_with(&address, "GET", "/", &[("Cookie", &old)], "");
    assert_eq!(status, 303);
    // ... while one server's sign-in holds on another server of the same
    // token (a replica, a restart).
    let (mut other, other_address, _) = start_web(db.url(), &[], Some("another-token"));
    let (cookie, _) = sign_in(&address, "another-token");
    let (status, _, _) = http_with(&other_address, "GET", "/", &[("Cookie", &cookie)], "");
    assert_eq!(status, 200);
    for web in [&mut web, &mut other] {
        web.kill().unwrap();
        let _ = web.wait();
    }
}

#[test]
fn the_dashboard_refuses_other_host_names_bad_parameters_and_guessing_and_hides_database_errors() {
    let db = TestDb::create();
    prepared_queue(&db, "20 minutes");
    // A queue named with a megabyte, failing.
    db.execute(
        "INSERT INTO queue_jobs (id, job_type, queue, payload, attempts, first_failed_at, last_failed_at, last_error, run_at, scheduled) \
         VALUES (9, 'send_mail', repeat('q', 1000000), '{}', 1, now(), now(), 'no', now() + interval '1 hour', true)",
    );
    let (mut web, address, _) =
        start_web(db.url(), &["--host", "jobs.example.com"], Some("the-token"));
    let (cookie, _) = sign_in(&address, "the-token");
    let get = |path: &str, headers: &[(&str, &str)]| {
        let mut all = vec![("Cookie", cookie.as_str())];
        all.extend_from_slice(headers);
        http_with(&address, "GET", path, &all, "")
    };
    // Host names: refused unless localhost, an address, or given.
    for host in ["evil.example", "evil.example:80", "localhost.evil.example"] {
        let (status, _, _) = get("/", &[("Host", host)]);
        assert_eq!(status, 421, "{host}");
    }
    let port = address.rsplit(':').next().unwrap();
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "JOBS.example.com".to_owned(),
        format!("[::1]:{port}"),
    ] {
        let (status, _, _) = get("/", &[("Host", &host)]);
        assert_eq!(status, 200, "{host}");
    }
    // Bad parameters: 400 and a short message of the dashboard's own.
    for path in [
        "/jobs?state=failing&after=-8000000000000000000.1",
        "/jobs?state=failing&after=x.y",
        "/jobs?queue=%00",
        "/jobs?type=x%00",
        "/bulk?action=retry&state=failing&queue=%00",
    ] {
        let (status, _, body) = get(path, &[]);
        assert_eq!(status, 400, "{path}: {body}");
        assert!(
            !body.contains("database") && !body.contains("out of range") && !body.contains("0x00"),
            "{path}: {body}"
        );
    }
    let (_, _, page) = get("/", &[]);
    let csrf = csrf_of(&page);
    let (status, _, body) = http_with(
        &address,
        "POST",
        "/queues/%00/pause",
        &[("Cookie", &cookie)],
        &format!("csrf={csrf}"),
    );
    assert_eq!(status, 400, "{body}");
    assert!(!body.contains("0x00"), "{body}");
    // Notices are the dashboard's own texts, never the address's.
    let (_, _, body) = get("/?done=Your+account+is+locked%3A+call+555-0100", &[]);
    assert!(
        !body.contains("555-0100") && !body.contains("class=\"notice\""),
        "{body}"
    );
    let (_, _, body) = get("/?done=paused", &[]);
    assert!(body.contains("queue paused: running jobs finish"), "{body}");
    // A megabyte of name is cut on the overview, whole on the job's page.
    assert!(page.len() < 100_000, "the overview is {} bytes", page.len());
    assert!(page.contains(&format!("{}…", "q".repeat(79))), "cut");
    let (_, _, job) = get("/jobs/9", &[]);
    assert!(job.contains(&"q".repeat(1_000_000)));
    // Wrong tokens: ten a minute from one address, then refused, the right
    // one too.
    let (_, _, login) = http_with(&address, "GET", "/login", &[], "");
    let csrf = csrf_of(&login);
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let (status, _, _) = http_with(
            &address,
            "POST",
            "/login",
            &[],
            &format!("csrf={csrf}&token=guess"),
        );
        statuses.push(status);
    }
    // (The sign-in above counted too; one more is allowed every 6 s.)
    let refused = statuses.iter().filter(|s| **s == 403).count();
    assert!((9..=10).contains(&refused), "{statuses:?}");
    assert!(
        statuses[refused..].iter().all(|s| *s == 429),
        "{statuses:?}"
    );
    let (status, headers, _) = http_with(
        &address,
        "POST",
        "/login",
        &[],
        &format!("csrf={csrf}&token=the-token"),
    );
    assert_eq!(status, 429, "{headers}");
    assert!(headers.to_ascii_lowercase().contains("retry-after: 60"));
    // A database that is gone: said so, without libpq's text.
    {
        use diesel::connection::SimpleConnection;
        use diesel::Connection;
        let mut server = diesel::PgConnection::establish(&skiplock_tests::server_url()).unwrap();
        server
            .batch_execute(&format!("DROP DATABASE \"{}\" WITH (FORCE)", db.name()))
            .unwrap();
    }
    for path in ["/jobs/3", "/"] {
        let (status, _, body) = get(path, &[]);
        assert_eq!(status, 503, "{path}: {body}");
        assert!(body.contains("The database is unreachable."), "{body}");
        assert!(
            !body.contains("does not exist") && !body.contains("FATAL"),
            "{body}"
        );
    }
    web.kill().unwrap();
    let _ = web.wait();
}

#[test]
fn sigterm_stops_the_dashboard_within_its_timeout_whatever_a_client_does() {
    use std::io::Write as _;
    let db = TestDb::create();
    let (mut web, address, _) =
        start_web(db.url(), &["--shutdown-timeout", "2s"], Some("the-token"));
    // A client that sends half a request and waits.
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: loc").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let started = std::time::Instant::now();
    unsafe { libc::kill(web.id() as i32, libc::SIGTERM) };
    let mut exited = None;
    while started.elapsed() < std::time::Duration::from_secs(8) {
        if let Some(status) = web.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let Some(status) = exited else {
        web.kill().unwrap();
        panic!("still running 8 s after SIGTERM");
    };
    eprintln!("stopped {:?} after SIGTERM", started.elapsed());
    assert!(status.success());
    drop(stream);
}

/// Percent-encodes every byte but letters and digits.
fn encode_query(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn the_dashboard_searches_jobs_by_state_queue_type_and_payload_a_window_at_a_time() {
    let db = TestDb::create();
    // The oldest job matches, 25,000 newer ones do not, except three.
    db.execute(
        "INSERT INTO queue_jobs (job_type, queue, payload) VALUES \
             ('send_mail', 'mail', '{\"user_id\": 42, \"note\": \"<script>alert(1)</script>\"}'); \
         INSERT INTO queue_jobs (job_type, queue, payload) \
             SELECT 'send_mail', 'mail', jsonb_build_object('user_id', 1000 + i) \
             FROM generate_series(1, 25000) i; \
         INSERT INTO queue_jobs (job_type, queue, payload) VALUES \
             ('send_mail', 'mail', '{\"user_id\": 42, \"template\": \"welcome\"}'), \
             ('send_sms', 'mail', '{\"user_id\": 42}'); \
         INSERT INTO queue_jobs (job_type, queue, payload, attempts, first_failed_at, last_failed_at, dead_at) \
             VALUES ('charge_card', 'billing', '{\"user_id\": 42, \"cents\": 100}', 1, now(), now(), now())",
    );
    let (mut web, address, _) = start_web(db.url(), &[], Some("the-token"));
    let (cookie, _) = sign_in(&address, "the-token");
    let get = |path: &str| http_with(&address, "GET", path, &[("Cookie", &cookie)], "");
    let ids = |page: &str| -> Vec<i64> {
        page.split("<tr data-id=\"")
            .skip(1)
            .map(|rest| rest.split('"').next().unwrap().parse().unwrap())
            .collect()
    };
    let user_42 = encode_query(r#"{"user_id": 42}"#);
    let (status, _, page) = get(&format!("/search?payload={user_42}"));
    assert_eq!(status, 200, "{page}");
    assert_eq!(ids(&page), [25_004, 25_003, 25_002]);
    assert!(page.contains("Examined the 20000 newest jobs"), "{page}");
    // The oldest is beyond the first window: the page says where to go on.
    let next = page
        .split("id=\"next\" href=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no next page in {page}"))
        .replace("&amp;", "&");
    let (_, _, older) = get(&next);
    assert_eq!(ids(&older), [1]);
    assert!(older.contains("&lt;script&gt;"), "escaped");
    assert!(!older.contains("<script>"), "{older}");
    assert!(!older.contains("id=\"next\""), "the search has ended");
    // State, queue and type narrow it.
    let (_, _, dead) = get(&format!("/search?state=dead&payload={user_42}"));
    assert_eq!(ids(&dead), [25_004]);
    let (_, _, mails) = get(&format!(
        "/search?queue=mail&type=send_mail&payload={user_42}"
    ));
    assert_eq!(ids(&mails), [25_002]);
    let welcome = encode_query(r#"{"template": "welcome"}"#);
    let (_, _, welcomed) = get(&format!("/search?state=ready&payload={welcome}"));
    assert_eq!(ids(&welcomed), [25_002]);
    // Bad filters: 400 with the dashboard's own words.
    for query in [
        encode_query("not json"),
        encode_query("42"),
        encode_query(r#"{"a": "\u0000"}"#),
        encode_query(&format!(r#"{{"a": "{}"}}"#, "x".repeat(5_000))),
    ] {
        let (status, _, body) = get(&format!("/search?payload={query}"));
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            !body.contains("jsonb") && !body.contains("database"),
            "{body}"
        );
    }
    let (status, _, _) = get("/search?before=abc");
    assert_eq!(status, 400);
    let (status, _, _) = get("/search?queue=%00");
    assert_eq!(status, 400);
    // Signed out: nothing.
    let (status, _, _) = http_with(
        &address,
        "GET",
        &format!("/search?payload={user_42}"),
        &[],
        "",
    );
    assert_eq!(status, 303);
    web.kill().unwrap();
    let _ = web.wait();
}

#[test]
fn limits_are_set_from_the_cli_and_shown_by_status_the_dashboard_and_the_metrics() {
    use skiplock::{EnqueueOptions, Job};
    use skiplock_tests::flow_jobs::{queue_job, tenant_job};
    let db = TestDb::create();
    // Set, and refused with a clear message.
    let (code, out, err) = run(
        &db,
        &["limit", "capped", "--max-running", "2", "--rate", "10/1m"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        "queue `capped`: at most 2 running, at most 10/1m starting"
    );
    let (code, _, err) = run(&db, &["limit", "capped", "--rate", "5000/1s"]);
    assert_eq!(code, 2);
    assert!(err.contains("out of range"), "{err}");
    let (code, _, err) = run(&db, &["limit", "capped", "--rate", "fast"]);
    assert_eq!(code, 2);
    assert!(err.contains("LIMIT/PERIOD"), "{err}");
    let (code, _, err) = run(&db, &["limit", "capped", "--max-running", "0"]);
    assert_eq!(code, 1);
    assert!(err.contains("max_running 0 is out of range"), "{err}");
    let (code, _, err) = run(&db, &["limit", "capped"]);
    assert_eq!(code, 1);
    assert!(err.contains("say what to limit"), "{err}");
    let (_, out, _) = run(&db, &["limits"]);
    assert!(out.contains("capped") && out.contains("10/1m"), "{out}");

    // Jobs that run 10 s: two of the capped queue's at once, two of a key
    // (an application's text, with a terminal escape in it) at once.
    let evil = "\u{1b}[31mtenant";
    let mut conn = db.conn();
    for n in 0..4 {
        queue_job("capped".to_owned(), n, 10_000)
            .enqueue(&mut conn)
            .unwrap();
        tenant_job(evil.to_owned(), n, 10_000)
            .enqueue_with(&mut conn, &EnqueueOptions::new())
            .unwrap();
    }
    let runner = skiplock::Runner::builder(())
        .database_url(db.url())
        .queue("capped", 4)
        .queue("flow", 4)
        .build()
        .unwrap()
        .start();
    skiplock_tests::wait_until(
        "two of each running",
        std::time::Duration::from_secs(10),
        || {
            // (A worker that could not start its job in time gives it
            // back and claims again: its start is counted again then.)
            let (queues, keys) = skiplock::flow_status(&mut conn, 10).unwrap();
            queues
                .first()
                .is_some_and(|q| q.running == 2 && q.recent_starts == 2)
                && keys.first().is_some_and(|k| k.running == 2)
        },
    );
    let (queues, keys) = skiplock::flow_status(&mut conn, 10).unwrap();
    assert_eq!(queues[0].recent_starts, 2, "{queues:?}");
    assert_eq!(
        (keys[0].ready, keys[0].max_concurrent),
        (4, Some(2)),
        "{keys:?}"
    );
    assert_eq!(keys[0].label(), "\\u{1b}[31mtenant");

    let metrics = runner.metrics();
    for line in [
        "queue_limit_slots_held{queue=\"capped\"} 2",
        "queue_limit_window_starts{queue=\"capped\"} 2",
        "queue_limited_keys_waiting{queue=\"flow\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    assert!(metrics.contains("queue_limit_wait_seconds{queue=\"flow\"} "));

    for command in [&["limits"][..], &["status"][..]] {
        let (code, out, _) = run(&db, command);
        assert_eq!(code, 0);
        let capped = out
            .lines()
            .find(|l| l.starts_with("capped") && l.contains("10/1m"))
            .unwrap_or_else(|| panic!("no capped limits in {out}"));
        let fields: Vec<&str> = capped.split_whitespace().collect();
        assert_eq!(fields, ["capped", "2", "2", "10/1m", "2"], "{out}");
        assert!(out.contains("\\u{1b}[31mtenant"), "{out}");
        assert!(
            !out.contains('\u{1b}'),
            "no terminal escape reaches the output: {out}"
        );
    }
    let (_, json, _) = run(&db, &["limits", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["queues"][0]["running"], 2, "{json}");
    assert_eq!(json["queues"][0]["limits"]["rate"], "10/1m", "{json}");
    assert_eq!(json["keys"][0]["max_concurrent"], 2, "{json}");

    let (mut web, address, _) = start_web(db.url(), &["--read-only", "--public-read"], None);
    let (status, page) = http(&address, "GET", "/", "");
    assert_eq!(status, 200);
    assert!(page.contains("id=\"queue-limits\""), "{page}");
    assert!(page.contains("data-limited-queue=\"capped\""), "{page}");
    assert!(
        page.contains("data-limited-key=\"\\u{1b}[31mtenant\""),
        "{page}"
    );
    assert!(!page.contains('\u{1b}'));
    web.kill().unwrap();
    let _ = web.wait();
    drop(runner);

    let (code, out, _) = run(&db, &["limit", "capped", "--clear"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "queue `capped` has no limits of its own now");
    assert!(skiplock::flow_status(&mut conn, 10).unwrap().0.is_empty());
}
