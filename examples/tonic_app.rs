//! The demo service on tonic: the standard gRPC health service, rate limited per user. What
//! `cargo run --example tonic_app` starts (see the project's `demo-app.md` for the contract
//! it follows: the axum and actix apps' start line, port and variables).
//!
//! ```text
//! cargo run --example tonic_app            # the embedded token source with the demo rules
//! # the app serves no reflection: give grpcurl the service's schema (tonic-health ships it)
//! grpcurl -plaintext -import-path ~/.cargo/registry/src/*/tonic-health-0.14.*/proto \
//!     -proto health.proto -H 'x-user-id: alice' 127.0.0.1:3000 grpc.health.v1.Health/Check
//! ```
//!
//! `grpc.health.v1.Health/Check` answers SERVING. Each gRPC method is limited by its path
//! (`POST /grpc.health.v1.Health/Check`), which the demo rules leave to the default rule
//! (burst 5), per user: the `x-user-id` metadata, else the peer address. A refusal is HTTP 200
//! with `grpc-status: 8` (RESOURCE_EXHAUSTED), a `grpc-message`, `retry-after` and
//! `grpc-retry-pushback-ms`; an unusable identifier is 3 (INVALID_ARGUMENT); a source outage
//! under `LIGHTRATE_ON_UNAVAILABLE=deny` is 14 (UNAVAILABLE). `LIGHTRATE_MODE=shadow` decides
//! and counts, but lets every call through.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub,
    missing_docs
)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

use http::HeaderName;
use lightrate::tower::{Identify, LightRateLayer, MissingIdentifier, Mode};
use lightrate::{EnvSource, Limiter, RuleSet};
use tonic::transport::server::{TcpConnectInfo, TcpIncoming};
use tonic::transport::Server;
use tower::ServiceBuilder;

/// The metadata that names the user.
const USER_HEADER: HeaderName = HeaderName::from_static("x-user-id");

/// Serves the health service on `listener`, limited by `limiter`, enforcing or (in
/// `Mode::Shadow`) only counting.
pub async fn serve(
    listener: tokio::net::TcpListener,
    limiter: Limiter,
    mode: Mode,
) -> Result<(), tonic::transport::Error> {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let rate_limit = LightRateLayer::new(limiter)
        .identify(Identify::header(USER_HEADER))
        .on_missing_identifier(MissingIdentifier::PeerIp)
        .mode(mode);
    let stack = ServiceBuilder::new()
        .map_request(with_peer_address)
        .layer(rate_limit)
        // The layer makes its answers from bytes: axum's body is made so, tonic's is not.
        .map_response(|r: http::Response<tonic::body::Body>| r.map(axum::body::Body::new));
    Server::builder()
        .layer(stack)
        .add_service(health)
        .serve_with_incoming(TcpIncoming::from(listener))
        .await
}

/// Puts the peer's address where the layer looks for it (tonic keeps it in `TcpConnectInfo`),
/// so that a call without `x-user-id` is limited by its address.
fn with_peer_address<B>(mut request: http::Request<B>) -> http::Request<B> {
    let peer = request
        .extensions()
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr);
    if let Some(peer) = peer {
        request.extensions_mut().insert::<SocketAddr>(peer);
    }
    request
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
            eprintln!("tonic_app: {message}");
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
    let mode = Mode::from_env().map_err(|e| e.to_string())?;
    if mode == Mode::Shadow {
        eprintln!("LIGHTRATE_MODE=shadow: calls are decided and counted, none refused");
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening on http://{address}");
    let _ = std::io::stdout().flush();
    serve(listener, builder.build(), mode)
        .await
        .map_err(|e| e.to_string())
}
