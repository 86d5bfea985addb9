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
    /// No actions at all: no retry, discard, pause or resume, whoever asks.
    #[arg(long)]
    read_only: bool,
    /// The token that lets an operator act. Without it, a random one is made and printed once.
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
    let mut dashboard = skiplock::web::Dashboard::new(pool);
    let mut generated = None;
    if !args.read_only {
        let token = match args.token.as_deref().filter(|t| !t.is_empty()) {
            Some(token) => token.to_owned(),
            None => generated.insert(skiplock::web::random_token()).clone(),
        };
        dashboard = dashboard.token(token);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure(format!("cannot start the server's runtime: {e}")))?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.bind)
            .await
            .map_err(|e| Failure(format!("cannot listen on {}: {e}", args.bind)))?;
        let address = listener.local_addr().map_err(|e| Failure(e.to_string()))?;
        println!("skiplock web: the dashboard is at http://{address}/");
        if args.read_only {
            println!("skiplock web: read-only: no actions");
        } else if let Some(token) = &generated {
            println!(
                "skiplock web: sign in with this token to act (shown once; set \
                 SKIPLOCK_WEB_TOKEN to choose one): {token}"
            );
        } else {
            println!("skiplock web: sign in with the token in SKIPLOCK_WEB_TOKEN to act");
        }
        axum::serve(listener, dashboard.router())
            .with_graceful_shutdown(stop_signal())
            .await
            .map_err(|e| Failure(format!("the server stopped: {e}")))
    })?;
    Ok(ExitCode::SUCCESS)
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
