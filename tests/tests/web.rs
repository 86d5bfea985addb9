//! The dashboard in a real browser: Debian's chromium, driven through
//! chromedriver (WebDriver), over a live server and a real database.
//! Screenshots are left in `target/screenshots/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use skiplock::web::Dashboard;
use skiplock::{background_job, Job, PerformError, Runner};
use skiplock_tests::{count, wait_until, TestDb};

/// What an attacker puts in a payload and in an error.
const HOSTILE: &str = "<script>alert('xss')</script>\"><img src=x onerror=alert('img')>";

#[background_job(queue = "web_mail", backoff = "1h")]
fn deliver(to: String) -> Result<(), PerformError> {
    Err(PerformError::msg(format!(
        "the mailbox of {to} refused the message: 550 {HOSTILE}"
    )))
}

#[background_job(queue = "web_mail", max_attempts = 1)]
fn bounce(to: String) -> Result<(), PerformError> {
    Err(PerformError::msg(format!("{to} bounced")))
}

#[background_job(queue = "web_mail")]
fn welcome(user: i64) {
    let _ = user;
}

/// chromedriver on a free port, and a headless chromium session through it.
struct Browser {
    driver: Child,
    client: Option<Client>,
}

impl Browser {
    async fn start() -> Browser {
        for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            assert!(
                std::path::Path::new(tool).exists(),
                "{tool} is missing: `apt-get install chromium chromium-driver` (`cargo xtask test` does)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until("chromedriver listens", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000"],
            }),
        );
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a chromium session");
        Browser {
            driver,
            client: Some(client),
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, self.client().screenshot().await.unwrap()).unwrap();
        path
    }

    async fn text(&self, css: &str) -> String {
        self.client()
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .text()
            .await
            .unwrap()
    }

    /// Clicks what `css` finds, and waits for the page it leads to.
    async fn click(&self, css: &str) {
        let old_page = self.client().find(Locator::Css("html")).await.unwrap();
        self.client()
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap();
        self.wait_for_new_page(old_page, css).await;
    }

    /// Waits until `old_page` is gone (a new document) and the new one has loaded.
    async fn wait_for_new_page(&self, old_page: fantoccini::elements::Element, what: &str) {
        for _ in 0..200 {
            if old_page.tag_name().await.is_err() {
                let state = self
                    .client()
                    .execute("return document.readyState", Vec::new())
                    .await;
                if state.is_ok_and(|s| s == "complete") {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{what} led to no new page");
    }

    async fn count(&self, css: &str) -> usize {
        self.client()
            .find_all(Locator::Css(css))
            .await
            .unwrap()
            .len()
    }

    /// Signs in on the dashboard at `site` with `token`.
    async fn sign_in(&self, site: &str, token: &str) {
        self.client()
            .goto(&format!("{site}/admin/login"))
            .await
            .unwrap();
        self.client()
            .find(Locator::Css("#token"))
            .await
            .unwrap()
            .send_keys(token)
            .await
            .unwrap();
        self.click("#sign-in").await;
    }

    /// Nothing hostile ran: no dialog opened, no element was injected.
    async fn assert_inert(&self) {
        assert!(
            self.client().get_alert_text().await.is_err(),
            "a dialog opened"
        );
        assert_eq!(self.count("script").await, 0, "a script element");
        assert_eq!(self.count("img").await, 0, "an injected image");
        assert_eq!(self.count("[onerror]").await, 0, "an injected handler");
    }

    async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Serves `dashboard` mounted under `/admin` (as an application would
/// mount it), on 127.0.0.1; returns its address.
async fn serve(dashboard: Dashboard) -> String {
    let app = axum::Router::new().nest("/admin", dashboard.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

/// Failing, dead and completed jobs, recorded by a real runner (which also
/// reports the throughput the chart draws).
fn fill(db: &TestDb) {
    let mut conn = db.conn();
    for i in 0..40 {
        welcome(i).enqueue(&mut conn).unwrap();
    }
    deliver(format!("ops@example.com {HOSTILE}"))
        .enqueue(&mut conn)
        .unwrap();
    deliver("billing@example.com".into())
        .enqueue(&mut conn)
        .unwrap();
    bounce("nobody@example.com".into())
        .enqueue(&mut conn)
        .unwrap();
    bounce("noreply@example.com".into())
        .enqueue(&mut conn)
        .unwrap();
    let running = Runner::builder(())
        .database_url(db.url())
        .queue("web_mail", 2)
        .poll_interval(Duration::from_millis(50))
        .build()
        .unwrap()
        .start();
    wait_until(
        "the runner ran and reported",
        Duration::from_secs(20),
        || {
            db.count_jobs("attempts = 0") == 0
                && count(
                    &mut db.conn(),
                    "SELECT COALESCE(sum(completed + failed), 0)::int8 AS n FROM queue_throughput",
                ) == 44
        },
    );
    running.shutdown(Duration::from_secs(10));
    for i in 0..3 {
        welcome(100 + i).enqueue(&mut conn).unwrap();
    }
}

fn attempts(db: &TestDb, id: i64) -> i64 {
    count(
        &mut db.conn(),
        &format!("SELECT attempts::int8 AS n FROM queue_jobs WHERE id = {id}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_goes_from_the_overview_to_a_failing_jobs_error_and_retries_it() {
    let db = TestDb::create();
    tokio::task::block_in_place(|| fill(&db));
    let token = skiplock::web::random_token();
    let site = serve(Dashboard::new(db.pool(4)).token(&token)).await;
    let browser = Browser::start().await;
    let client = browser.client();

    // Signed out, the dashboard shows its sign-in form and nothing else.
    client.goto(&format!("{site}/admin")).await.unwrap();
    assert_eq!(browser.text("h1").await, "Sign in");
    client
        .goto(&format!("{site}/admin/jobs?state=failing"))
        .await
        .unwrap();
    assert_eq!(browser.text("h1").await, "Sign in");
    browser.sign_in(&site, "not the token").await;
    assert!(browser
        .text("p.error")
        .await
        .contains("not the dashboard's token"));
    browser.sign_in(&site, &token).await;

    // The overview: queues, job types, the chart.
    assert_eq!(browser.text("h1").await, "Overview");
    let queue_row = browser.text("#queues tr[data-queue='web_mail']").await;
    assert!(queue_row.contains("web_mail"), "{queue_row}");
    assert_eq!(
        browser
            .text("#queues tr[data-queue='web_mail'] a.failing")
            .await,
        "2"
    );
    assert_eq!(
        browser
            .text("#queues tr[data-queue='web_mail'] a.dead")
            .await,
        "2"
    );
    assert!(browser.count("#throughput rect.completed").await >= 60);
    let chart = browser.text("section.chart p").await;
    assert!(chart.starts_with("40 completed, 4 failed"), "{chart}");
    browser.screenshot("overview.png").await;

    // Three clicks: the failing count, the job, retry.
    browser
        .click("#queues tr[data-queue='web_mail'] a.failing")
        .await;
    assert_eq!(browser.text("h1").await, "Failing jobs");
    assert_eq!(browser.count("#jobs tbody tr").await, 2);
    let hostile_row = "//table[@id='jobs']//tr[contains(., 'ops@example.com')]//a[@class='job']";
    let link = client.find(Locator::XPath(hostile_row)).await.unwrap();
    let id: i64 = link.text().await.unwrap().parse().unwrap();
    let old_page = client.find(Locator::Css("html")).await.unwrap();
    link.click().await.unwrap();
    browser.wait_for_new_page(old_page, "the job's link").await;
    assert_eq!(browser.text("h1").await, format!("Job {id} failing"));
    let error = browser.text("#error").await;
    assert!(error.contains(HOSTILE), "the error, as text: {error}");
    let payload = browser.text("#payload").await;
    assert!(
        payload.contains("<script>alert('xss')</script>"),
        "{payload}"
    );
    assert!(
        payload.contains("<img src=x onerror=alert('img')>"),
        "{payload}"
    );
    browser.assert_inert().await;
    browser.screenshot("failing-job.png").await;
    assert_eq!(attempts(&db, id), 1);
    browser.click("#retry").await;
    assert!(browser.text("p.notice").await.starts_with("retried"));
    assert_eq!(browser.text("#attempts").await, "0");
    assert_eq!(attempts(&db, id), 0, "the row was retried in PostgreSQL");

    // Discarding one dead job takes a confirmation.
    client
        .goto(&format!("{site}/admin/jobs?state=dead"))
        .await
        .unwrap();
    assert_eq!(browser.count("#jobs tbody tr").await, 2);
    browser.click("#jobs tbody tr:first-child a.job").await;
    let dead_id: i64 = browser
        .text("h1")
        .await
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    browser.click("#discard").await;
    assert!(browser.text("h1").await.starts_with("Discard job"));
    assert_eq!(
        db.count_jobs(&format!("id = {dead_id}")),
        1,
        "not before confirming"
    );
    browser.click("#confirm").await;
    assert!(browser.text("p.notice").await.contains("discarded"));
    assert_eq!(db.count_jobs(&format!("id = {dead_id}")), 0);

    // Every job matching a filter, after a confirmation that counts them.
    client
        .goto(&format!("{site}/admin/jobs?state=failing&type=deliver"))
        .await
        .unwrap();
    browser.click("p.bulk a.danger").await;
    assert_eq!(browser.text("h1").await, "Discard 1 failing jobs?");
    browser.click("#confirm").await;
    assert!(browser
        .text("p.notice")
        .await
        .starts_with("1 jobs discarded"));
    assert_eq!(db.count_jobs("job_type = 'deliver' AND attempts > 0"), 0);
    assert_eq!(
        db.count_jobs(&format!("id = {id}")),
        1,
        "the retried one waits"
    );

    // Pause and resume the queue.
    client.goto(&format!("{site}/admin")).await.unwrap();
    browser
        .click("#queues tr[data-queue='web_mail'] button[name='queue-action']")
        .await;
    assert!(browser.text("p.notice").await.contains("paused"));
    let paused = "SELECT count(*) AS n FROM queue_pauses WHERE queue = 'web_mail'";
    assert_eq!(count(&mut db.conn(), paused), 1);
    assert!(browser
        .text("#queues tr[data-queue='web_mail']")
        .await
        .contains("paused"));
    browser
        .click("#queues tr[data-queue='web_mail'] button[name='queue-action']")
        .await;
    assert_eq!(count(&mut db.conn(), paused), 0);

    // Signing out ends the session: the browser is back at the sign-in
    // form, and the old cookie, put back, opens nothing.
    let session = client.get_named_cookie("skiplock_session").await.unwrap();
    browser.click("form.inline button.link").await;
    assert_eq!(browser.text("h1").await, "Sign in");
    assert!(client.get_named_cookie("skiplock_session").await.is_err());
    client.add_cookie(session.into_owned()).await.unwrap();
    client
        .goto(&format!("{site}/admin/jobs?state=dead"))
        .await
        .unwrap();
    assert_eq!(browser.text("h1").await, "Sign in");
    browser.screenshot("signed-out.png").await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_cross_site_request_changes_nothing_even_for_a_signed_in_operator() {
    let db = TestDb::create();
    let mut conn = db.conn();
    let id = deliver("x@example.com".into())
        .enqueue(&mut conn)
        .unwrap()
        .id()
        .unwrap()
        .0;
    let runner = Runner::builder(())
        .database_url(db.url())
        .queue("web_mail", 1)
        .build()
        .unwrap();
    tokio::task::block_in_place(|| runner.run_pending().unwrap());
    assert_eq!(attempts(&db, id), 1);
    let token = skiplock::web::random_token();
    let site = serve(Dashboard::new(db.pool(2)).token(&token)).await;

    // Another site, on another port: a page that posts to the dashboard.
    let page = format!(
        "<form id=f method=post action='{site}/admin/jobs/{id}/retry'>\
         <input name=csrf value=guess></form>\
         <script>document.getElementById('f').submit()</script>"
    );
    let evil = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let page = page.clone();
            async move { axum::response::Html(page) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let evil_site = format!("http://localhost:{}", listener.local_addr().unwrap().port());
    tokio::spawn(async move { axum::serve(listener, evil).await.unwrap() });

    let browser = Browser::start().await;
    let client = browser.client();
    // The operator is signed in to the dashboard...
    browser.sign_in(&site, &token).await;
    assert_eq!(browser.text("h1").await, "Overview");
    // ...and visits the other site, whose page posts the form at once.
    client.goto(&evil_site).await.unwrap();
    let mut answered = false;
    for _ in 0..100 {
        let url = client.current_url().await.unwrap();
        if url.as_str().contains("/retry") {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered, "the other site's page never posted its form");
    assert_eq!(browser.text("h1").await, "Refused");
    assert_eq!(attempts(&db, id), 1, "the job was not retried");
    browser.close().await;
}
