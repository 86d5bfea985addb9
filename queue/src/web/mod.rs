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

use axum::extract::{Form, FromRequestParts, OriginalUri, Path, Query};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use diesel::PgConnection;
use maud::Markup;
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

const COOKIE: &str = "skiplock_session";

/// What every handler knows of its request: the shared state, where the
/// dashboard is mounted (`""` at the root), the headers.
struct Ctx {
    app: Arc<App>,
    base: String,
    headers: HeaderMap,
}

impl FromRequestParts<Arc<App>> for Ctx {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<App>,
    ) -> Result<Self, Self::Rejection> {
        let inner = parts.uri.path();
        let outer = parts
            .extensions
            .get::<OriginalUri>()
            .map_or(inner, |original| original.path());
        let base = if inner == "/" {
            outer.trim_end_matches('/')
        } else {
            outer.strip_suffix(inner).unwrap_or("")
        };
        Ok(Ctx {
            app: app.clone(),
            base: base.to_owned(),
            headers: parts.headers.clone(),
        })
    }
}

impl Ctx {
    fn viewer(&self) -> Viewer {
        Viewer {
            base: self.base.clone(),
            actions: self.app.token.is_some(),
            signed_in: self.app.token.is_some() && has_session(&self.app, &self.headers),
            csrf: self.app.csrf.clone(),
        }
    }

    /// Renders `page` from what `query` reads.
    async fn page<T: Send + 'static>(
        &self,
        query: impl FnOnce(&mut PgConnection) -> Result<T, AdminError> + Send + 'static,
        page: impl FnOnce(&Viewer, T) -> Markup,
    ) -> Response {
        match with_conn(&self.app, query).await {
            Ok(data) => page(&self.viewer(), data).into_response(),
            Err(response) => response,
        }
    }

    /// An action: refused unless authorized (see [`authorize`]); then
    /// `change`, whose note is shown on the page at `path` it leads back to.
    async fn act(
        &self,
        csrf: &str,
        path: String,
        change: impl FnOnce(&mut PgConnection) -> Result<String, AdminError> + Send + 'static,
    ) -> Response {
        if let Err(refused) = authorize(&self.app, &self.headers, csrf) {
            return refused.into_response();
        }
        match with_conn(&self.app, change).await {
            Ok(note) => {
                let separator = if path.contains('?') { '&' } else { '?' };
                let target = if path == "/" {
                    home(&self.base)
                } else {
                    format!("{}{path}", self.base)
                };
                Redirect::to(&format!("{target}{separator}done={}", encode(&note))).into_response()
            }
            Err(response) => response,
        }
    }

    /// A response that sets (or, with `None`, clears) the session cookie
    /// and leads to the overview.
    fn session_cookie(&self, value: Option<&str>) -> Response {
        let home = home(&self.base);
        let cookie = match value {
            Some(value) => format!("{COOKIE}={value}; HttpOnly; SameSite=Strict; Path={home}"),
            None => format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path={home}; Max-Age=0"),
        };
        let mut response = Redirect::to(&home).into_response();
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
        response
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

/// The refusal of a form that did not come from the dashboard's page.
const NOT_OURS: &str = "This request did not come from the dashboard's own page.";

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
    from_our_page(app, headers, csrf)?;
    if !has_session(app, headers) {
        return Err(Refusal("Sign in with the dashboard's token to act."));
    }
    Ok(())
}

/// A form posted from the dashboard's own page: the same site, and the
/// anti-forgery value only its pages carry.
fn from_our_page(app: &App, headers: &HeaderMap, csrf: &str) -> Result<(), Refusal> {
    if same_origin(headers) && same(csrf, &app.csrf) {
        Ok(())
    } else {
        Err(Refusal(NOT_OURS))
    }
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

async fn overview(ctx: Ctx, Query(notice): Query<Notice>) -> Response {
    ctx.page(
        |conn| {
            let status = admin::queue_status(conn, admin::RUNNER_FRESH_SECS)?;
            let paused = admin::paused_queues(conn)?;
            let minutes = admin::throughput(conn, None)?;
            let schedules = admin::schedules(conn, admin::RUNNER_FRESH_SECS)?;
            Ok((status, paused, minutes, schedules))
        },
        |viewer, (status, paused, minutes, schedules)| {
            pages::overview(
                viewer,
                notice.done.as_deref(),
                &pages::Overview {
                    status: &status,
                    paused: &paused,
                    minutes: &minutes,
                    schedules: &schedules,
                },
            )
        },
    )
    .await
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

    /// The ids of the jobs these filters select.
    fn select(&self, conn: &mut PgConnection) -> Result<Vec<JobId>, AdminError> {
        admin::select_jobs(conn, self.state(), self.job_type(), self.queue())
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

async fn jobs(ctx: Ctx, Query(filter): Query<Filter>) -> Response {
    let query = filter.clone();
    ctx.page(
        move |conn| {
            admin::failed_jobs_page(
                conn,
                query.state(),
                query.queue(),
                query.job_type(),
                query.after(),
                PAGE + 1,
            )
        },
        |viewer, mut rows| {
            let more = rows.len() > PAGE as usize;
            rows.truncate(PAGE as usize);
            pages::jobs(viewer, &filter, &rows, more)
        },
    )
    .await
}

async fn job(ctx: Ctx, Path(id): Path<i64>, Query(notice): Query<Notice>) -> Response {
    ctx.page(
        move |conn| admin::find_job(conn, JobId(id)),
        |viewer, record| pages::job(viewer, notice.done.as_deref(), &record),
    )
    .await
}

async fn runners(ctx: Ctx) -> Response {
    ctx.page(admin::runners, |viewer, runners| {
        pages::runners(viewer, &runners)
    })
    .await
}

async fn login_form(ctx: Ctx) -> Response {
    pages::login(&ctx.viewer(), None).into_response()
}

async fn confirm_discard(ctx: Ctx, Path(id): Path<i64>) -> Response {
    ctx.page(
        move |conn| admin::find_job(conn, JobId(id)),
        |viewer, record| pages::confirm_discard(viewer, &record),
    )
    .await
}

/// A bulk action on every job a list's filters select.
#[derive(Debug, Deserialize)]
struct BulkQuery {
    action: String,
    #[serde(flatten)]
    filter: Filter,
}

async fn confirm_bulk(ctx: Ctx, Query(bulk): Query<BulkQuery>) -> Response {
    let filter = bulk.filter.clone();
    ctx.page(
        move |conn| filter.select(conn),
        |viewer, ids| pages::confirm_bulk(viewer, &bulk.action, &bulk.filter, ids.len()),
    )
    .await
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

async fn retry(ctx: Ctx, Path(id): Path<i64>, Form(form): Form<ActionForm>) -> Response {
    ctx.act(&form.csrf, format!("/jobs/{id}"), move |conn| {
        admin::retry_job(conn, JobId(id))?;
        Ok("retried: it runs as soon as a worker is free".into())
    })
    .await
}

async fn discard(ctx: Ctx, Path(id): Path<i64>, Form(form): Form<ActionForm>) -> Response {
    ctx.act(&form.csrf, "/".into(), move |conn| {
        admin::discard_job(conn, JobId(id))?;
        Ok(format!("job {id} discarded"))
    })
    .await
}

#[derive(Debug, Deserialize)]
struct BulkForm {
    #[serde(default)]
    csrf: String,
    action: String,
    #[serde(flatten)]
    filter: Filter,
}

/// What a bulk action does to each job.
type JobChange = fn(&mut PgConnection, JobId) -> Result<(), AdminError>;

async fn bulk(ctx: Ctx, Form(form): Form<BulkForm>) -> Response {
    let (change, verb): (JobChange, _) = match form.action.as_str() {
        "retry" => (admin::retry_job, "retried"),
        "discard" => (admin::discard_job, "discarded"),
        _ => return (StatusCode::BAD_REQUEST, pages::refused("No such action.")).into_response(),
    };
    let filter = form.filter.clone();
    ctx.act(
        &form.csrf,
        format!("/jobs?{}", form.filter.query()),
        move |conn| {
            let (mut changed, mut skipped) = (0, 0);
            for id in filter.select(conn)? {
                match change(conn, id) {
                    Ok(()) => changed += 1,
                    Err(AdminError::Running(_) | AdminError::NotFound(_)) => skipped += 1,
                    Err(error) => return Err(error),
                }
            }
            Ok(if skipped > 0 {
                format!("{changed} jobs {verb}; {skipped} were running or gone and were left")
            } else {
                format!("{changed} jobs {verb}")
            })
        },
    )
    .await
}

async fn pause(ctx: Ctx, Path(queue): Path<String>, Form(form): Form<ActionForm>) -> Response {
    ctx.act(&form.csrf, "/".into(), move |conn| {
        admin::pause_queue(conn, &queue)?;
        Ok(format!("queue {queue} paused"))
    })
    .await
}

async fn resume(ctx: Ctx, Path(queue): Path<String>, Form(form): Form<ActionForm>) -> Response {
    ctx.act(&form.csrf, "/".into(), move |conn| {
        admin::resume_queue(conn, &queue)?;
        Ok(format!("queue {queue} resumed"))
    })
    .await
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    token: String,
}

async fn login(ctx: Ctx, Form(form): Form<LoginForm>) -> Response {
    let Some(token) = &ctx.app.token else {
        return Refusal("This dashboard is read-only: there is nothing to sign in to.")
            .into_response();
    };
    if let Err(refused) = from_our_page(&ctx.app, &ctx.headers, &form.csrf) {
        return refused.into_response();
    }
    if !same(&form.token, token) {
        return (
            StatusCode::FORBIDDEN,
            pages::login(&ctx.viewer(), Some("That is not the dashboard's token.")),
        )
            .into_response();
    }
    ctx.session_cookie(Some(&ctx.app.session))
}

async fn logout(ctx: Ctx, Form(form): Form<ActionForm>) -> Response {
    if let Err(refused) = from_our_page(&ctx.app, &ctx.headers, &form.csrf) {
        return refused.into_response();
    }
    ctx.session_cookie(None)
}
