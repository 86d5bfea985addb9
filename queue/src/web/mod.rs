//! The operators' dashboard: queues and job types at a glance, failing and
//! dead jobs with their errors, one job's payload, the runners, and the
//! actions an operator takes (retry, discard, pause, resume).
//!
//! [`Dashboard::router`] is an [axum] router: serve it on its own (the
//! `skiplock web` command does), or mount it in the application's server
//! with [`axum::Router::nest`]; its links follow the mount point. Pages are
//! rendered on the server (maud, which escapes every value: payloads and
//! errors are attacker-controlled text) with no JavaScript and no assets
//! from elsewhere.
//!
//! Reading needs nothing; every action needs the token the dashboard was
//! given (an operator signs in with it once; the session cookie is
//! `HttpOnly` and `SameSite=Strict`) and a form field only the dashboard's
//! own pages carry, and is refused when the request's `Origin` is another
//! site. A [read-only](Dashboard::read_only) dashboard has no actions.
//!
//! ```no_run
//! # async fn demo(pool: skiplock::PgPool) -> std::io::Result<()> {
//! let dashboard = skiplock::web::Dashboard::new(pool)
//!     .token(std::env::var("SKIPLOCK_WEB_TOKEN").expect("a token"));
//! let app = axum::Router::new().nest("/admin/jobs", dashboard.router());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await
//! # }
//! ```

mod chart;
mod pages;

use std::sync::Arc;

use axum::extract::{Form, OriginalUri, Path, Query, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use diesel::PgConnection;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::admin::{self, JobState, PageAfter};
use crate::connection::PgPool;
use crate::errors::AdminError;
use crate::job::JobId;

/// The dashboard, ready to become a router.
pub struct Dashboard {
    pool: PgPool,
    token: Option<String>,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard")
            .field("actions", &self.token.is_some())
            .finish_non_exhaustive()
    }
}

impl Dashboard {
    /// A read-only dashboard over the queue behind `pool` (a few
    /// connections are enough: each page runs its queries on one).
    pub fn new(pool: PgPool) -> Self {
        Dashboard { pool, token: None }
    }

    /// Allows actions to whoever signs in with `token` (use a long random
    /// one: [`random_token`]). An empty token leaves the dashboard read-only.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        let token = token.into();
        self.token = (!token.is_empty()).then_some(token);
        self
    }

    /// No actions at all, whoever asks (the default without a token).
    pub fn read_only(mut self) -> Self {
        self.token = None;
        self
    }

    /// The router serving every page, its stylesheet and its actions.
    pub fn router(self) -> Router {
        let app = Arc::new(App {
            pool: self.pool,
            token: self.token,
            session: random_token(),
            csrf: random_token(),
        });
        Router::new()
            .route("/", get(overview))
            .route("/jobs", get(jobs))
            .route("/jobs/{id}", get(job))
            .route("/jobs/{id}/retry", post(retry))
            .route("/jobs/{id}/discard", get(confirm_discard).post(discard))
            .route("/bulk", get(confirm_bulk).post(bulk))
            .route("/queues/{queue}/pause", post(pause))
            .route("/queues/{queue}/resume", post(resume))
            .route("/runners", get(runners))
            .route("/login", get(login_form).post(login))
            .route("/logout", post(logout))
            .route("/style.css", get(stylesheet))
            .layer(axum::middleware::map_response(security_headers))
            .with_state(app)
    }
}

/// 32 random bytes as 64 hex digits, from the operating system's source.
pub fn random_token() -> String {
    let mut bytes = [0_u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system gives random bytes");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What every handler shares.
struct App {
    pool: PgPool,
    /// The token that signs an operator in; `None`: read-only.
    token: Option<String>,
    /// The session cookie's value, for whoever signed in.
    session: String,
    /// The anti-forgery value every form of the dashboard carries.
    csrf: String,
}

type Shared = State<Arc<App>>;

const COOKIE: &str = "skiplock_session";

/// Where the dashboard is mounted (`""` at the root), from the request.
struct Base(String);

impl Base {
    fn of(original: &OriginalUri, uri: &Uri) -> Base {
        let outer = original.path();
        let inner = uri.path();
        let base = if inner == "/" {
            outer.trim_end_matches('/')
        } else {
            outer.strip_suffix(inner).unwrap_or("")
        };
        Base(base.to_owned())
    }
}

/// The overview's address under `base`: the mount point itself (axum's
/// `nest` serves `/admin`, not `/admin/`), or `/` at the root.
pub(crate) fn home(base: &str) -> String {
    if base.is_empty() {
        "/".to_owned()
    } else {
        base.to_owned()
    }
}

/// What a page needs to know of the request: its base, and whether the
/// operator may act.
pub(crate) struct Viewer {
    pub(crate) base: String,
    /// Actions are possible at all (a token was given).
    pub(crate) actions: bool,
    /// The operator signed in.
    pub(crate) signed_in: bool,
    pub(crate) csrf: String,
}

fn viewer(app: &App, original: &OriginalUri, uri: &Uri, headers: &HeaderMap) -> Viewer {
    Viewer {
        base: Base::of(original, uri).0,
        actions: app.token.is_some(),
        signed_in: app.token.is_some() && has_session(app, headers),
        csrf: app.csrf.clone(),
    }
}

fn has_session(app: &App, headers: &HeaderMap) -> bool {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|cookies| cookies.split(';'))
        .filter_map(|cookie| cookie.trim().split_once('='))
        .any(|(name, value)| name == COOKIE && same(value, &app.session))
}

fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Refuses a request from another site: a browser sends `Origin` with
/// every cross-site POST, and it must name this host.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin = origin.to_str().unwrap_or("");
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    matches!((origin_host, host), (Some(o), Some(h)) if o == h)
}

/// Why an action was refused.
struct Refusal(&'static str);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (StatusCode::FORBIDDEN, pages::refused(self.0)).into_response()
    }
}

/// The checks of every action: a dashboard with actions, a signed-in
/// operator, the form's anti-forgery value, the same site.
fn authorize(app: &App, headers: &HeaderMap, csrf: &str) -> Result<(), Refusal> {
    if app.token.is_none() {
        return Err(Refusal(
            "This dashboard is read-only: it was started without a token.",
        ));
    }
    if !same_origin(headers) || !same(csrf, &app.csrf) {
        return Err(Refusal(
            "This request did not come from the dashboard's own page.",
        ));
    }
    if !has_session(app, headers) {
        return Err(Refusal("Sign in with the dashboard's token to act."));
    }
    Ok(())
}

/// Runs `query` on a pooled connection off the async threads.
async fn with_conn<T: Send + 'static>(
    app: &Arc<App>,
    query: impl FnOnce(&mut PgConnection) -> Result<T, AdminError> + Send + 'static,
) -> Result<T, Response> {
    let pool = app.pool.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut conn = pool
            .get()
            .map_err(|e| AdminError::Invalid(format!("no database connection: {e}")))?;
        query(&mut conn)
    })
    .await;
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(AdminError::NotFound(id))) => Err((
            StatusCode::NOT_FOUND,
            pages::refused(&format!("There is no job {id} (any more).")),
        )
            .into_response()),
        Ok(Err(AdminError::Running(id))) => Err((
            StatusCode::CONFLICT,
            pages::refused(&format!(
                "Job {id} is running right now; try again once it has ended."
            )),
        )
            .into_response()),
        Ok(Err(error)) => Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            pages::refused(&error.to_string()),
        )
            .into_response()),
        Err(_) => Err(StatusCode::INTERNAL_SERVER_ERROR.into_response()),
    }
}

// --- pages -----------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
struct Notice {
    done: Option<String>,
}

async fn overview(
    State(app): Shared,
    original: OriginalUri,
    uri: Uri,
    headers: HeaderMap,
    Query(notice): Query<Notice>,
) -> Response {
    let viewer = viewer(&app, &original, &uri, &headers);
    let data = with_conn(&app, |conn| {
        let status = admin::queue_status(conn, admin::RUNNER_FRESH_SECS)?;
        let paused = admin::paused_queues(conn)?;
        let minutes = admin::throughput(conn, None)?;
        Ok((status, paused, minutes))
    })
    .await;
    match data {
        Ok((status, paused, minutes)) => {
            pages::overview(&viewer, notice.done.as_deref(), &status, &paused, &minutes)
                .into_response()
        }
        Err(response) => response,
    }
}

/// A list's filters, as the query string carries them.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Filter {
    #[serde(default)]
    pub(crate) state: Option<String>,
    #[serde(default)]
    pub(crate) queue: Option<String>,
    #[serde(default, rename = "type")]
    pub(crate) job_type: Option<String>,
    /// The previous page's last job: `<last failure, µs since the epoch>.<id>`.
    #[serde(default)]
    pub(crate) after: Option<String>,
    #[serde(default)]
    pub(crate) done: Option<String>,
}

impl Filter {
    pub(crate) fn state(&self) -> JobState {
        match self.state.as_deref() {
            Some("dead") => JobState::Dead,
            Some("failing") => JobState::Failing,
            _ => JobState::Failed,
        }
    }

    pub(crate) fn state_name(&self) -> &'static str {
        match self.state() {
            JobState::Dead => "dead",
            JobState::Failing => "failing",
            _ => "failed",
        }
    }

    pub(crate) fn queue(&self) -> Option<&str> {
        self.queue.as_deref().filter(|q| !q.is_empty())
    }

    pub(crate) fn job_type(&self) -> Option<&str> {
        self.job_type.as_deref().filter(|t| !t.is_empty())
    }

    fn after(&self) -> Option<PageAfter> {
        let (micros, id) = self.after.as_deref()?.split_once('.')?;
        Some(PageAfter {
            last_failed_at: chrono::DateTime::from_timestamp_micros(micros.parse().ok()?)?,
            id: JobId(id.parse().ok()?),
        })
    }

    /// The query string of these filters (no page, no notice).
    pub(crate) fn query(&self) -> String {
        let mut pairs = vec![("state", self.state_name().to_owned())];
        if let Some(queue) = self.queue() {
            pairs.push(("queue", queue.to_owned()));
        }
        if let Some(job_type) = self.job_type() {
            pairs.push(("type", job_type.to_owned()));
        }
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// Percent-encodes a query string value.
pub(crate) fn encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Jobs shown on a page of a list.
pub(crate) const PAGE: i64 = 50;

async fn jobs(
    State(app): Shared,
    original: OriginalUri,
    uri: Uri,
    headers: HeaderMap,
    Query(filter): Query<Filter>,
) -> Response {
    let viewer = viewer(&app, &original, &uri, &headers);
    let query = filter.clone();
    let page = with_conn(&app, move |conn| {
        admin::failed_jobs_page(
            conn,
            query.state(),
            query.queue(),
            query.job_type(),
            query.after(),
            PAGE + 1,
        )
    })
    .await;
    match page {
        Ok(mut rows) => {
            let more = rows.len() > PAGE as usize;
            rows.truncate(PAGE as usize);
            pages::jobs(&viewer, &filter, &rows, more).into_response()
        }
        Err(response) => response,
    }
}

async fn job(
    State(app): Shared,
    original: OriginalUri,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(notice): Query<Notice>,
) -> Response {
    let viewer = viewer(&app, &original, &uri, &headers);
    match with_conn(&app, move |conn| admin::find_job(conn, JobId(id))).await {
        Ok(record) => pages::job(&viewer, notice.done.as_deref(), &record).into_response(),
        Err(response) => response,
    }
}

async fn runners(
    State(app): Shared,
    original: OriginalUri,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let viewer = viewer(&app, &original, &uri, &headers);
    match with_conn(&app, admin::runners).await {
        Ok(runners) => pages::runners(&viewer, &runners).into_response(),
        Err(response) => response,
    }
}

async fn login_form(
    State(app): Shared,
    original: OriginalUri,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    pages::login(&viewer(&app, &original, &uri, &headers), None).into_response()
}

async fn confirm_discard(
    State(app): Shared,
    original: OriginalUri,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    let viewer = viewer(&app, &original, &uri, &headers);
    match with_conn(&app, move |conn| admin::find_job(conn, JobId(id))).await {
        Ok(record) => pages::confirm_discard(&viewer, &record).into_response(),
        Err(response) => response,
    }
}

/// A bulk action on every job a list's filters select.
#[derive(Debug, Deserialize)]
struct BulkQuery {
    action: String,
    #[serde(flatten)]
    filter: Filter,
}

async fn confirm_bulk(
    State(app): Shared,
    original: OriginalUri,
    uri: Uri,
    headers: HeaderMap,
    Query(bulk): Query<BulkQuery>,
) -> Response {
    let viewer = viewer(&app, &original, &uri, &headers);
    let filter = bulk.filter.clone();
    let ids = with_conn(&app, move |conn| {
        admin::select_jobs(conn, filter.state(), filter.job_type(), filter.queue())
    })
    .await;
    match ids {
        Ok(ids) => {
            pages::confirm_bulk(&viewer, &bulk.action, &bulk.filter, ids.len()).into_response()
        }
        Err(response) => response,
    }
}

async fn stylesheet() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("style.css"),
    )
}

/// Headers on every response: no scripts, styles only from here, no
/// framing, no sniffing, no referrer to other sites.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

// --- actions ---------------------------------------------------------

/// The anti-forgery field every action's form carries.
#[derive(Debug, Deserialize)]
struct ActionForm {
    #[serde(default)]
    csrf: String,
}

fn back(base: &str, path: &str, done: &str) -> Response {
    let separator = if path.contains('?') { '&' } else { '?' };
    let target = if path == "/" {
        home(base)
    } else {
        format!("{base}{path}")
    };
    Redirect::to(&format!("{target}{separator}done={}", encode(done))).into_response()
}

async fn retry(
    State(app): Shared,
    original: OriginalUri,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Err(refused) = authorize(&app, &headers, &form.csrf) {
        return refused.into_response();
    }
    let base = Base::of(&original, &uri).0;
    match with_conn(&app, move |conn| admin::retry_job(conn, JobId(id))).await {
        Ok(()) => back(
            &base,
            &format!("/jobs/{id}"),
            "retried: it runs as soon as a worker is free",
        ),
        Err(response) => response,
    }
}

async fn discard(
    State(app): Shared,
    original: OriginalUri,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Err(refused) = authorize(&app, &headers, &form.csrf) {
        return refused.into_response();
    }
    let base = Base::of(&original, &uri).0;
    match with_conn(&app, move |conn| admin::discard_job(conn, JobId(id))).await {
        Ok(()) => back(&base, "/", &format!("job {id} discarded")),
        Err(response) => response,
    }
}

#[derive(Debug, Deserialize)]
struct BulkForm {
    #[serde(default)]
    csrf: String,
    action: String,
    #[serde(flatten)]
    filter: Filter,
}

async fn bulk(
    State(app): Shared,
    original: OriginalUri,
    uri: Uri,
    headers: HeaderMap,
    Form(form): Form<BulkForm>,
) -> Response {
    if let Err(refused) = authorize(&app, &headers, &form.csrf) {
        return refused.into_response();
    }
    let base = Base::of(&original, &uri).0;
    let retrying = match form.action.as_str() {
        "retry" => true,
        "discard" => false,
        _ => return (StatusCode::BAD_REQUEST, pages::refused("No such action.")).into_response(),
    };
    let filter = form.filter.clone();
    let done = with_conn(&app, move |conn| {
        let ids = admin::select_jobs(conn, filter.state(), filter.job_type(), filter.queue())?;
        let (mut changed, mut running) = (0, 0);
        for id in ids {
            let result = if retrying {
                admin::retry_job(conn, id)
            } else {
                admin::discard_job(conn, id)
            };
            match result {
                Ok(()) => changed += 1,
                Err(AdminError::Running(_) | AdminError::NotFound(_)) => running += 1,
                Err(error) => return Err(error),
            }
        }
        Ok((changed, running))
    })
    .await;
    match done {
        Ok((changed, skipped)) => {
            let verb = if retrying { "retried" } else { "discarded" };
            let note = if skipped > 0 {
                format!("{changed} jobs {verb}; {skipped} were running or gone and were left")
            } else {
                format!("{changed} jobs {verb}")
            };
            back(&base, &format!("/jobs?{}", form.filter.query()), &note)
        }
        Err(response) => response,
    }
}

async fn pause(
    state: Shared,
    original: OriginalUri,
    uri: Uri,
    headers: HeaderMap,
    Path(queue): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    pause_or_resume(state, original, uri, headers, queue, form, true).await
}

async fn resume(
    state: Shared,
    original: OriginalUri,
    uri: Uri,
    headers: HeaderMap,
    Path(queue): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    pause_or_resume(state, original, uri, headers, queue, form, false).await
}

async fn pause_or_resume(
    State(app): Shared,
    original: OriginalUri,
    uri: Uri,
    headers: HeaderMap,
    queue: String,
    form: ActionForm,
    pausing: bool,
) -> Response {
    if let Err(refused) = authorize(&app, &headers, &form.csrf) {
        return refused.into_response();
    }
    let base = Base::of(&original, &uri).0;
    let name = queue.clone();
    let changed = with_conn(&app, move |conn| {
        if pausing {
            admin::pause_queue(conn, &name)
        } else {
            admin::resume_queue(conn, &name)
        }
    })
    .await;
    match changed {
        Ok(_) => {
            let verb = if pausing { "paused" } else { "resumed" };
            back(&base, "/", &format!("queue {queue} {verb}"))
        }
        Err(response) => response,
    }
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    token: String,
}

async fn login(
    State(app): Shared,
    original: OriginalUri,
    uri: Uri,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let viewer = viewer(&app, &original, &uri, &headers);
    let Some(token) = &app.token else {
        return (
            StatusCode::FORBIDDEN,
            pages::refused("This dashboard is read-only: there is nothing to sign in to."),
        )
            .into_response();
    };
    if !same_origin(&headers) || !same(&form.csrf, &app.csrf) {
        return (
            StatusCode::FORBIDDEN,
            pages::refused("This request did not come from the dashboard's own page."),
        )
            .into_response();
    }
    if !same(&form.token, token) {
        return (
            StatusCode::FORBIDDEN,
            pages::login(&viewer, Some("That is not the dashboard's token.")),
        )
            .into_response();
    }
    let cookie = format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path={}",
        app.session,
        home(&viewer.base)
    );
    let mut response = Redirect::to(&home(&viewer.base)).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn logout(
    State(app): Shared,
    original: OriginalUri,
    uri: Uri,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    let base = Base::of(&original, &uri).0;
    if !same_origin(&headers) || !same(&form.csrf, &app.csrf) {
        return (
            StatusCode::FORBIDDEN,
            pages::refused("Not from the dashboard's page."),
        )
            .into_response();
    }
    let cookie = format!(
        "{COOKIE}=; HttpOnly; SameSite=Strict; Path={}; Max-Age=0",
        home(&base)
    );
    let mut response = Redirect::to(&home(&base)).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}
