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
//! | `GET /hello` | path `/hello`, method `GET`; a user whose identifier starts with `pro_`: operation `hello_pro` (a plan) | `hello <user>` |
//! | `GET /items/{id}` | the concrete path (`/items/42`) | `{"id": "<id>"}` |
//! | `POST /emails` | operation `send_email` | `{"sent": true}` |
//! | `GET /search` | the user's `search_per_second` AND `search_per_day` | `{"results": []}` |
//! | `GET /reports` | the user's path rule `^/reports` AND the organisation's `org_reports` (`x-org-id`) | `{"org": "<org>"}` |
//! | `POST /completions` | the user's `llm_requests` AND `llm_tokens`: `x-max-tokens` (1..=1000) reserved, settled at the use (`x-use-tokens`, default `x-max-tokens`); `x-fail: 1` answers 500 (settled at 0), `x-sleep-ms: N` holds it | `{"usage": {"total_tokens": U}}` |
//! | `POST /jobs` | the user's `jobs`; over the limit, waits up to 2 s for its token | `{"queued": true}` |
//! | `GET /export?ms=N` | at most 2 requests of a user in flight (across every process on one Redis with `LIGHTRATE_REDIS_URL`) | `{"exported": true}` after N ms |
//! | `GET /healthz` | not limited | `ok` |
//! | `GET /metrics` | not limited | Prometheus text (`lightrate_` metrics) |
//!
//! `LIGHTRATE_MODE=shadow` decides and counts every request, but lets each one through. The
//! server closes a connection that has not sent a complete request head within
//! [`HEADER_READ_TIMEOUT`]: a new one, or a kept-alive one between requests (idle).
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub,
    missing_docs
)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Query};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use lightrate::tower::{
    Identify, LightRateLayer, MissingIdentifier, Mode, Operation, RouteLimit, Used,
};
use lightrate::{EnvSource, InFlight, Limiter, RuleSet};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::{json, Value};
use tower::Service as _;

/// The header that names the user.
const USER_HEADER: HeaderName = HeaderName::from_static("x-user-id");

/// The header that names the user's organisation (`/reports`).
const ORG_HEADER: HeaderName = HeaderName::from_static("x-org-id");

/// How many `/export` requests of one user may be in flight.
pub const EXPORTS_IN_FLIGHT: u32 = 2;

/// The longest an `/export` request is held (`?ms=`).
const MAX_EXPORT_MS: u64 = 10_000;

/// The most tokens a `/completions` request may reserve (`x-max-tokens`).
const MAX_COMPLETION_TOKENS: u64 = 1_000;

/// The most tokens a `/completions` request may say it used (`x-use-tokens`).
const MAX_USED_TOKENS: u64 = 100_000;

/// How long a `/jobs` request over its limit may wait for its token.
pub const JOBS_WAIT: Duration = Duration::from_secs(2);

/// `/export`'s query: how long to hold the request.
#[derive(serde::Deserialize)]
struct ExportQuery {
    ms: Option<u64>,
}

/// How long a connection may take to send a complete request head: from its start, and
/// between two requests of a kept-alive connection. Then it is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the accept loop waits after an accept error (out of file descriptors, say)
/// before it tries again: the connections the timeouts close make room meanwhile.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The process's Prometheus recorder (installed on first use, without an HTTP listener of
/// its own: `/metrics` serves it).
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .install_recorder()
                // Another recorder is installed already (a test's): render an empty one.
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder().handle())
        })
        .clone()
}

/// The demo routes behind the rate limiter, enforcing or (`Mode::Shadow`) only counting;
/// `/export`'s cap in this process.
pub fn app(limiter: Limiter, mode: Mode) -> Router {
    app_with(
        limiter,
        mode,
        InFlight::new(EXPORTS_IN_FLIGHT).named("export"),
    )
}

/// [`app`], with `/export`'s in-flight cap (shared by a fleet on Redis, say).
pub fn app_with(limiter: Limiter, mode: Mode, exports: InFlight) -> Router {
    let metrics = {
        let (limiter, prometheus) = (limiter.clone(), prometheus());
        move || async move {
            limiter.publish_metrics();
            prometheus.render()
        }
    };
    let rate_limit = LightRateLayer::new(limiter)
        .identify(Identify::header(USER_HEADER))
        .on_missing_identifier(MissingIdentifier::PeerIp)
        .exclude_path("/healthz")
        .exclude_path("/metrics")
        .mode(mode);
    // Several limits per request, all or nothing.
    let hello_limits = [RouteLimit::request().plan(|_, user| {
        user.starts_with("pro_")
            .then(|| Operation::new("hello_pro"))
    })];
    let search_limits = [
        RouteLimit::operation("search_per_second"),
        RouteLimit::operation("search_per_day"),
    ];
    let reports_limits = [
        RouteLimit::request(),
        RouteLimit::operation("org_reports").identify(Identify::header(ORG_HEADER)),
    ];
    // The tokens of an LLM call: `x-max-tokens` reserved, settled at what the handler used.
    let completions_limits = [
        RouteLimit::operation("llm_requests"),
        RouteLimit::operation("llm_tokens")
            .cost_from(|req| max_tokens(req.headers.get("x-max-tokens")))
            .settled(),
    ];
    let jobs_limits = [RouteLimit::operation("jobs").wait_up_to(JOBS_WAIT)];
    Router::new()
        .route(
            "/hello",
            get(hello).layer(rate_limit.limits_for(Method::GET, "/hello", hello_limits)),
        )
        .route(
            "/search",
            get(search).layer(rate_limit.limits_for(Method::GET, "/search", search_limits)),
        )
        .route(
            "/reports",
            get(reports).layer(rate_limit.limits_for(Method::GET, "/reports", reports_limits)),
        )
        .route(
            "/completions",
            post(completions).layer(rate_limit.limits_for(
                Method::POST,
                "/completions",
                completions_limits,
            )),
        )
        .route(
            "/jobs",
            post(jobs).layer(rate_limit.limits_for(Method::POST, "/jobs", jobs_limits)),
        )
        .route(
            "/export",
            get(export).layer(rate_limit.limits_for(
                Method::GET,
                "/export",
                [RouteLimit::in_flight(exports)],
            )),
        )
        .route("/items/{id}", get(item))
        .route(
            "/emails",
            post(send_email).layer(rate_limit.operation_for(Method::POST, "/emails", "send_email")),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
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

/// `/export?ms=N`: answers after N ms (at most 10 000).
async fn export(Query(query): Query<ExportQuery>) -> Json<Value> {
    let ms = query.ms.unwrap_or(0).min(MAX_EXPORT_MS);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Json(json!({ "exported": true }))
}

/// The tokens a `/completions` request reserves: its `x-max-tokens`, 1..=1000.
fn max_tokens(header: Option<&axum::http::HeaderValue>) -> Result<u64, String> {
    let raw = header.ok_or("x-max-tokens is missing")?;
    let tokens: u64 = raw
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or("x-max-tokens must be a whole number")?;
    if (1..=MAX_COMPLETION_TOKENS).contains(&tokens) {
        Ok(tokens)
    } else {
        Err(format!("x-max-tokens must be 1..={MAX_COMPLETION_TOKENS}"))
    }
}

/// A header's whole number, at most `most`: `None` when absent, `Err` when unusable.
fn number(headers: &HeaderMap, name: &str, most: u64) -> Result<Option<u64>, String> {
    let Some(raw) = headers.get(name) else {
        return Ok(None);
    };
    raw.to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|n| *n <= most)
        .map(Some)
        .ok_or_else(|| format!("{name} must be a whole number, 0..={most}"))
}

/// `/completions`: uses `x-use-tokens` tokens (default `x-max-tokens`) after `x-sleep-ms`, and
/// says so in its answer and to the rate limiter ([`Used`]); `x-fail: 1` answers 500.
async fn completions(headers: HeaderMap) -> (StatusCode, Extension<Used>, Json<Value>) {
    let read = number(&headers, "x-max-tokens", MAX_COMPLETION_TOKENS)
        .and_then(|max| {
            Ok((
                max.unwrap_or(0),
                number(&headers, "x-use-tokens", MAX_USED_TOKENS)?,
            ))
        })
        .and_then(|(max, used)| Ok((max, used, number(&headers, "x-sleep-ms", MAX_EXPORT_MS)?)));
    let (max, used, sleep_ms) = match read {
        Ok(read) => read,
        Err(message) => {
            let body = json!({ "error": "bad_request", "message": message });
            return (StatusCode::BAD_REQUEST, Extension(Used(0)), Json(body));
        }
    };
    tokio::time::sleep(Duration::from_millis(sleep_ms.unwrap_or(0))).await;
    if headers.get("x-fail").is_some_and(|v| v == "1") {
        let body = json!({ "error": "upstream_failed" });
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Extension(Used(0)),
            Json(body),
        );
    }
    let used = used.unwrap_or(max);
    let body = json!({ "usage": { "total_tokens": used } });
    (StatusCode::OK, Extension(Used(used)), Json(body))
}

async fn jobs() -> Json<Value> {
    Json(json!({ "queued": true }))
}

async fn search() -> Json<Value> {
    Json(json!({ "results": [] }))
}

async fn reports(headers: HeaderMap) -> Json<Value> {
    // The layer has already checked the header: present and usable.
    let org = headers
        .get(ORG_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    Json(json!({ "org": org }))
}

/// Serves `app` on `listener`, with the peer address available to the rate limiter, closing
/// connections that send no complete request head within [`HEADER_READ_TIMEOUT`] (new or
/// idle), and backing off on accept errors. (`axum::serve` has no such timeouts: idle
/// connections would hold their descriptors forever.)
pub async fn serve(listener: tokio::net::TcpListener, app: Router) -> std::io::Result<()> {
    let mut connections = app.into_make_service_with_connect_info::<SocketAddr>();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors, or a connection reset before it was accepted: wait for
                // the timeouts to free some, without a log line per failure.
                tracing::debug!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let service = match connections.call(peer).await {
            Ok(service) => TowerToHyperService::new(service),
            Err(never) => match never {},
        };
        let connection = http.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            // A closed or timed-out connection is nothing to report.
            let _ = connection.await;
        });
    }
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
    let mode = Mode::from_env().map_err(|e| e.to_string())?;
    if mode == Mode::Shadow {
        eprintln!("LIGHTRATE_MODE=shadow: requests are decided and counted, none refused");
    }
    // The exporter's histograms are trimmed at each scrape, and here in between.
    let prometheus = prometheus();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            prometheus.run_upkeep();
        }
    });
    println!("listening on http://{address}");
    let _ = std::io::stdout().flush();
    let exports = lightrate_redis::in_flight_from_env(EXPORTS_IN_FLIGHT)
        .map_err(|e| e.to_string())?
        .named("export");
    serve(listener, app_with(builder.build(), mode, exports))
        .await
        .map_err(|e| e.to_string())
}
