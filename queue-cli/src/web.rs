//! `skiplock web`: the dashboard on its own server.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::{connect, Failure};

/// Where and how to serve the dashboard.
#[derive(Debug, Args)]
pub(crate) struct WebArgs {
    /// The address to listen on (another interface only behind a TLS proxy: the token and the
    /// session cookie travel in clear otherwise).
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: SocketAddr,
    /// Answer requests for this host name too (repeatable). `localhost` and IP addresses are
    /// always answered; other names are refused (a DNS-rebinding page uses its own).
    #[arg(long = "host", value_name = "NAME")]
    hosts: Vec<String>,
    /// No actions at all: no retry, discard, pause or resume, whoever asks.
    #[arg(long)]
    read_only: bool,
    /// Let anyone who reaches the dashboard read it without signing in (actions still need it).
    #[arg(long)]
    public_read: bool,
    /// The dashboard is reached over https (a proxy in front terminates TLS): its session cookie
    /// is marked Secure.
    #[arg(long)]
    https: bool,
    /// How long a sign-in lasts.
    #[arg(long, default_value = "12h", value_parser = crate::parse_duration)]
    session_lifetime: Duration,
    /// On SIGTERM or SIGINT, wait at most this long for requests under way, then exit.
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    shutdown_timeout: Duration,
    /// The token that signs an operator in. Without it, a random one is made and printed once.
    #[arg(
        long = "token-from-env",
        env = "SKIPLOCK_WEB_TOKEN",
        hide_env_values = true,
        hide = true
    )]
    token: Option<String>,
    /// Database connections for the pages.
    #[arg(long, default_value_t = 4)]
    connections: u32,
}

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn serve(
    url: Option<&str>,
    connect_timeout: Duration,
    statement_timeout: Duration,
    args: &WebArgs,
) -> Result<ExitCode, Failure> {
    let pool = connect::pool(
        url,
        connect_timeout,
        statement_timeout,
        args.connections.max(1),
    )?;
    let mut dashboard = skiplock::web::Dashboard::new(pool).session_lifetime(args.session_lifetime);
    let token = match args.token.as_deref().filter(|t| !t.is_empty()) {
        Some(token) => token.to_owned(),
        None => skiplock::web::random_token(),
    };
    let generated = args.token.as_deref().is_none_or(str::is_empty);
    dashboard = dashboard.token(token.clone());
    if args.read_only {
        dashboard = dashboard.read_only();
    }
    if args.public_read {
        dashboard = dashboard.public_read();
    }
    if args.https {
        dashboard = dashboard.secure_cookies();
    }
    for host in &args.hosts {
        dashboard = dashboard.allow_host(host);
    }
    // The pages' database failures are logged here, not shown.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure(format!("cannot start the server's runtime: {e}")))?;
    let served = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.bind)
            .await
            .map_err(|e| Failure(format!("cannot listen on {}: {e}", args.bind)))?;
        let address = listener.local_addr().map_err(|e| Failure(e.to_string()))?;
        println!("skiplock web: the dashboard is at http://{address}/");
        let what = match (args.read_only, args.public_read) {
            (true, true) => "read-only, readable by anyone: no actions",
            (true, false) => "read-only: sign in to read; no actions",
            (false, true) => "readable by anyone; sign in to act",
            (false, false) => "sign in to read and to act",
        };
        if generated {
            println!(
                "skiplock web: {what}; the token (shown once; set SKIPLOCK_WEB_TOKEN to \
                 choose one): {token}"
            );
        } else {
            println!("skiplock web: {what}, with the token in SKIPLOCK_WEB_TOKEN");
        }
        serve_until_stopped(listener, dashboard.router(), args.shutdown_timeout).await;
        Ok::<_, Failure>(())
    });
    // Queries still running on the blocking pool are not waited for.
    runtime.shutdown_timeout(Duration::from_millis(100));
    served?;
    Ok(ExitCode::SUCCESS)
}

/// Serves `router` until SIGTERM or SIGINT, then waits at most
/// `shutdown_timeout` for the requests under way. Each connection gets
/// [`HEADER_READ_TIMEOUT`] to send a request's headers (a client that sends
/// half a request and waits is dropped), and its client's address reaches
/// the dashboard (which limits wrong tokens per address).
async fn serve_until_stopped(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown_timeout: Duration,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop_signal());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors, say: try again shortly.
                        tracing::warn!(%error, "the dashboard could not accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let service = router
                    .clone()
                    .layer(axum::Extension(axum::extract::ConnectInfo(peer)));
                let connection = http.serve_connection(
                    TokioIo::new(stream),
                    hyper_util::service::TowerToHyperService::new(service),
                );
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
            () = &mut stop => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(shutdown_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        eprintln!(
            "skiplock web: requests were still under way after {shutdown_timeout:?}; stopped anyway"
        );
    }
}

/// SIGINT or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(term) => { term.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}
