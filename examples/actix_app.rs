//! The demo service on actix-web: what `cargo run --example actix_app` starts (see the
//! project's `demo-app.md` for the contract it follows, the same as `axum_app`'s).
//!
//! ```text
//! cargo run --example actix_app            # the embedded token source with the demo rules
//! LIGHTRATE_REDIS_URL=redis://127.0.0.1:6379 cargo run --example actix_app   # buckets in Redis
//! PORT=8000 LIGHTRATE_API_KEY=... LIGHTRATE_APPLICATION_ID=... cargo run --example actix_app
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
//! | `POST /jobs` | the user's `jobs`; over the limit, waits up to 2 s for its token (a client that goes away is still served its token: actix-web#3462) | `{"queued": true}` |
//! | `GET /export?ms=N` | at most 2 requests of a user in flight (across every process on one Redis with `LIGHTRATE_REDIS_URL`) | `{"exported": true}` after N ms |
//! | `GET /healthz` | not limited | `ok` |
//! | `GET /metrics` | not limited | Prometheus text (`lightrate_` metrics) |
//!
//! `LIGHTRATE_MODE=shadow` decides and counts every request, but lets each one through.
//! actix-web closes a connection that sends no complete request head within 5 s (408), and
//! an idle kept-alive one after 5 s: its defaults, kept.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub,
    missing_docs
)]

use std::io::Write as _;
use std::net::TcpListener;
use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use lightrate::actix::{Identify, LightRate, MissingIdentifier, Mode, Operation, RouteLimit, Used};
use lightrate::{EnvSource, InFlight, Limiter, RuleSet};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::{json, Value};

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

/// The demo routes behind the rate limiter, enforcing or (`Mode::Shadow`) only counting: one
/// `App` (actix builds one per worker; every worker's app shares `limiter`, a clone of one
/// `Arc`).
pub fn app(
    limiter: Limiter,
    mode: Mode,
    exports: InFlight,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let metrics = {
        let (limiter, prometheus) = (limiter.clone(), prometheus());
        move || {
            limiter.publish_metrics();
            let text = prometheus.render();
            async move { text }
        }
    };
    let rate_limit = LightRate::new(limiter)
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
            .cost_from(|req| max_tokens(req.headers().get("x-max-tokens")))
            .settled(),
    ];
    let jobs_limits = [RouteLimit::operation("jobs").wait_up_to(JOBS_WAIT)];
    App::new()
        .service(
            web::resource("/hello")
                .wrap(rate_limit.limits_for(Method::GET, "/hello", hello_limits))
                .route(web::get().to(hello)),
        )
        .service(
            web::resource("/search")
                .wrap(rate_limit.limits_for(Method::GET, "/search", search_limits))
                .route(web::get().to(search)),
        )
        .service(
            web::resource("/reports")
                .wrap(rate_limit.limits_for(Method::GET, "/reports", reports_limits))
                .route(web::get().to(reports)),
        )
        .service(
            web::resource("/completions")
                .wrap(rate_limit.limits_for(Method::POST, "/completions", completions_limits))
                .route(web::post().to(completions)),
        )
        .service(
            web::resource("/jobs")
                .wrap(rate_limit.limits_for(Method::POST, "/jobs", jobs_limits))
                .route(web::post().to(jobs)),
        )
        .service(
            web::resource("/export")
                .wrap(rate_limit.limits_for(
                    Method::GET,
                    "/export",
                    [RouteLimit::in_flight(exports)],
                ))
                .route(web::get().to(export)),
        )
        .route("/items/{id}", web::get().to(item))
        .service(
            web::resource("/emails")
                .wrap(rate_limit.operation_for(Method::POST, "/emails", "send_email"))
                .route(web::post().to(send_email)),
        )
        .route("/healthz", web::get().to(|| async { "ok" }))
        .route("/metrics", web::get().to(metrics))
        .wrap(rate_limit)
}

async fn hello(req: HttpRequest) -> String {
    // The middleware has already checked the header; without one, the user is the peer address.
    let header = req.headers().get(&USER_HEADER);
    let user = match header.and_then(|v| std::str::from_utf8(v.as_bytes()).ok()) {
        Some(user) => user.to_owned(),
        None => req
            .peer_addr()
            .map_or_else(|| "anonymous".into(), |peer| peer.ip().to_string()),
    };
    format!("hello {user}")
}

/// `/export?ms=N`: answers after N ms (at most 10 000).
async fn export(query: web::Query<ExportQuery>) -> web::Json<Value> {
    let ms = query.ms.unwrap_or(0).min(MAX_EXPORT_MS);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    web::Json(json!({ "exported": true }))
}

/// The tokens a `/completions` request reserves: its `x-max-tokens`, 1..=1000.
fn max_tokens(header: Option<&HeaderValue>) -> Result<u64, String> {
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
fn number(req: &HttpRequest, name: &str, most: u64) -> Result<Option<u64>, String> {
    let Some(raw) = req.headers().get(name) else {
        return Ok(None);
    };
    raw.to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|n| *n <= most)
        .map(Some)
        .ok_or_else(|| format!("{name} must be a whole number, 0..={most}"))
}

/// An answer with `body`, telling the rate limiter the request used `used` tokens.
fn answer(status: StatusCode, used: u64, body: Value) -> HttpResponse {
    let mut response = HttpResponse::build(status).json(body);
    response.extensions_mut().insert(Used(used));
    response
}

/// `/completions`: uses `x-use-tokens` tokens (default `x-max-tokens`) after `x-sleep-ms`, and
/// says so in its answer and to the rate limiter ([`Used`]); `x-fail: 1` answers 500.
async fn completions(req: HttpRequest) -> HttpResponse {
    let read = number(&req, "x-max-tokens", MAX_COMPLETION_TOKENS)
        .and_then(|max| {
            Ok((
                max.unwrap_or(0),
                number(&req, "x-use-tokens", MAX_USED_TOKENS)?,
            ))
        })
        .and_then(|(max, used)| Ok((max, used, number(&req, "x-sleep-ms", MAX_EXPORT_MS)?)));
    let (max, used, sleep_ms) = match read {
        Ok(read) => read,
        Err(message) => {
            let body = json!({ "error": "bad_request", "message": message });
            return answer(StatusCode::BAD_REQUEST, 0, body);
        }
    };
    tokio::time::sleep(Duration::from_millis(sleep_ms.unwrap_or(0))).await;
    if req.headers().get("x-fail").is_some_and(|v| v == "1") {
        return answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            0,
            json!({ "error": "upstream_failed" }),
        );
    }
    let used = used.unwrap_or(max);
    answer(
        StatusCode::OK,
        used,
        json!({ "usage": { "total_tokens": used } }),
    )
}

async fn jobs() -> web::Json<Value> {
    web::Json(json!({ "queued": true }))
}

async fn search() -> web::Json<Value> {
    web::Json(json!({ "results": [] }))
}

async fn reports(req: HttpRequest) -> web::Json<Value> {
    // The middleware has already checked the header: present and usable.
    let org = req
        .headers()
        .get(&ORG_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    web::Json(json!({ "org": org }))
}

async fn item(id: web::Path<String>) -> web::Json<Value> {
    web::Json(json!({ "id": id.into_inner() }))
}

async fn send_email() -> web::Json<Value> {
    web::Json(json!({ "sent": true }))
}

/// Serves the demo app on `listener` with `workers` workers (at least one), all sharing
/// `limiter`. The server runs once awaited (or spawned) on an actix `System`.
pub fn server(
    listener: TcpListener,
    limiter: Limiter,
    mode: Mode,
    workers: usize,
) -> std::io::Result<Server> {
    // `/export`'s cap: shared on Redis when the buckets are.
    let exports = lightrate_redis::in_flight_from_env(EXPORTS_IN_FLIGHT)
        .map_err(std::io::Error::other)?
        .named("export");
    Ok(
        HttpServer::new(move || app(limiter.clone(), mode, exports.clone()))
            .workers(workers.max(1))
            .listen(listener)?
            .run(),
    )
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("actix_app: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
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
    let listener = TcpListener::bind(("127.0.0.1", port))
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let workers = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let mode = Mode::from_env().map_err(|e| e.to_string())?;
    if mode == Mode::Shadow {
        eprintln!("LIGHTRATE_MODE=shadow: requests are decided and counted, none refused");
    }
    actix_web::rt::System::new().block_on(async move {
        // The exporter's histograms are trimmed at each scrape, and here in between.
        let prometheus = prometheus();
        actix_web::rt::spawn(async move {
            loop {
                actix_web::rt::time::sleep(Duration::from_secs(5)).await;
                prometheus.run_upkeep();
            }
        });
        // One limiter for the process: every worker's app gets a clone of it.
        let server = server(listener, builder.build(), mode, workers).map_err(|e| e.to_string())?;
        println!("listening on http://{address}");
        let _ = std::io::stdout().flush();
        server.await.map_err(|e| e.to_string())
    })
}
