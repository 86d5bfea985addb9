//! `async fn` jobs on tokio: the same engine claims, locks, completes and
//! retries them; their bodies run on the runner's runtime with diesel-async
//! connections; enqueueing from async code joins the caller's transaction.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use skiplock::{asynchronous, background_job, BoxError, Job, PerformError, Runner};
use skiplock_tests::crash_jobs::async_hang_once;
use skiplock_tests::{count, wait_until, TestDb, WorkerProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the HTTP job read.
#[derive(Debug, Default)]
struct Responses(Mutex<Vec<String>>);

#[background_job(queue = "async_http")]
async fn fetch(responses: &Responses, port: u16, path: String) -> Result<(), BoxError> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    responses.0.lock().unwrap().push(body.to_owned());
    Ok(())
}

/// Serves one HTTP request on 127.0.0.1: answers with the path it asked for.
fn serve_once() -> (u16, std::thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        let mut buf = [0; 1024];
        while !request.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "the client hung up mid-request");
            request.extend_from_slice(&buf[..n]);
        }
        let request = String::from_utf8(request).unwrap();
        let path = request.split(' ').nth(1).unwrap().to_owned();
        let body = format!("hello from {path}");
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        request
    });
    (port, server)
}

#[test]
fn an_async_job_calls_an_http_endpoint_on_the_runners_runtime() {
    let db = TestDb::create();
    let (port, server) = serve_once();
    let id = fetch(port, "/crates/serde".into())
        .enqueue(&mut db.conn())
        .unwrap()
        .id()
        .unwrap();
    let runner = Runner::builder(Responses::default())
        .database_url(db.url())
        .queue("async_http", 1)
        .build()
        .unwrap();
    let summary = runner.run_pending().unwrap();
    assert_eq!(summary.succeeded, vec![id], "{:?}", summary.failed);
    assert!(server
        .join()
        .unwrap()
        .starts_with("GET /crates/serde HTTP/1.1"));
    assert_eq!(
        *runner.context().0.lock().unwrap(),
        ["hello from /crates/serde"]
    );
}

#[background_job(queue = "async_mixed")]
async fn async_insert(conn: &mut AsyncPgConnection, label: String) -> QueryResult<()> {
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query("INSERT INTO effects (label) VALUES ($1)")
            .bind::<diesel::sql_types::Text, _>(label),
        conn,
    )
    .await?;
    Ok(())
}

#[background_job(queue = "async_mixed")]
fn plain_insert(conn: &mut PgConnection, label: String) -> QueryResult<()> {
    diesel::sql_query("INSERT INTO effects (label) VALUES ($1)")
        .bind::<diesel::sql_types::Text, _>(label)
        .execute(conn)?;
    Ok(())
}

#[test]
fn sync_and_async_jobs_run_on_one_runner_each_with_its_connection() {
    let db = TestDb::create();
    db.execute("CREATE TABLE effects (label TEXT NOT NULL)");
    let mut conn = db.conn();
    for i in 0..5 {
        async_insert(format!("async {i}"))
            .enqueue(&mut conn)
            .unwrap();
        plain_insert(format!("plain {i}"))
            .enqueue(&mut conn)
            .unwrap();
    }
    let runner = Runner::builder(())
        .database_url(db.url())
        .queue("async_mixed", 2)
        .build()
        .unwrap();
    let running = runner.start();
    wait_until("both kinds ran", Duration::from_secs(10), || {
        db.count_jobs("true") == 0
    });
    running.shutdown(Duration::from_secs(5));
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) AS n FROM effects WHERE label LIKE 'async %'"
        ),
        5
    );
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) AS n FROM effects WHERE label LIKE 'plain %'"
        ),
        5
    );
}

#[background_job(queue = "async_fail", timeout = "200ms", max_attempts = 1)]
async fn too_slow() -> Result<(), PerformError> {
    tokio::time::sleep(Duration::from_secs(30)).await;
    Ok(())
}

#[background_job(queue = "async_fail", max_attempts = 1)]
async fn panics_while_awaiting() -> Result<(), PerformError> {
    tokio::task::yield_now().await;
    panic!("the async body panicked");
}

#[test]
fn an_async_job_is_cancelled_at_its_timeout_and_a_panic_is_a_recorded_failure() {
    let db = TestDb::create();
    let mut conn = db.conn();
    let slow = too_slow().enqueue(&mut conn).unwrap().id().unwrap();
    let panicking = panics_while_awaiting()
        .enqueue(&mut conn)
        .unwrap()
        .id()
        .unwrap();
    let runner = Runner::builder(())
        .database_url(db.url())
        .queue("async_fail", 1)
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let summary = runner.run_pending().unwrap();
    // Cancelled at its deadline, not after its 30 s sleep.
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(summary.succeeded.is_empty());
    let error_of = |id| {
        summary
            .failed
            .iter()
            .find(|f| f.id == id)
            .map(|f| (f.error.clone(), f.dead))
            .unwrap()
    };
    assert_eq!(error_of(slow), ("timed out after 200ms".to_owned(), true));
    assert_eq!(
        error_of(panicking),
        ("job panicked: the async body panicked".to_owned(), true)
    );
    let stored = skiplock::find_job(&mut conn, slow).unwrap();
    assert_eq!(stored.last_error.as_deref(), Some("timed out after 200ms"));
    assert!(stored.dead_at.is_some());
}

#[background_job(queue = "async_enqueue")]
async fn welcome(user_id: i64) -> Result<(), PerformError> {
    let _ = user_id;
    Ok(())
}

#[test]
fn an_async_enqueue_joins_the_callers_transaction() {
    let db = TestDb::create();
    let url = db.url().to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut conn = AsyncPgConnection::establish(&url).await.unwrap();
        let rolled_back: Result<(), BoxError> = conn
            .transaction(async |conn| {
                asynchronous::enqueue(&welcome(1), conn).await?;
                Err::<(), BoxError>("the signup failed".into())
            })
            .await;
        assert!(rolled_back.is_err());
        let id = conn
            .transaction(async |conn| {
                Ok::<_, BoxError>(asynchronous::enqueue(&welcome(2), conn).await?)
            })
            .await
            .unwrap()
            .id()
            .unwrap();
        let listed = skiplock::find_job(&mut PgConnection::establish(&url).unwrap(), id).unwrap();
        assert_eq!(listed.payload["user_id"], 2);
    });
    // Only the committed one exists.
    assert_eq!(db.count_jobs("true"), 1);
    let listed = skiplock::testing::enqueued::<WelcomeJob>(&mut db.conn()).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].user_id, 2);
}

#[test]
fn a_sigkilled_async_workers_job_runs_again_elsewhere() {
    skiplock_tests::init_tracing();
    let db = TestDb::create();
    db.execute("CREATE TABLE crash_log (key TEXT NOT NULL, event TEXT NOT NULL, pid INT NOT NULL)");
    let events = |event: &str| {
        count(
            &mut db.conn(),
            &format!("SELECT count(*) AS n FROM crash_log WHERE event = '{event}'"),
        )
    };
    async_hang_once("k".into()).enqueue(&mut db.conn()).unwrap();
    let spawn =
        || WorkerProcess::spawn(env!("CARGO_BIN_EXE_test-worker"), &db, &[1, 5, 50, 60_000]);
    let a = spawn();
    wait_until(
        "worker A started the async job",
        Duration::from_secs(10),
        || events("started") == 1,
    );
    let a_pid = a.pid();
    a.kill();
    let _b = spawn();
    wait_until(
        "the job finished elsewhere",
        Duration::from_secs(10),
        || events("finished") == 1,
    );
    let pids = count(
        &mut db.conn(),
        &format!("SELECT count(DISTINCT pid) AS n FROM crash_log WHERE pid <> {a_pid}"),
    );
    assert_eq!(pids, 1, "the second run was in another process");
    wait_until("the queue is empty", Duration::from_secs(10), || {
        db.count_jobs("true") == 0
    });
}

#[background_job(queue = "async_handle")]
async fn where_tasks_run(seen: &Mutex<Vec<String>>) -> Result<(), PerformError> {
    // A task spawned by the body runs on the runtime the runner was given.
    let name = tokio::spawn(async { std::thread::current().name().map(str::to_owned) })
        .await
        .map_err(PerformError::new)?;
    seen.lock().unwrap().push(name.unwrap_or_default());
    Ok(())
}

#[test]
fn async_jobs_run_on_the_runtime_the_runner_is_given() {
    let db = TestDb::create();
    let application = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("the-applications-runtime")
        .enable_all()
        .build()
        .unwrap();
    let id = where_tasks_run()
        .enqueue(&mut db.conn())
        .unwrap()
        .id()
        .unwrap();
    let runner = Runner::builder(Mutex::new(Vec::<String>::new()))
        .database_url(db.url())
        .queue("async_handle", 1)
        .tokio_handle(application.handle().clone())
        .build()
        .unwrap();
    assert_eq!(runner.run_pending().unwrap().succeeded, vec![id]);
    assert_eq!(
        *runner.context().lock().unwrap(),
        ["the-applications-runtime"]
    );
}
