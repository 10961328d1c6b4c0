//! The demo service on axum: what `cargo run --example axum_app` starts (see the project's
//! `demo-app.md` for the contract it follows).
//!
//! ```text
//! cargo run --example axum_app            # the embedded token source with the demo rules
//! LIGHTRATE_REDIS_URL=redis://127.0.0.1:6379 cargo run --example axum_app   # buckets in Redis
//! PORT=8000 LIGHTRATE_API_KEY=... LIGHTRATE_APPLICATION_ID=... cargo run --example axum_app
//! curl -H 'x-user-id: alice' localhost:3000/hello
//! ```
//!
//! | route | limited by | answer |
//! |---|---|---|
//! | `GET /hello` | path `/hello`, method `GET` | `hello <user>` |
//! | `GET /items/{id}` | the concrete path (`/items/42`) | `{"id": "<id>"}` |
//! | `POST /emails` | operation `send_email` | `{"sent": true}` |
//! | `GET /healthz` | not limited | `ok` |
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub,
    missing_docs
)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

use axum::extract::{ConnectInfo, Path};
use axum::http::{HeaderMap, HeaderName, Method};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use lightrate::tower::{Identify, LightRateLayer, MissingIdentifier};
use lightrate::{EnvSource, Limiter, RuleSet};
use serde_json::{json, Value};

/// The header that names the user.
const USER_HEADER: HeaderName = HeaderName::from_static("x-user-id");

/// The demo routes behind the rate limiter.
pub fn app(limiter: Limiter) -> Router {
    let rate_limit = LightRateLayer::new(limiter)
        .identify(Identify::header(USER_HEADER))
        .on_missing_identifier(MissingIdentifier::PeerIp)
        .exclude_path("/healthz");
    Router::new()
        .route("/hello", get(hello))
        .route("/items/{id}", get(item))
        .route(
            "/emails",
            post(send_email).layer(rate_limit.operation_for(Method::POST, "/emails", "send_email")),
        )
        .route("/healthz", get(|| async { "ok" }))
        .layer(rate_limit)
}

async fn hello(headers: HeaderMap, peer: Option<Extension<ConnectInfo<SocketAddr>>>) -> String {
    // The layer has already checked the header; without one, the user is the peer address.
    let user = match headers
        .get(USER_HEADER)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
    {
        Some(user) => user.to_owned(),
        None => peer.map_or_else(|| "anonymous".into(), |p| p.0 .0.ip().to_string()),
    };
    format!("hello {user}")
}

async fn item(Path(id): Path<String>) -> Json<Value> {
    Json(json!({ "id": id }))
}

async fn send_email() -> Json<Value> {
    Json(json!({ "sent": true }))
}

/// Serves `app` on `listener`, with the peer address available to the rate limiter.
pub async fn serve(listener: tokio::net::TcpListener, app: Router) -> std::io::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

/// Says where tokens come from, on stderr.
pub fn describe(source: &EnvSource, rules: &RuleSet) {
    match source {
        EnvSource::Embedded => {
            eprintln!("no LIGHTRATE_API_KEY: {source}, with the demo rules:\n{rules}")
        }
        EnvSource::Redis { .. } => {
            eprintln!("no LIGHTRATE_API_KEY: buckets in {source}, with the demo rules:\n{rules}")
        }
        _ => eprintln!("tokens from {source}"),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("axum_app: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .trim()
            .parse()
            .map_err(|_| format!("PORT must be a port number, not {port:?}"))?,
        Err(_) => 3000,
    };
    let rules = RuleSet::demo();
    // The API, Redis (LIGHTRATE_REDIS_URL) or the embedded source, from the environment.
    let (builder, source) =
        lightrate_redis::builder_from_env(rules.clone()).map_err(|e| e.to_string())?;
    describe(&source, &rules);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening on http://{address}");
    let _ = std::io::stdout().flush();
    serve(listener, app(builder.build()))
        .await
        .map_err(|e| e.to_string())
}
