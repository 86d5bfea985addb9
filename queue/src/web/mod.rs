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
//! An operator signs in with the token the dashboard was given, to read
//! and to act ([`Dashboard::public_read`] opens reading to anyone). Each
//! sign-in is a session of its own, stored in the database (its SHA-256,
//! never the cookie's value), so that every server of the dashboard knows
//! it; it expires ([`Dashboard::session_lifetime`], 12 hours) and signing
//! out ends it. The cookie is `HttpOnly`, `SameSite=Strict`, and `Secure`
//! when told the dashboard is reached over https
//! ([`Dashboard::secure_cookies`]). Wrong tokens are limited to 10 a
//! minute per client address. Every action needs a signed-in operator and
//! a form field derived from the session, only the dashboard's own pages
//! carry it, and is refused when the request's `Origin` is another site. A
//! [read-only](Dashboard::read_only) dashboard has no actions.
//!
//! Requests whose `Host` is not one of the dashboard's names are refused
//! (a DNS-rebinding page reaches a server on localhost under its own
//! name): `localhost`, IP addresses, and the names given with
//! [`Dashboard::allow_host`].
//!
//! ```no_run
//! # async fn demo(pool: skiplock::PgPool) -> std::io::Result<()> {
//! let dashboard = skiplock::web::Dashboard::new(pool)
//!     .token(std::env::var("SKIPLOCK_WEB_TOKEN").expect("a token"))
//!     .allow_host("jobs.example.com")
//!     .secure_cookies();
//! let app = axum::Router::new().nest("/admin/jobs", dashboard.router());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! // The client's address limits its wrong tokens (without it, all
//! // clients share one limit).
//! let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
//! axum::serve(listener, app).await
//! # }
//! ```

mod chart;
mod pages;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{
    ConnectInfo, Form, FromRequestParts, OriginalUri, Path, Query, Request, State,
};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use diesel::PgConnection;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use maud::Markup;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::admin::{self, JobState, PageAfter};
use crate::connection::PgPool;
use crate::errors::AdminError;
use crate::job::JobId;
use crate::storage::sessions;

/// How long a sign-in lasts unless told otherwise.
pub const DEFAULT_SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// Wrong tokens a client may send in a burst, and a minute's worth after.
const SIGN_INS_PER_MINUTE: u32 = 10;

/// The dashboard, ready to become a router.
pub struct Dashboard {
    pool: PgPool,
    token: Option<String>,
    read_only: bool,
    public_read: bool,
    hosts: Vec<String>,
    secure_cookies: bool,
    session_lifetime: Duration,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard")
            .field("sign_in", &self.token.is_some())
            .field("read_only", &self.read_only)
            .field("public_read", &self.public_read)
            .field("hosts", &self.hosts)
            .field("secure_cookies", &self.secure_cookies)
            .finish_non_exhaustive()
    }
}

impl Dashboard {
    /// A dashboard over the queue behind `pool` (a few connections are
    /// enough: each page runs its queries on one). Give it a
    /// [token](Self::token) to sign in with, or [open reading](Self::public_read):
    /// without either it shows nothing.
    pub fn new(pool: PgPool) -> Self {
        Dashboard {
            pool,
            token: None,
            read_only: false,
            public_read: false,
            hosts: Vec::new(),
            secure_cookies: false,
            session_lifetime: DEFAULT_SESSION_LIFETIME,
        }
    }

    /// Lets whoever signs in with `token` read and act (use a long random
    /// one: [`random_token`]). An empty token is no token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        let token = token.into();
        self.token = (!token.is_empty()).then_some(token);
        self
    }

    /// No actions at all, whoever asks: no retry, discard, pause or resume.
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// Pages can be read without signing in (actions still need it).
    pub fn public_read(mut self) -> Self {
        self.public_read = true;
        self
    }

    /// Answers requests for this host name too (the name in the browser's
    /// address bar, without a port). `localhost` and IP addresses are
    /// always answered; any other name is refused.
    pub fn allow_host(mut self, name: impl Into<String>) -> Self {
        self.hosts.push(name.into().to_ascii_lowercase());
        self
    }

    /// Marks the session cookie `Secure`: do this when the dashboard is
    /// reached over https (served with TLS, or behind a proxy that
    /// terminates it), so the browser never sends the cookie in clear.
    pub fn secure_cookies(mut self) -> Self {
        self.secure_cookies = true;
        self
    }

    /// How long a sign-in lasts ([`DEFAULT_SESSION_LIFETIME`]: 12 hours).
    pub fn session_lifetime(mut self, lifetime: Duration) -> Self {
        self.session_lifetime = lifetime.max(Duration::from_secs(1));
        self
    }

    /// The router serving every page, its stylesheet and its actions.
    pub fn router(self) -> Router {
        let token_hash = self.token.as_deref().map(|t| sha256(t.as_bytes()));
        let app = Arc::new(App {
            pool: self.pool,
            actions: self.token.is_some() && !self.read_only,
            token: self.token,
            token_hash,
            public_read: self.public_read,
            hosts: self.hosts,
            secure_cookies: self.secure_cookies,
            session_lifetime: self.session_lifetime,
            login_csrf: random_token(),
            sign_ins: RateLimiter::keyed(Quota::per_minute(
                NonZeroU32::new(SIGN_INS_PER_MINUTE).expect("not 0"),
            )),
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
            .route("/search", get(search))
            .route("/login", get(login_form).post(login))
            .route("/logout", post(logout))
            .route("/style.css", get(stylesheet))
            .layer(axum::middleware::from_fn_with_state(
                app.clone(),
                known_host,
            ))
            .layer(axum::middleware::map_response(security_headers))
            .with_state(app)
    }
}

/// 32 random bytes as 64 hex digits, from the operating system's source.
pub fn random_token() -> String {
    let mut bytes = [0_u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system gives random bytes");
    hex(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

/// What every handler shares.
struct App {
    pool: PgPool,
    /// The token that signs an operator in; `None`: no one signs in.
    token: Option<String>,
    /// Its SHA-256, stored with each sign-in.
    token_hash: Option<Vec<u8>>,
    /// A signed-in operator may act.
    actions: bool,
    /// Reading needs no sign-in.
    public_read: bool,
    /// Host names answered besides `localhost` and IP addresses.
    hosts: Vec<String>,
    secure_cookies: bool,
    session_lifetime: Duration,
    /// The anti-forgery value of the sign-in form.
    login_csrf: String,
    /// Sign-in attempts per client address.
    sign_ins: DefaultKeyedRateLimiter<IpAddr>,
}

const COOKIE: &str = "skiplock_session";

/// What every handler knows of its request: the shared state, where the
/// dashboard is mounted (`""` at the root), the headers, the operator's
/// live session (the cookie's value) and the client's address.
struct Ctx {
    app: Arc<App>,
    base: String,
    headers: HeaderMap,
    session: Option<String>,
    client: Option<IpAddr>,
    /// The status of the failure of the session's lookup, if it failed.
    failed: Option<StatusCode>,
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
        let client = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0.ip());
        let (mut session, mut failed) = (None, None);
        if let (Some(value), Some(token_hash)) = (cookie(&parts.headers), &app.token_hash) {
            let (id_hash, token_hash) = (sha256(value.as_bytes()), token_hash.clone());
            match with_conn(app, move |conn| {
                Ok(sessions::session_is_live(conn, &id_hash, &token_hash)?)
            })
            .await
            {
                Ok(live) => session = live.then_some(value),
                // Pages and actions answer that the database failed.
                Err(response) => failed = Some(response.status()),
            }
        }
        Ok(Ctx {
            app: app.clone(),
            base: base.to_owned(),
            headers: parts.headers.clone(),
            session,
            client,
            failed,
        })
    }
}

impl Ctx {
    fn viewer(&self) -> Viewer {
        Viewer {
            base: self.base.clone(),
            actions: self.app.actions,
            sign_in: self.app.token.is_some(),
            signed_in: self.session.is_some(),
            csrf: self.csrf(),
        }
    }

    /// The anti-forgery value of this request's forms: derived from the
    /// session (any server of the dashboard derives the same), or the
    /// sign-in form's.
    fn csrf(&self) -> String {
        match &self.session {
            Some(session) => session_csrf(session),
            None => self.app.login_csrf.clone(),
        }
    }

    /// The answer to a request that may not read pages, if this one may not.
    fn unread(&self) -> Option<Response> {
        if let Some(status) = self.failed {
            return Some(database_failed(status));
        }
        if self.app.public_read || self.session.is_some() {
            None
        } else if self.app.token.is_some() {
            Some(Redirect::to(&format!("{}/login", self.base)).into_response())
        } else {
            Some(
                Refusal(
                    "This dashboard was given no token to sign in with, and reading is not public.",
                )
                .into_response(),
            )
        }
    }

    /// Renders `page` from what `query` reads, for an operator who may read.
    async fn page<T: Send + 'static>(
        &self,
        query: impl FnOnce(&mut PgConnection) -> Result<T, AdminError> + Send + 'static,
        page: impl FnOnce(&Viewer, T) -> Markup,
    ) -> Response {
        if let Some(response) = self.unread() {
            return response;
        }
        match with_conn(&self.app, query).await {
            Ok(data) => page(&self.viewer(), data).into_response(),
            Err(response) => response,
        }
    }

    /// An action: refused unless authorized (see [`authorize`]); then
    /// `change`, whose notice is shown on the page at `path` it leads back to.
    async fn act(
        &self,
        csrf: &str,
        path: String,
        change: impl FnOnce(&mut PgConnection) -> Result<Done, AdminError> + Send + 'static,
    ) -> Response {
        if let Some(status) = self.failed {
            return database_failed(status);
        }
        if let Err(refused) = authorize(self, csrf) {
            return refused.into_response();
        }
        match with_conn(&self.app, change).await {
            Ok(done) => {
                let separator = if path.contains('?') { '&' } else { '?' };
                let target = if path == "/" {
                    home(&self.base)
                } else {
                    format!("{}{path}", self.base)
                };
                Redirect::to(&format!("{target}{separator}{}", done.query())).into_response()
            }
            Err(response) => response,
        }
    }

    /// A response that sets (or, with `None`, clears) the session cookie
    /// and leads to the overview.
    fn session_cookie(&self, value: Option<&str>) -> Response {
        let home = home(&self.base);
        let secure = if self.app.secure_cookies {
            "; Secure"
        } else {
            ""
        };
        let cookie = match value {
            Some(value) => format!(
                "{COOKIE}={value}; HttpOnly; SameSite=Strict; Path={home}; Max-Age={}{secure}",
                self.app.session_lifetime.as_secs()
            ),
            None => format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path={home}; Max-Age=0{secure}"),
        };
        let mut response = Redirect::to(&home).into_response();
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
        response
    }
}

/// The session cookie's value, if the request has one.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|cookies| cookies.split(';'))
        .filter_map(|cookie| cookie.trim().split_once('='))
        .find(|(name, value)| *name == COOKIE && !value.is_empty())
        .map(|(_, value)| value.to_owned())
}

/// The anti-forgery value of a session's forms.
fn session_csrf(session: &str) -> String {
    hex(&sha256(format!("skiplock csrf {session}").as_bytes()))
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
    /// A signed-in operator may act.
    pub(crate) actions: bool,
    /// One can sign in (a token was given).
    pub(crate) sign_in: bool,
    /// The operator signed in.
    pub(crate) signed_in: bool,
    pub(crate) csrf: String,
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

/// Answers only requests for one of the dashboard's host names.
async fn known_host(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    if host.is_some_and(|host| host_allowed(&app.hosts, host)) {
        next.run(request).await
    } else {
        (
            StatusCode::MISDIRECTED_REQUEST,
            pages::refused(
                "This dashboard does not answer to this host name. Its operator can allow it \
                 (`skiplock web --host NAME`, `Dashboard::allow_host`).",
            ),
        )
            .into_response()
    }
}

/// Whether `host` (a `Host` header: a name or address, maybe a port) is
/// `localhost`, an IP address, or one of `allowed`.
fn host_allowed(allowed: &[String], host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        match rest.split_once(']') {
            Some((address, _)) => return address.parse::<std::net::Ipv6Addr>().is_ok(),
            None => return false,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.parse::<Ipv4Addr>().is_ok()
        || allowed.iter().any(|a| a.trim_end_matches('.') == name)
}

/// Why a request was refused.
struct Refusal(&'static str);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (StatusCode::FORBIDDEN, pages::refused(self.0)).into_response()
    }
}

/// A request the dashboard cannot make sense of: 400, and why.
fn bad_request(why: &str) -> Response {
    (StatusCode::BAD_REQUEST, pages::refused(why)).into_response()
}

/// The refusal of a form that did not come from the dashboard's page.
const NOT_OURS: &str = "This request did not come from the dashboard's own page.";

/// The checks of every action: a dashboard with actions, a signed-in
/// operator, the session's anti-forgery value, the same site.
fn authorize(ctx: &Ctx, csrf: &str) -> Result<(), Refusal> {
    if !ctx.app.actions {
        return Err(Refusal(
            "This dashboard is read-only: it was started without actions.",
        ));
    }
    if !same_origin(&ctx.headers) {
        return Err(Refusal(NOT_OURS));
    }
    let Some(session) = &ctx.session else {
        return Err(Refusal("Sign in with the dashboard's token to act."));
    };
    if same(csrf, &session_csrf(session)) {
        Ok(())
    } else {
        Err(Refusal(NOT_OURS))
    }
}

/// Runs `query` on a pooled connection off the async threads. A failure
/// of the database is told without its text (it may quote what the
/// request carried); the text goes to the log.
async fn with_conn<T: Send + 'static>(
    app: &Arc<App>,
    query: impl FnOnce(&mut PgConnection) -> Result<T, AdminError> + Send + 'static,
) -> Result<T, Response> {
    let pool = app.pool.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut conn = pool.get().map_err(|_| Unreachable)?;
        query(&mut conn).map_err(Failed)
    })
    .await;
    let unreachable = || database_failed(StatusCode::SERVICE_UNAVAILABLE);
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(Unreachable)) => Err(unreachable()),
        Ok(Err(Failed(AdminError::NotFound(id)))) => Err((
            StatusCode::NOT_FOUND,
            pages::refused(&format!("There is no job {id} (any more).")),
        )
            .into_response()),
        Ok(Err(Failed(AdminError::Running(id)))) => Err((
            StatusCode::CONFLICT,
            pages::refused(&format!(
                "Job {id} is running right now; try again once it has ended."
            )),
        )
            .into_response()),
        Ok(Err(Failed(AdminError::Invalid(why)))) => Err(bad_request(&why)),
        Ok(Err(Failed(AdminError::Database(error)))) if connection_lost(&error) => {
            tracing::warn!(%error, "the dashboard lost its database connection");
            Err(unreachable())
        }
        Ok(Err(Failed(error))) => {
            tracing::warn!(%error, "a dashboard page's query failed");
            Err(database_failed(StatusCode::INTERNAL_SERVER_ERROR))
        }
        Err(_) => Err(StatusCode::INTERNAL_SERVER_ERROR.into_response()),
    }
}

/// The page of a database failure: unreachable (503), or a query that
/// failed (500), without the database's text.
fn database_failed(status: StatusCode) -> Response {
    let why = if status == StatusCode::SERVICE_UNAVAILABLE {
        "The database is unreachable."
    } else {
        "The database could not answer this request."
    };
    (status, pages::refused(why)).into_response()
}

/// How a page's query failed.
enum QueryFailure {
    /// No connection could be had.
    Unreachable,
    /// The query failed.
    Failed(AdminError),
}
use QueryFailure::{Failed, Unreachable};

/// Whether the connection itself went (not the statement).
fn connection_lost(error: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    matches!(
        error,
        Error::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
            _
        ) | Error::BrokenTransactionManager
    )
}

/// The notice an action leaves: one of the dashboard's own texts, chosen
/// by a code in the address, with numbers at most (never text from the
/// address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Done {
    Retried,
    Discarded(i64),
    Bulk {
        retried: bool,
        changed: u64,
        left: u64,
    },
    Paused,
    Resumed,
}

impl Done {
    fn query(self) -> String {
        match self {
            Done::Retried => "done=retried".into(),
            Done::Discarded(id) => format!("done=discarded&n={id}"),
            Done::Bulk {
                retried,
                changed,
                left,
            } => format!(
                "done={}&n={changed}&m={left}",
                if retried {
                    "bulk-retried"
                } else {
                    "bulk-discarded"
                }
            ),
            Done::Paused => "done=paused".into(),
            Done::Resumed => "done=resumed".into(),
        }
    }
}

/// A notice as the address carries it (`done`, `n`, `m`).
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Notice {
    #[serde(default)]
    done: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    m: Option<String>,
}

impl Notice {
    /// The dashboard's own text for the code, if it is one of its codes.
    pub(crate) fn text(&self) -> Option<String> {
        let number = |value: &Option<String>| value.as_deref().and_then(|v| v.parse::<u64>().ok());
        let (n, m) = (number(&self.n), number(&self.m));
        Some(match (self.done.as_deref()?, n, m) {
            ("retried", _, _) => "retried: it runs as soon as a worker is free".into(),
            ("discarded", Some(id), _) => format!("job {id} discarded"),
            ("bulk-retried" | "bulk-discarded", Some(changed), left) => {
                let verb = if self.done.as_deref() == Some("bulk-retried") {
                    "retried"
                } else {
                    "discarded"
                };
                match left {
                    Some(left) if left > 0 => {
                        format!("{changed} jobs {verb}; {left} were running or gone and were left")
                    }
                    _ => format!("{changed} jobs {verb}"),
                }
            }
            ("paused", _, _) => "queue paused: running jobs finish, nothing new starts".into(),
            ("resumed", _, _) => "queue resumed".into(),
            _ => return None,
        })
    }
}

// --- pages -----------------------------------------------------------

/// The limited keys the overview shows, those waiting longest first.
const FLOW_KEYS: i64 = 20;

async fn overview(ctx: Ctx, Query(notice): Query<Notice>) -> Response {
    ctx.page(
        |conn| {
            let status = crate::overview(conn, admin::RUNNER_FRESH_SECS)?;
            let paused = admin::paused_queues(conn)?;
            let minutes = admin::throughput(conn, None)?;
            let schedules = admin::schedules(conn, admin::RUNNER_FRESH_SECS)?;
            let flow = crate::limits::flow_status(conn, FLOW_KEYS)?;
            Ok((status, paused, minutes, schedules, flow))
        },
        |viewer, (status, paused, minutes, schedules, flow)| {
            pages::overview(
                viewer,
                notice.text().as_deref(),
                &pages::Overview {
                    status: &status,
                    paused: &paused,
                    minutes: &minutes,
                    schedules: &schedules,
                    flow: &flow,
                },
            )
        },
    )
    .await
}

/// The queue and job type a list or a search narrows to, as the query
/// string carries them (an empty field selects every name).
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Names {
    #[serde(default)]
    pub(crate) queue: Option<String>,
    #[serde(default, rename = "type")]
    pub(crate) job_type: Option<String>,
}

impl Names {
    pub(crate) fn queue(&self) -> Option<&str> {
        given(&self.queue)
    }

    pub(crate) fn job_type(&self) -> Option<&str> {
        given(&self.job_type)
    }

    /// The query string pairs of these names.
    fn pairs(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [("queue", self.queue()), ("type", self.job_type())]
            .into_iter()
            .filter_map(|(key, value)| Some((key, value?)))
    }
}

/// A field's value, unless it is absent or blank.
fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.trim().is_empty())
}

/// Why a request's fields cannot be used if one holds a NUL character (no
/// text in PostgreSQL holds one).
fn nul_in(fields: &[&Option<String>]) -> Result<(), &'static str> {
    if fields
        .iter()
        .any(|f| f.as_deref().is_some_and(|v| v.contains('\0')))
    {
        return Err("A filter holds a NUL character.");
    }
    Ok(())
}

/// A query string of these pairs, each value percent-encoded.
fn query_string<'a>(pairs: impl IntoIterator<Item = (&'static str, &'a str)>) -> String {
    pairs
        .into_iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A list's filters, as the query string carries them.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Filter {
    #[serde(default)]
    pub(crate) state: Option<String>,
    #[serde(flatten)]
    pub(crate) names: Names,
    /// The previous page's last job: `<last failure, µs since the epoch>.<id>`.
    #[serde(default)]
    pub(crate) after: Option<String>,
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
        self.names.queue()
    }

    pub(crate) fn job_type(&self) -> Option<&str> {
        self.names.job_type()
    }

    fn after(&self) -> Option<PageAfter> {
        let (micros, id) = self.after.as_deref()?.split_once('.')?;
        let last_failed_at = chrono::DateTime::from_timestamp_micros(micros.parse().ok()?)?;
        // PostgreSQL's timestamps end in the years 4713 BC and 294276.
        let year = chrono::Datelike::year(&last_failed_at);
        if !(-4712..=294_275).contains(&year) {
            return None;
        }
        Some(PageAfter {
            last_failed_at,
            id: JobId(id.parse().ok()?),
        })
    }

    /// Why these filters cannot be used, if they cannot: a NUL character,
    /// a page position this dashboard did not make.
    fn invalid(&self) -> Option<&'static str> {
        let fields = [
            &self.state,
            &self.names.queue,
            &self.names.job_type,
            &self.after,
        ];
        if let Err(why) = nul_in(&fields) {
            return Some(why);
        }
        if self.after.is_some() && self.after().is_none() {
            return Some("The page position (`after`) is not one this dashboard made.");
        }
        None
    }

    /// How many jobs these filters select.
    fn count(&self, conn: &mut PgConnection) -> Result<i64, AdminError> {
        admin::count_failed_jobs(conn, self.state(), self.job_type(), self.queue())
    }

    /// The query string of these filters (no page, no notice).
    pub(crate) fn query(&self) -> String {
        query_string(
            [("state", self.state_name())]
                .into_iter()
                .chain(self.names.pairs()),
        )
    }
}

/// Percent-encodes a query string value.
pub(crate) fn encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Jobs shown on a page of a list.
pub(crate) const PAGE: i64 = 50;

/// The filters of a request, or why it cannot use them.
fn filters(filter: Result<Query<Filter>, QueryRejection>) -> Result<Filter, &'static str> {
    let Ok(Query(filter)) = filter else {
        return Err("The address's parameters are malformed.");
    };
    match filter.invalid() {
        Some(why) => Err(why),
        None => Ok(filter),
    }
}

async fn jobs(
    ctx: Ctx,
    filter: Result<Query<Filter>, QueryRejection>,
    Query(notice): Query<Notice>,
) -> Response {
    let filter = match filters(filter) {
        Ok(filter) => filter,
        Err(why) => return bad_request(why),
    };
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
            pages::jobs(viewer, &filter, notice.text().as_deref(), &rows, more)
        },
    )
    .await
}

async fn job(ctx: Ctx, Path(id): Path<i64>, Query(notice): Query<Notice>) -> Response {
    ctx.page(
        move |conn| admin::find_job(conn, JobId(id)),
        |viewer, record| pages::job(viewer, notice.text().as_deref(), &record),
    )
    .await
}

/// Matches a search page shows at most.
pub(crate) const SEARCH_PAGE: i64 = 50;

/// Jobs a search request examines at most (the newest below its start).
pub(crate) const SEARCH_BUDGET: i64 = 20_000;

/// A search's fields, as the query string carries them.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct SearchQuery {
    #[serde(default)]
    pub(crate) state: Option<String>,
    #[serde(flatten)]
    pub(crate) names: Names,
    #[serde(default)]
    pub(crate) payload: Option<String>,
    #[serde(default)]
    pub(crate) before: Option<String>,
}

/// The longest payload filter accepted.
const PAYLOAD_FILTER_BYTES: usize = 4_096;

impl SearchQuery {
    pub(crate) fn queue(&self) -> Option<&str> {
        self.names.queue()
    }

    pub(crate) fn job_type(&self) -> Option<&str> {
        self.names.job_type()
    }

    pub(crate) fn payload(&self) -> Option<&str> {
        given(&self.payload)
    }

    pub(crate) fn state_name(&self) -> &'static str {
        match given(&self.state) {
            Some("ready") => "ready",
            Some("scheduled") => "scheduled",
            Some("failing") => "failing",
            Some("dead") => "dead",
            _ => "any",
        }
    }

    /// The search these fields ask for, or why they cannot be used.
    fn search(&self) -> Result<admin::JobSearch, &'static str> {
        nul_in(&[
            &self.state,
            &self.names.queue,
            &self.names.job_type,
            &self.before,
        ])?;
        let payload = match self.payload() {
            None => None,
            Some(text) if text.len() > PAYLOAD_FILTER_BYTES => {
                return Err("The payload filter is longer than 4,096 bytes.")
            }
            Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
                Ok(value @ (serde_json::Value::Object(_) | serde_json::Value::Array(_))) => {
                    Some(value)
                }
                _ => return Err(
                    "The payload filter is not a JSON object or array (such as {\"user_id\": 42}).",
                ),
            },
        };
        let before = match given(&self.before) {
            None => None,
            Some(text) => {
                Some(JobId(text.trim().parse().map_err(|_| {
                    "The search position (`before`) is not a job id."
                })?))
            }
        };
        Ok(admin::JobSearch {
            state: match self.state_name() {
                "ready" => crate::SearchState::Ready,
                "scheduled" => crate::SearchState::Scheduled,
                "failing" => crate::SearchState::Failing,
                "dead" => crate::SearchState::Dead,
                _ => crate::SearchState::Any,
            },
            queue: self.queue().map(str::to_owned),
            job_type: self.job_type().map(str::to_owned),
            payload,
            before,
        })
    }

    /// The query string of these fields, without the position.
    pub(crate) fn query(&self) -> String {
        query_string(
            [("state", self.state_name())]
                .into_iter()
                .chain(self.names.pairs())
                .chain(self.payload().map(|p| ("payload", p))),
        )
    }
}

async fn search(ctx: Ctx, query: Result<Query<SearchQuery>, QueryRejection>) -> Response {
    let Ok(Query(query)) = query else {
        return bad_request("The address's parameters are malformed.");
    };
    let search = match query.search() {
        Ok(search) => search,
        Err(why) => return bad_request(why),
    };
    ctx.page(
        move |conn| admin::search_jobs(conn, &search, SEARCH_PAGE, SEARCH_BUDGET),
        |viewer, page| pages::search(viewer, &query, &page),
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
    if ctx.session.is_some() {
        return Redirect::to(&home(&ctx.base)).into_response();
    }
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
struct BulkAction {
    #[serde(default)]
    action: String,
}

async fn confirm_bulk(
    ctx: Ctx,
    Query(bulk): Query<BulkAction>,
    filter: Result<Query<Filter>, QueryRejection>,
) -> Response {
    let filter = match filters(filter) {
        Ok(filter) => filter,
        Err(why) => return bad_request(why),
    };
    let selection = filter.clone();
    ctx.page(
        move |conn| selection.count(conn),
        |viewer, count| pages::confirm_bulk(viewer, &bulk.action, &filter, count),
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
        Ok(Done::Retried)
    })
    .await
}

async fn discard(ctx: Ctx, Path(id): Path<i64>, Form(form): Form<ActionForm>) -> Response {
    ctx.act(&form.csrf, "/".into(), move |conn| {
        admin::discard_job(conn, JobId(id))?;
        Ok(Done::Discarded(id))
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

async fn bulk(ctx: Ctx, Form(form): Form<BulkForm>) -> Response {
    let change = match form.action.as_str() {
        "retry" => crate::BulkChange::Retry,
        "discard" => crate::BulkChange::Discard,
        _ => return bad_request("No such action."),
    };
    if let Some(why) = form.filter.invalid() {
        return bad_request(why);
    }
    let filter = form.filter.clone();
    ctx.act(
        &form.csrf,
        format!("/jobs?{}", form.filter.query()),
        move |conn| {
            let outcome = admin::change_failed_jobs(
                conn,
                change,
                filter.state(),
                filter.job_type(),
                filter.queue(),
            )?;
            Ok(Done::Bulk {
                retried: change == crate::BulkChange::Retry,
                changed: outcome.changed,
                left: outcome.left,
            })
        },
    )
    .await
}

async fn pause(ctx: Ctx, Path(queue): Path<String>, Form(form): Form<ActionForm>) -> Response {
    ctx.act(&form.csrf, "/".into(), move |conn| {
        admin::pause_queue(conn, &queue)?;
        Ok(Done::Paused)
    })
    .await
}

async fn resume(ctx: Ctx, Path(queue): Path<String>, Form(form): Form<ActionForm>) -> Response {
    ctx.act(&form.csrf, "/".into(), move |conn| {
        admin::resume_queue(conn, &queue)?;
        Ok(Done::Resumed)
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
    let (Some(token), Some(token_hash)) = (&ctx.app.token, &ctx.app.token_hash) else {
        return Refusal("This dashboard was given no token: there is nothing to sign in to.")
            .into_response();
    };
    if !same_origin(&ctx.headers) || !same(&form.csrf, &ctx.app.login_csrf) {
        return Refusal(NOT_OURS).into_response();
    }
    // Every attempt counts (a right token too, once the client is over its
    // limit): guessing is as slow as the limit.
    let client = ctx.client.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    if ctx.app.sign_ins.check_key(&client).is_err() {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, HeaderValue::from_static("60"))],
            pages::login(
                &ctx.viewer(),
                Some("Too many sign-in attempts from this address: wait a minute."),
            ),
        )
            .into_response();
    }
    if !same(&form.token, token) {
        return (
            StatusCode::FORBIDDEN,
            pages::login(&ctx.viewer(), Some("That is not the dashboard's token.")),
        )
            .into_response();
    }
    let session = random_token();
    let (id_hash, token_hash) = (sha256(session.as_bytes()), token_hash.clone());
    let lifetime = ctx.app.session_lifetime.as_secs_f64();
    if let Err(response) = with_conn(&ctx.app, move |conn| {
        Ok(sessions::start_session(
            conn,
            &id_hash,
            &token_hash,
            lifetime,
        )?)
    })
    .await
    {
        return response;
    }
    ctx.session_cookie(Some(&session))
}

async fn logout(ctx: Ctx, Form(form): Form<ActionForm>) -> Response {
    let Some(session) = &ctx.session else {
        // Nothing to end: the cookie (if any) is stale.
        return ctx.session_cookie(None);
    };
    if !same_origin(&ctx.headers) || !same(&form.csrf, &session_csrf(session)) {
        return Refusal(NOT_OURS).into_response();
    }
    let id_hash = sha256(session.as_bytes());
    if let Err(response) = with_conn(&ctx.app, move |conn| {
        Ok(sessions::end_session(conn, &id_hash)?)
    })
    .await
    {
        return response;
    }
    ctx.session_cookie(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_localhost_addresses_and_the_given_names_are_answered() {
        let allowed = vec!["jobs.example.com".to_owned()];
        for host in [
            "localhost",
            "localhost:8080",
            "LOCALHOST.",
            "127.0.0.1:8080",
            "10.0.0.7",
            "[::1]:8080",
            "[2001:db8::1]",
            "jobs.example.com",
            "Jobs.Example.Com:443",
        ] {
            assert!(host_allowed(&allowed, host), "{host}");
        }
        for host in [
            "evil.example",
            "localhost.evil.example",
            "jobs.example.com.evil.example",
            "127.0.0.1.nip.io",
            "[::1",
            "[not-an-address]:80",
            "",
        ] {
            assert!(!host_allowed(&allowed, host), "{host}");
        }
    }

    #[test]
    fn notices_are_the_dashboards_own_texts_chosen_by_code() {
        let notice = |done: &str, n: Option<&str>, m: Option<&str>| {
            Notice {
                done: Some(done.into()),
                n: n.map(Into::into),
                m: m.map(Into::into),
            }
            .text()
        };
        assert_eq!(
            notice("discarded", Some("42"), None).as_deref(),
            Some("job 42 discarded")
        );
        assert_eq!(
            notice("bulk-retried", Some("3"), Some("1")).as_deref(),
            Some("3 jobs retried; 1 were running or gone and were left")
        );
        assert_eq!(
            notice("bulk-discarded", Some("3"), Some("0")).as_deref(),
            Some("3 jobs discarded")
        );
        assert_eq!(notice("Your account is locked", None, None), None);
        assert_eq!(notice("discarded", Some("<b>"), None), None);
        for done in [
            Done::Retried,
            Done::Discarded(7),
            Done::Bulk {
                retried: false,
                changed: 2,
                left: 0,
            },
            Done::Paused,
            Done::Resumed,
        ] {
            let query: Notice = serde_urlencoded_like(&done.query());
            assert!(query.text().is_some(), "{done:?}");
        }
    }

    /// Parses `done=..&n=..&m=..` as the address's query would be.
    fn serde_urlencoded_like(query: &str) -> Notice {
        let mut notice = Notice::default();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap();
            let value = Some(value.to_owned());
            match key {
                "done" => notice.done = value,
                "n" => notice.n = value,
                "m" => notice.m = value,
                other => panic!("{other}"),
            }
        }
        notice
    }

    #[test]
    fn a_page_position_outside_postgresqls_timestamps_is_refused() {
        let filter = |after: &str| Filter {
            after: Some(after.into()),
            ..Filter::default()
        };
        assert!(filter("1764000000000000.5").invalid().is_none());
        assert!(filter("-8000000000000000000.1").invalid().is_some());
        assert!(filter("9000000000000000000.1").invalid().is_some());
        assert!(filter("x.1").invalid().is_some());
        let nul = Filter {
            names: Names {
                queue: Some("a\0b".into()),
                job_type: None,
            },
            ..Filter::default()
        };
        assert_eq!(nul.invalid(), Some("A filter holds a NUL character."));
    }
}
