//! The actix demo app, started in-process on 127.0.0.1:0 (its own thread, its own actix
//! `System`, two workers), and the actix-specific end-to-end tests: several workers sharing
//! one limiter, and scope-level `wrap`, over real HTTP against the real token server.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use actix_web::dev::{Server, Service};
use actix_web::http::header::HeaderName;
use actix_web::http::Method;
use actix_web::{web, App, HttpMessage, HttpResponse, HttpServer};
use lightrate::actix::{Identify, LightRate, Mode};
use lightrate::{Decision, DecisionSource, Limiter};
use reqwest::StatusCode;

use crate::support::{http, LimiterOptions, RunningApp, TokenServer};

#[path = "../../examples/actix_app.rs"]
#[allow(dead_code)]
mod actix_app;

/// Workers of the app under test: more than one, so that they share the limiter.
pub const WORKERS: usize = 2;

/// Starts the example's app around `limiter` (two workers) and returns once it answers HTTP.
pub fn start(limiter: Limiter) -> RunningApp {
    start_in(limiter, Mode::Enforce)
}

/// The same, in `mode`.
pub fn start_in(limiter: Limiter, mode: Mode) -> RunningApp {
    serve(move |listener| actix_app::server(listener, limiter, mode, WORKERS))
}

/// Runs the server `make` builds on a listener on 127.0.0.1:0, in its own thread with its
/// own actix `System`; returns once the server answers HTTP. Dropping the `RunningApp` stops
/// it (without waiting for open connections) and waits for its thread.
pub fn serve(
    make: impl FnOnce(TcpListener) -> std::io::Result<Server> + Send + 'static,
) -> RunningApp {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let (handle_tx, handle_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("actix-e2e-system".into())
        .spawn(move || {
            actix_rt::System::new().block_on(async move {
                match make(listener) {
                    Ok(server) => {
                        let _ = handle_tx.send(Ok(server.handle()));
                        // Ends when stopped; a failure after start-up shows in the requests.
                        let _ = server.await;
                    }
                    Err(error) => {
                        let _ = handle_tx.send(Err(error));
                    }
                }
            });
            let _ = done_tx.send(());
        })
        .unwrap();
    let handle = handle_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the actix app's thread ended early")
        .expect("the actix app did not start");
    wait_until_serving(address);
    RunningApp::new(format!("http://{address}"), move || {
        // `stop` sends the command at once; the thread ends when the workers have stopped.
        drop(handle.stop(false));
        let _ = done_rx.recv_timeout(Duration::from_secs(10));
    })
}

/// One HTTP request to `/healthz` (never limited in the demo app; any answer will do for
/// other apps): the server accepts connections and its workers answer.
fn wait_until_serving(address: SocketAddr) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 "),
        "not an HTTP answer: {:?}",
        String::from_utf8_lossy(&answer)
    );
}

/// What the recording middleware saw of one request: the worker thread, the decision.
#[derive(Clone, Debug)]
struct Seen {
    worker: String,
    source: Option<DecisionSource>,
    status: u16,
}

/// The demo app, with an outermost middleware recording which worker served each request and
/// the `Decision` the rate limiter left in it.
fn recording_server(limiter: Limiter, log: Arc<Mutex<Vec<Seen>>>) -> RunningApp {
    serve(move |listener| {
        Ok(HttpServer::new(move || {
            let log = log.clone();
            actix_app::app(limiter.clone(), Mode::Enforce, lightrate::InFlight::new(2)).wrap_fn(
                move |req, srv| {
                    let log = log.clone();
                    let call = srv.call(req);
                    async move {
                        let response = call.await?;
                        let source = response
                            .request()
                            .extensions()
                            .get::<Decision>()
                            .map(Decision::source);
                        let worker = std::thread::current()
                            .name()
                            .unwrap_or("unnamed")
                            .to_owned();
                        log.lock().unwrap().push(Seen {
                            worker,
                            source,
                            status: response.status().as_u16(),
                        });
                        Ok(response)
                    }
                },
            )
        })
        .workers(WORKERS)
        .listen(listener)?
        .run())
    })
}

/// Sequential requests over four connections (actix hands new connections to its workers in
/// turn): every worker uses the same buckets, and the process admits exactly what the token
/// server granted (`GET /hello`: burst 20). The lease that emptied the source taught the one
/// denial cache, which then answers on every worker without a call (a limiter per worker
/// would call the server again from each worker that had not seen the source run dry).
#[tokio::test]
async fn workers_share_one_bucket() {
    let tokens = TokenServer::start().await;
    let limiter = tokens.limiter(LimiterOptions::default());
    let log = Arc::new(Mutex::new(Vec::new()));
    let app = recording_server(limiter.clone(), log.clone());
    log.lock().unwrap().clear(); // the start-up probe
    let clients: Vec<reqwest::Client> = (0..4).map(|_| http()).collect();

    let mut statuses = Vec::new();
    for i in 0..24 {
        let response = clients[i % clients.len()]
            .get(format!("{}/hello", app.base_url))
            .header("x-user-id", "shared")
            .send()
            .await
            .unwrap();
        statuses.push(response.status());
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(ok, 20, "{statuses:?}");
    assert!(statuses[20..]
        .iter()
        .all(|s| *s == StatusCode::TOO_MANY_REQUESTS));

    let seen = log.lock().unwrap().clone();
    let allowed: Vec<&Seen> = seen.iter().filter(|s| s.status == 200).collect();
    let workers: BTreeSet<&str> = allowed.iter().map(|s| s.worker.as_str()).collect();
    assert!(
        // Each worker is an actix arbiter on its own thread.
        workers.len() >= 2 && workers.iter().all(|w| w.contains("arbiter")),
        "served by {workers:?}"
    );
    let denied: BTreeSet<&str> = seen
        .iter()
        .filter(|s| s.status == 429)
        .map(|s| s.worker.as_str())
        .collect();
    assert!(denied.len() >= 2, "denied by {denied:?}");
    // Twenty leases of one token (near the limit, one request's cost each), no call for the
    // four denials.
    assert_eq!(tokens.calls(), 20);
    assert_eq!(limiter.stats().leased_tokens, 20);
    assert_eq!(limiter.stats().denied_by_denial_cache, 4);
}

/// Many concurrent requests over several connections, spread over the workers: the count of
/// 200s never exceeds what the token server granted.
#[tokio::test]
async fn concurrent_requests_across_workers_never_exceed_the_grant() {
    let tokens = TokenServer::start().await;
    let limiter = tokens.limiter(LimiterOptions::default());
    let log = Arc::new(Mutex::new(Vec::new()));
    let app = recording_server(limiter.clone(), log.clone());

    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = http();
        let url = format!("{}/hello", app.base_url);
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..10 {
                let response = client
                    .get(&url)
                    .header("x-user-id", "burst")
                    .send()
                    .await
                    .unwrap();
                if response.status() == StatusCode::TOO_MANY_REQUESTS {
                    assert!(response.headers().contains_key("retry-after"));
                }
                statuses.push(response.status());
            }
            statuses
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.extend(task.await.unwrap());
    }
    assert_eq!(statuses.len(), 80);
    assert!(statuses
        .iter()
        .all(|s| *s == StatusCode::OK || *s == StatusCode::TOO_MANY_REQUESTS));
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count() as u64;
    let stats = limiter.stats();
    let granted = stats.leased_tokens + stats.per_request_tokens;
    assert!(ok >= 1, "{statuses:?}");
    assert!(ok <= granted, "{ok} admitted, {granted} granted");
    assert!(
        granted <= 20,
        "the token server grants at most the burst: {granted}"
    );
    let workers: BTreeSet<String> = log
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.worker.clone())
        .collect();
    assert!(workers.len() >= 2, "served by {workers:?}");
}

/// `wrap` on a scope: requests outside it never touch the limiter; inside, per-route
/// operations cost one token and other routes are limited by their concrete path.
#[tokio::test]
async fn scope_level_wrap() {
    let tokens = TokenServer::start().await;
    let limiter = tokens.limiter(LimiterOptions::default());
    let app = serve(move |listener| {
        Ok(HttpServer::new(move || {
            let rate_limit = LightRate::new(limiter.clone())
                .identify(Identify::header(HeaderName::from_static("x-user-id")));
            App::new()
                .route("/open", web::get().to(|| async { "open" }))
                .service(
                    web::scope("/api")
                        .route("/items/{id}", web::get().to(|| async { "item" }))
                        .service(
                            web::resource("/emails")
                                .wrap(rate_limit.operation_for(
                                    Method::POST,
                                    "/api/emails",
                                    "send_email",
                                ))
                                .route(
                                    web::post().to(|| async { HttpResponse::Ok().body("sent") }),
                                ),
                        )
                        .wrap(rate_limit),
                )
        })
        .workers(WORKERS)
        .listen(listener)?
        .run())
    });
    let client = http();

    for _ in 0..30 {
        let response = client
            .get(format!("{}/open", app.base_url))
            .header("x-user-id", "s")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(tokens.calls(), 0, "outside the scope: no call");

    // `send_email`: burst 10, one token a request.
    let mut emails = Vec::new();
    for _ in 0..11 {
        let response = client
            .post(format!("{}/api/emails", app.base_url))
            .header("x-user-id", "s")
            .send()
            .await
            .unwrap();
        emails.push(response.status());
    }
    assert_eq!(&emails[..10], &[StatusCode::OK; 10]);
    assert_eq!(emails[10], StatusCode::TOO_MANY_REQUESTS);
    let recorded = tokens.faults.recorded();
    assert!(!recorded.is_empty());
    assert!(
        recorded
            .iter()
            .all(|r| r.json()["operation"] == "send_email"),
        "{:?}",
        recorded.iter().map(|r| r.json()).collect::<Vec<_>>()
    );

    // Other routes of the scope: the default rule (burst 5), by their concrete paths.
    let mut items = Vec::new();
    for id in 0..6 {
        let response = client
            .get(format!("{}/api/items/{id}", app.base_url))
            .header("x-user-id", "t")
            .send()
            .await
            .unwrap();
        items.push(response.status());
    }
    assert_eq!(&items[..5], &[StatusCode::OK; 5]);
    assert_eq!(items[5], StatusCode::TOO_MANY_REQUESTS);
    let paths: BTreeSet<String> = tokens
        .faults
        .recorded()
        .iter()
        .filter_map(|r| r.json()["path"].as_str().map(str::to_owned))
        .collect();
    assert!(
        paths.iter().all(|p| p.starts_with("/api/items/")),
        "{paths:?}"
    );
    assert!(!paths.is_empty());
}
