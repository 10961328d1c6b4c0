//! The layer on real axum routers, called in-process with `oneshot`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::routing::{get, post};
use axum::{Extension, Router};
use http::{HeaderName, Method, Request, StatusCode};
use http_body_util::BodyExt;
use lightrate_core::{Decision, Error, ErrorKind, OnUnavailable};
use lightrate_testing::{expect, Recording};
use tower::ServiceExt;

use super::*;

fn user_header() -> Identify {
    Identify::header(HeaderName::from_static("x-user-id"))
}

async fn send(
    app: &Router,
    method: Method,
    path: &str,
    user: Option<&str>,
) -> (StatusCode, http::HeaderMap, String) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(user) = user {
        request = request.header("x-user-id", user);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn allows_until_the_burst_then_answers_429_without_calling_the_handler() {
    let source = Recording::demo();
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let app = Router::new()
        .route(
            "/hello",
            get(move |Extension(decision): Extension<Decision>| {
                counter.fetch_add(1, Ordering::SeqCst);
                async move { format!("{:?}", decision.source()) }
            }),
        )
        .layer(LightRateLayer::new(source.limiter(OnUnavailable::Allow)).identify(user_header()));
    for _ in 0..20 {
        let (status, _, body) = send(&app, Method::GET, "/hello", Some("ann")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "TokenSource", "the handler reads the decision");
    }
    let (status, headers, body) = send(&app, Method::GET, "/hello", Some("ann")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "1");
    expect::rate_limited(&body, "rule_hello");
    assert_eq!(handled.load(Ordering::SeqCst), 20);
    // Another user is unaffected.
    assert_eq!(
        send(&app, Method::GET, "/hello", Some("bob")).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn unusable_identifiers_get_400_before_any_token_is_spent() {
    let source = Recording::demo();
    let app = Router::new()
        .route("/hello", get(|| async { "hi" }))
        .layer(LightRateLayer::new(source.limiter(OnUnavailable::Allow)).identify(user_header()));
    let long = "x".repeat(10_000);
    for bad in ["", "   ", long.as_str()] {
        let (status, _, body) = send(&app, Method::GET, "/hello", Some(bad)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(expect::error(&body), "invalid_user_identifier");
    }
    // What a header can still carry: a tab, and bytes that are not UTF-8.
    for raw in [&b"a\tb"[..], &b"\xff\xfe"[..]] {
        let request = Request::get("/hello")
            .header("x-user-id", http::HeaderValue::from_bytes(raw).unwrap())
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }
    assert!(source.calls().is_empty());
}

#[tokio::test]
async fn missing_identifiers_follow_the_policy() {
    let peer: SocketAddr = "198.51.100.7:4321".parse().unwrap();
    let request = || {
        let mut r = Request::get("/hello").body(Body::empty()).unwrap();
        r.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        r
    };
    for (policy, expected) in expect::MISSING_IDENTIFIER {
        let source = Recording::demo();
        let app = Router::new().route("/hello", get(|| async { "hi" })).layer(
            LightRateLayer::new(source.limiter(OnUnavailable::Allow))
                .identify(user_header())
                .on_missing_identifier(policy),
        );
        let response = app.clone().oneshot(request()).await.unwrap();
        assert_eq!(response.status(), expected, "{policy:?}");
        let calls = source.calls().len();
        assert_eq!(
            calls,
            usize::from(policy == MissingIdentifier::PeerIp),
            "{policy:?}"
        );
    }
}

#[tokio::test]
async fn the_peer_address_is_an_identifier_and_forwarded_for_needs_trust() {
    let source = Recording::demo();
    let limit = LightRateLayer::new(source.limiter(OnUnavailable::Allow));
    let app = Router::new()
        .route("/hello", get(|| async { "hi" }))
        .layer(limit.clone());
    let trusting = Router::new()
        .route("/hello", get(|| async { "hi" }))
        .layer(limit.clone().trust_forwarded_for(1));
    let request = || {
        let mut r = Request::get("/hello")
            .header("x-forwarded-for", "203.0.113.9")
            .body(Body::empty())
            .unwrap();
        r.extensions_mut()
            .insert(axum::extract::ConnectInfo(SocketAddr::from((
                [10, 0, 0, 1],
                9,
            ))));
        r
    };
    app.clone().oneshot(request()).await.unwrap();
    trusting.clone().oneshot(request()).await.unwrap();
    let users = expect::users(limit.limiter());
    assert!(users.contains(&"10.0.0.1".to_owned()), "{users:?}");
    assert!(users.contains(&"203.0.113.9".to_owned()), "{users:?}");
}

#[tokio::test]
async fn excluded_requests_never_touch_the_limiter() {
    let source = Recording::demo();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(|| async { "m" }))
        .layer(
            LightRateLayer::new(source.limiter(OnUnavailable::Deny))
                .identify(user_header())
                .exclude_path("/healthz")
                .exclude(|parts| parts.uri.path() == "/metrics"),
        );
    for _ in 0..50 {
        assert_eq!(
            send(&app, Method::GET, "/healthz", Some("u")).await.0,
            StatusCode::OK
        );
        assert_eq!(
            send(&app, Method::GET, "/metrics", None).await.0,
            StatusCode::OK
        );
    }
    assert!(source.calls().is_empty());
}

/// Every documented way to combine a per-route operation with a router-wide layer: one token
/// per request, charged to the operation.
#[tokio::test]
async fn operations_cost_exactly_one_token_however_the_layers_are_combined() {
    type Build = fn(&LightRateLayer) -> Router;
    let combinations: [(&str, Build); 5] = [
        ("the route's layer alone", |limit| {
            Router::new().route(
                "/emails",
                post(|| async { "sent" }).layer(limit.operation("/emails", "send_email")),
            )
        }),
        ("the route's layer inside a router-wide layer", |limit| {
            Router::new()
                .route(
                    "/emails",
                    post(|| async { "sent" }).layer(limit.operation("/emails", "send_email")),
                )
                .layer(limit.clone())
        }),
        (
            "the route's layer inside a router-wide route_layer",
            |limit| {
                Router::new()
                    .route(
                        "/emails",
                        post(|| async { "sent" }).layer(limit.operation("/emails", "send_email")),
                    )
                    .route_layer(limit.clone())
            },
        ),
        ("declared on the router-wide layer only", |limit| {
            let _ = limit.operation_for(Method::POST, "/emails", "send_email");
            Router::new()
                .route("/emails", post(|| async { "sent" }))
                .layer(limit.clone())
        }),
        ("the operation's layer on a nested router", |limit| {
            let emails = Router::new()
                .route("/emails", post(|| async { "sent" }))
                .layer(limit.operation("/emails", "send_email"));
            Router::new().merge(emails).layer(limit.clone())
        }),
    ];
    for (name, build) in combinations {
        let source = Recording::demo();
        let limit =
            LightRateLayer::new(source.limiter(OnUnavailable::Allow)).identify(user_header());
        let app = build(&limit);
        for _ in 0..3 {
            let (status, _, _) = send(&app, Method::POST, "/emails", Some("u")).await;
            assert_eq!(status, StatusCode::OK, "{name}");
        }
        let calls = source.calls();
        assert_eq!(
            calls,
            vec![("operation send_email".to_owned(), 1); 3],
            "{name}: one token per request, as the operation"
        );
    }
}

#[tokio::test]
async fn without_the_decision_extension_a_request_is_still_decided_once() {
    let source = Recording::demo();
    let limit = LightRateLayer::new(source.limiter(OnUnavailable::Allow))
        .identify(user_header())
        .insert_decision(false);
    let app = Router::new()
        .route(
            "/emails",
            post(|decision: Option<Extension<Decision>>| async move {
                assert!(decision.is_none(), "not kept when insert_decision(false)");
                "sent"
            })
            .layer(limit.operation("/emails", "send_email")),
        )
        .layer(limit.clone());
    for _ in 0..3 {
        assert_eq!(
            send(&app, Method::POST, "/emails", Some("u")).await.0,
            StatusCode::OK
        );
    }
    let calls = source.calls();
    assert_eq!(calls, vec![("operation send_email".to_owned(), 1); 3]);
}

/// The default configuration (the client's address; method and path) decides a request once,
/// whether or not it or the layer after it keeps the `Decision`, local hits included; a
/// request it cannot limit (no address known) it leaves unmarked, for a later LightRate layer
/// to decide.
#[tokio::test]
async fn each_stacked_middleware_decides_a_request_once_and_none_is_skipped() {
    for (keep, inner_keeps) in [(true, true), (false, false), (true, false), (false, true)] {
        let by_address = Recording::ample();
        let by_header = Recording::ample();
        let outer = LightRateLayer::new(by_address.builder(100).min_lease_size(100).build())
            .insert_decision(keep);
        let inner = LightRateLayer::new(by_header.builder(100).build())
            .identify(user_header())
            .insert_decision(inner_keeps);
        let app = Router::new()
            .route("/hello", get(|| async { "hi" }))
            .layer(inner.clone())
            .layer(outer.clone())
            .layer(outer.clone());
        let request = |address: bool| {
            let mut r = Request::get("/hello")
                .header("x-user-id", "u")
                .body(Body::empty())
                .unwrap();
            if address {
                r.extensions_mut()
                    .insert(axum::extract::ConnectInfo(SocketAddr::from((
                        [10, 0, 0, 1],
                        9,
                    ))));
            }
            r
        };
        let decided = |limit: &LightRateLayer| {
            let stats = limit.limiter().stats();
            stats.local_hits + stats.allowed_by_source
        };
        for _ in 0..20 {
            let response = app.clone().oneshot(request(true)).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
        }
        // The outer layer twice decides once; the inner one, another middleware with its own
        // limiter and identifier, joins the decision (it is never skipped).
        assert_eq!(
            (decided(&outer), decided(&inner)),
            (20, 20),
            "keep {keep}, inner {inner_keeps}"
        );
        assert!(outer.limiter().stats().local_hits > 0, "keep {keep}");
        for _ in 0..5 {
            let response = app.clone().oneshot(request(false)).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
        }
        assert_eq!(
            (decided(&outer), decided(&inner)),
            (20, 25),
            "keep {keep}, inner {inner_keeps}"
        );
    }
}

#[tokio::test]
async fn operations_can_cost_more_than_one() {
    let source = Recording::demo();
    let limit = LightRateLayer::new(source.limiter(OnUnavailable::Allow)).identify(user_header());
    let app = Router::new()
        .route(
            "/emails",
            post(|| async { "sent" })
                .layer(limit.operation("/emails", Operation::new("send_email").with_cost(4))),
        )
        .layer(limit.clone());
    let mut allowed = 0;
    for _ in 0..4 {
        if send(&app, Method::POST, "/emails", Some("u")).await.0 == StatusCode::OK {
            allowed += 1;
        }
    }
    // Burst 10 at 4 a request: two requests.
    assert_eq!(allowed, 2);
    expect::all_charged(&source.calls(), "operation send_email", 4);
}

#[tokio::test]
async fn paths_are_concrete_by_default_or_the_route_template() {
    for (mode, expected) in [
        (PathTarget::Concrete, "GET /items/42"),
        (PathTarget::Template, "GET /items/{id}"),
    ] {
        let source = Recording::demo();
        let app = Router::new()
            .route("/items/{id}", get(|| async { "item" }))
            .layer(
                LightRateLayer::new(source.limiter(OnUnavailable::Allow))
                    .identify(user_header())
                    .path_target(mode),
            );
        send(&app, Method::GET, "/items/42", Some("u")).await;
        assert_eq!(source.calls()[0].0, expected);
    }
}

#[tokio::test]
async fn ietf_fields_when_asked() {
    let source = Recording::demo();
    let limit = LightRateLayer::new(source.limiter(OnUnavailable::Allow)).identify(user_header());
    let always = Router::new()
        .route("/hello", get(|| async { "hi" }))
        .layer(limit.clone().rate_limit_headers(RateLimitHeaders::Always));
    let (_, headers, _) = send(&always, Method::GET, "/hello", Some("u")).await;
    assert_eq!(headers["ratelimit-policy"], "\"rule_hello\";q=20;w=20");
    assert_eq!(headers["ratelimit"], "\"rule_hello\";r=19;t=1");

    let denied_only = Router::new()
        .route("/hello", get(|| async { "hi" }))
        .layer(limit.rate_limit_headers(RateLimitHeaders::OnDenied));
    let (_, headers, _) = send(&denied_only, Method::GET, "/hello", Some("v")).await;
    assert!(headers.get("ratelimit").is_none());
    for _ in 0..19 {
        send(&denied_only, Method::GET, "/hello", Some("v")).await;
    }
    let (status, headers, _) = send(&denied_only, Method::GET, "/hello", Some("v")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["ratelimit"], "\"rule_hello\";r=0;t=1");
}

#[tokio::test]
async fn answers_are_replaceable() {
    let source = Recording::demo();
    let app = Router::new().route("/hello", get(|| async { "hi" })).layer(
        LightRateLayer::new(source.limiter(OnUnavailable::Allow))
            .identify(user_header())
            .respond_with(|rejection| {
                let mut response = http::Response::new(bytes::Bytes::from_static(b"slow down"));
                *response.status_mut() = rejection.status();
                response
            }),
    );
    let (status, _, body) = send(&app, Method::GET, "/hello", Some("")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::BAD_REQUEST, "slow down")
    );
}

#[tokio::test]
async fn an_unavailable_source_follows_the_outage_policy() {
    for (policy, expected) in expect::OUTAGE {
        let source = Recording::demo();
        source.fail_with(Some(Error::new(ErrorKind::Timeout, "slow")));
        let app = Router::new()
            .route("/hello", get(|| async { "hi" }))
            .layer(LightRateLayer::new(source.limiter(policy)).identify(user_header()));
        let (status, headers, body) = send(&app, Method::GET, "/hello", Some("u")).await;
        assert_eq!(status, expected, "{policy:?}");
        if expected == StatusCode::SERVICE_UNAVAILABLE {
            assert!(headers.contains_key("retry-after"));
            assert_eq!(expect::error(&body), "rate_limiter_unavailable");
        }
    }
}

#[tokio::test]
async fn local_hits_do_not_wait_for_the_source() {
    // A rule with room, and leases of at least five: after the lease that learns the rule,
    // one call per five requests.
    let source = Recording::ample();
    let limiter = source.builder(10_000).min_lease_size(5).build();
    let app = Router::new()
        .route(
            "/hello",
            get(|Extension(decision): Extension<Decision>| async move {
                format!("{:?}", decision.source())
            }),
        )
        .layer(LightRateLayer::new(limiter).identify(user_header()));
    let sources: Vec<String> = futures_like_join(&app, 6).await;
    expect::leased_then_local(&sources, 2);
    let sizes: Vec<u64> = source.calls().iter().map(|(_, n)| *n).collect();
    assert_eq!(sizes, [1, 5]);
}

async fn futures_like_join(app: &Router, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(send(app, Method::GET, "/hello", Some("u")).await.2);
    }
    out
}

#[test]
fn layer_service_and_future_are_send_and_the_layer_is_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<LightRateLayer>();
    send_sync::<LightRateService<axum::routing::Route>>();
    send::<ResponseFuture<axum::routing::Route, Body>>();
    let _ = Duration::ZERO;
}

/// What a shadow-mode handler saw: whether its request was allowed, and from where.
fn shadow_app(
    limiter: lightrate_core::Limiter,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
) -> Router {
    Router::new()
        .route(
            "/hello",
            get(move |decision: Option<Extension<Decision>>| {
                let seen = seen.clone();
                async move {
                    let line = match decision {
                        Some(Extension(d)) => format!("{} {:?}", d.is_allowed(), d.source()),
                        None => "none".to_owned(),
                    };
                    seen.lock().unwrap().push(line);
                    "hi"
                }
            }),
        )
        .layer(
            LightRateLayer::new(limiter)
                .identify(user_header())
                .mode(Mode::Shadow),
        )
}

#[tokio::test]
async fn shadow_mode_lets_refused_requests_through_counted_and_logged_at_a_limited_rate() {
    let logs = lightrate_testing::Logs::capture();
    let source = Recording::demo();
    let clock = lightrate_core::ManualClock::new();
    let limiter = source.builder(1).clock(clock.clone()).build();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let app = shadow_app(limiter.clone(), seen.clone());
    // `GET /hello`: burst 20; the next 30 would have been refused.
    for _ in 0..50 {
        let (status, _, body) = send(&app, Method::GET, "/hello", Some("ann")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "hi"));
    }
    let seen = seen.lock().unwrap().clone();
    // Tokens are consumed as enforcement would; one log line for thirty.
    expect::shadow_run(
        &seen,
        source.calls().len(),
        &limiter,
        &logs.lines_with("shadow mode"),
    );
    // Ten seconds on, the next line says how many were let through meanwhile.
    clock.advance(Duration::from_secs(10));
    assert_eq!(
        send(&app, Method::GET, "/hello", Some("ann")).await.0,
        StatusCode::OK
    );
    expect::shadow_second_line(&logs.lines_with("shadow mode"));
}

#[tokio::test]
async fn shadow_mode_lets_unusable_identifiers_and_outages_through() {
    let source = Recording::demo();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let app = shadow_app(source.limiter(OnUnavailable::Deny), seen.clone());
    let (status, _, _) = send(&app, Method::GET, "/hello", Some(" ")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        source.calls().is_empty(),
        "an unusable identifier costs no token"
    );
    source.fail_with(Some(Error::new(ErrorKind::Timeout, "slow")));
    assert_eq!(
        send(&app, Method::GET, "/hello", Some("u")).await.0,
        StatusCode::OK
    );
    let error = lightrate_core::Limiter::builder(source.clone())
        .on_unavailable(OnUnavailable::Error)
        .build();
    let errors = shadow_app(error, seen.clone());
    assert_eq!(
        send(&errors, Method::GET, "/hello", Some("u")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        *seen.lock().unwrap(),
        ["none", "false Unavailable", "false Unavailable"]
    );
}

/// The default configuration's own path (the client's address, compared with the memos as an
/// address, and the method and path as they are): each address gets exactly its burst, however
/// its requests interleave with other addresses' (more of them than the memos hold), and HEAD
/// takes from the GET bucket.
#[tokio::test]
async fn by_address_each_client_gets_exactly_its_burst_however_requests_interleave() {
    let source = Recording::demo();
    let limiter = source.builder(20).min_lease_size(20).build();
    let app = Router::new()
        .route("/hello", get(|| async { "hi" }))
        .layer(LightRateLayer::new(limiter.clone()));
    let request = |method: Method, last: u8| {
        let mut r = Request::builder()
            .method(method)
            .uri("/hello")
            .body(Body::empty())
            .unwrap();
        r.extensions_mut()
            .insert(axum::extract::ConnectInfo(SocketAddr::from((
                [192, 0, 2, last],
                9,
            ))));
        r
    };
    // Three addresses in turn (the memos hold two users), then runs of each while its bucket
    // still holds tokens (so that the next address finds the last one memoized), then the
    // rest: 25 requests each, one in five a HEAD; the demo's GET /hello rule has a burst of 20.
    let mut allowed = [0; 3];
    let mut order: Vec<usize> = (0..15).map(|i| i % 3).collect();
    for run in [8, 12] {
        order.extend((0..3).flat_map(|a| std::iter::repeat_n(a, run)));
    }
    for (n, &a) in order.iter().enumerate() {
        let method = if n % 5 == 0 {
            Method::HEAD
        } else {
            Method::GET
        };
        let last = 10 + a as u8;
        let response = app.clone().oneshot(request(method, last)).await.unwrap();
        match response.status() {
            StatusCode::OK => allowed[a] += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("address {a}: {other}"),
        }
    }
    assert_eq!(allowed, [20; 3], "each address exactly its burst");
    let calls = source.calls();
    assert!(calls.iter().all(|(t, _)| t == "GET /hello"), "{calls:?}");
    let stats = limiter.stats();
    assert!(stats.local_hits >= 3 * 15, "served locally: {stats:?}");
    let mut users = expect::users(&limiter);
    users.sort();
    assert_eq!(users, ["192.0.2.10", "192.0.2.11", "192.0.2.12"]);
}

#[tokio::test]
async fn head_is_charged_as_get() {
    let source = Recording::demo();
    let app = Router::new()
        .route("/hello", get(|| async { "hi" }))
        .layer(LightRateLayer::new(source.limiter(OnUnavailable::Allow)).identify(user_header()));
    // axum answers HEAD with the GET handler: the GET rule's burst (20) covers both.
    for _ in 0..10 {
        assert_eq!(
            send(&app, Method::GET, "/hello", Some("h")).await.0,
            StatusCode::OK
        );
        assert_eq!(
            send(&app, Method::HEAD, "/hello", Some("h")).await.0,
            StatusCode::OK
        );
    }
    assert_eq!(
        send(&app, Method::HEAD, "/hello", Some("h")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    expect::all_charged(&source.calls(), "GET /hello", 1);
    // A GET route's operation covers its HEAD requests too.
    let limiter = source.limiter(OnUnavailable::Allow);
    let layer = LightRateLayer::new(limiter).identify(user_header());
    let app = Router::new()
        .route(
            "/mail",
            get(|| async { "m" }).layer(layer.operation_for(Method::GET, "/mail", "send_email")),
        )
        .layer(layer);
    for _ in 0..10 {
        assert_eq!(
            send(&app, Method::HEAD, "/mail", Some("h")).await.0,
            StatusCode::OK
        );
    }
    assert_eq!(
        send(&app, Method::GET, "/mail", Some("h")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn an_in_flight_slot_is_freed_when_the_handler_panics_or_the_request_is_dropped() {
    let source = Recording::demo();
    let cap = lightrate_core::InFlight::new(1).named("p");
    let layer = LightRateLayer::new(source.limiter(OnUnavailable::Allow)).identify(user_header());
    let (started_tx, started_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let app = Router::new()
        .route(
            "/panic",
            get(|| async {
                panic!("the handler fails");
                #[allow(unreachable_code)]
                ""
            })
            .layer(layer.limits("/panic", [RouteLimit::in_flight(cap.clone())])),
        )
        .route(
            "/hang",
            get(move || {
                let started = started_tx.clone();
                async move {
                    let _ = started.send(());
                    std::future::pending::<&str>().await
                }
            })
            .layer(layer.limits("/hang", [RouteLimit::in_flight(cap.clone())])),
        )
        .layer(layer);
    let request = |path: &str| {
        Request::get(path)
            .header("x-user-id", "pam")
            .body(Body::empty())
            .unwrap()
    };
    // A panicking handler: the request's task fails, and its slot is released on the way.
    let failed = tokio::spawn(app.clone().oneshot(request("/panic"))).await;
    assert!(failed.unwrap_err().is_panic());
    assert_eq!(cap.in_flight("pam"), Some(0));
    // A request dropped mid-handler (a client gone, a timeout): its slot is released.
    let mut started_rx = started_rx;
    let hanging = tokio::spawn(app.clone().oneshot(request("/hang")));
    started_rx.recv().await.unwrap();
    assert_eq!(cap.in_flight("pam"), Some(1));
    let (status, headers, _) = send(&app, Method::GET, "/hang", Some("pam")).await;
    assert_eq!(
        (status, &headers["retry-after"]),
        (StatusCode::TOO_MANY_REQUESTS, &"1".parse().unwrap())
    );
    hanging.abort();
    assert!(hanging.await.unwrap_err().is_cancelled());
    assert_eq!(cap.in_flight("pam"), Some(0));
}

/// A fleet's slot store that cannot answer (Redis down).
#[derive(Debug)]
struct DownStore;

impl lightrate_core::InFlightStore for DownStore {
    fn acquire<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: u32,
    ) -> lightrate_core::StoreFuture<'a, lightrate_core::StoreAcquired> {
        Box::pin(async { Err(Error::new(ErrorKind::Timeout, "the store timed out")) })
    }

    fn release(&self, _: lightrate_core::StoreSlot) -> lightrate_core::StoreFuture<'static, ()> {
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test]
async fn a_fleet_cap_that_cannot_answer_follows_the_outage_policy() {
    for (policy, expected) in [
        (OnUnavailable::Allow, StatusCode::OK),
        (OnUnavailable::Deny, StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let source = Recording::demo();
        let cap = lightrate_core::InFlight::shared(2, DownStore);
        let layer = LightRateLayer::new(source.limiter(policy)).identify(user_header());
        let app = Router::new()
            .route(
                "/export",
                get(|| async { "done" })
                    .layer(layer.limits("/export", [RouteLimit::in_flight(cap)])),
            )
            .layer(layer);
        let (status, headers, _) = send(&app, Method::GET, "/export", Some("pam")).await;
        assert_eq!(status, expected, "{policy:?}");
        if expected == StatusCode::SERVICE_UNAVAILABLE {
            assert!(headers.contains_key("retry-after"));
        }
    }
}

#[tokio::test]
async fn a_limit_added_to_every_request_joins_its_decision() {
    let source = Recording::demo();
    let limiter = source.limiter(OnUnavailable::Allow);
    let layer = LightRateLayer::new(limiter.clone())
        .identify(user_header())
        .also(
            RouteLimit::request().identify(Identify::header(HeaderName::from_static("x-org-id"))),
        );
    let app = Router::new()
        .route("/hello", get(|| async { "hi" }))
        .layer(layer);
    let mut admitted = 0;
    for org in 0..25 {
        let request = Request::get("/hello")
            .header("x-user-id", "uma")
            .header("x-org-id", format!("org{org}"))
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        match response.status() {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                let body = response.into_body().collect().await.unwrap().to_bytes();
                let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(body["violations"][0]["rule"], "rule_hello", "{body}");
            }
            other => panic!("{other}"),
        }
    }
    // The user's burst (20), and the refused requests' organisations keep their token.
    assert_eq!(admitted, 20);
    let hello = lightrate_core::Target::path(Method::GET, "/hello");
    let mut left = 0;
    while limiter.check("org24", &hello).await.unwrap().is_allowed() {
        left += 1;
    }
    assert_eq!(left, 20);
    // Without the organisation's header: 400, nothing taken from the user.
    let (status, _, _) = send(&app, Method::GET, "/hello", Some("ivy")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_settled_limit_reads_its_use_from_the_response_head_or_the_handler() {
    let source = Recording::demo();
    let limiter = source.limiter(OnUnavailable::Allow);
    let layer = LightRateLayer::new(limiter.clone()).identify(user_header());
    // `llm_tokens` of the demo rules: 10 a second, burst 1 000; each request reserves 500.
    let by_header = [RouteLimit::operation("llm_tokens")
        .with_cost(500)
        .settle_with(|head| head.header("x-usage-tokens")?.parse().ok())];
    let app = Router::new()
        .route(
            "/header",
            post(|| async { ([("x-usage-tokens", "50")], "done") }).layer(layer.limits_for(
                Method::POST,
                "/header",
                by_header.clone(),
            )),
        )
        .route(
            "/used",
            post(|| async { (Extension(Used(50)), "done") }).layer(layer.limits_for(
                Method::POST,
                "/used",
                by_header,
            )),
        )
        .layer(layer);
    // 11 requests that reserve 500 and use 50, by either way of saying it: each finds the 500
    // it reserves (550 used at the end), where 2 would at their reservation.
    for path in ["/header", "/used"] {
        for _ in 0..5 {
            let (status, _, body) = send(&app, Method::POST, path, Some("lou")).await;
            assert_eq!((status, body.as_str()), (StatusCode::OK, "done"), "{path}");
        }
    }
    let (status, _, _) = send(&app, Method::POST, "/header", Some("lou")).await;
    assert_eq!(status, StatusCode::OK);
    // Then 450 are left: the next reservation of 500 is refused.
    let (status, _, _) = send(&app, Method::POST, "/used", Some("lou")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_dropped_request_is_charged_its_reservation_unless_told_to_release_it() {
    let source = Recording::demo();
    let layer = LightRateLayer::new(source.limiter(OnUnavailable::Allow)).identify(user_header());
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let hang = move || {
        let started = started_tx.clone();
        async move {
            let _ = started.send(());
            std::future::pending::<&str>().await
        }
    };
    // `llm_tokens` of the demo rules: burst 1 000; each request reserves 600.
    let tokens = || RouteLimit::operation("llm_tokens").with_cost(600).settled();
    let app = Router::new()
        .route(
            "/charged",
            post(hang.clone()).layer(layer.limits_for(Method::POST, "/charged", [tokens()])),
        )
        .route(
            "/released",
            post(hang).layer(layer.limits_for(
                Method::POST,
                "/released",
                [tokens().release_when_dropped()],
            )),
        )
        .layer(layer);
    let request = |path: &str, user: &str| {
        Request::post(path)
            .header("x-user-id", user)
            .body(Body::empty())
            .unwrap()
    };
    for (path, user, again) in [
        ("/charged", "cy", StatusCode::TOO_MANY_REQUESTS),
        ("/released", "di", StatusCode::OK),
    ] {
        // A request dropped mid-handler (its client gone).
        let hanging = tokio::spawn(app.clone().oneshot(request(path, user)));
        started_rx.recv().await.unwrap();
        hanging.abort();
        assert!(hanging.await.unwrap_err().is_cancelled());
        // Charged, 400 are left: another 600 is refused. Released: it is not.
        let next = tokio::spawn(app.clone().oneshot(request(path, user)));
        if again == StatusCode::OK {
            // Admitted: its handler starts (a refusal would have answered instead).
            let started = tokio::time::timeout(Duration::from_secs(10), started_rx.recv());
            assert!(
                started.await.is_ok(),
                "{path}: the next request was not admitted"
            );
            next.abort();
        } else {
            assert_eq!(next.await.unwrap().unwrap().status(), again, "{path}");
        }
    }
}

#[tokio::test]
async fn a_waiting_route_whose_source_is_down_answers_the_outage_policy_after_one_call() {
    let source = Recording::demo();
    source.fail_with(Some(Error::new(ErrorKind::Timeout, "slow")));
    let layer = LightRateLayer::new(source.limiter(OnUnavailable::Deny)).identify(user_header());
    let jobs = [RouteLimit::operation("jobs").wait_up_to(Duration::from_secs(2))];
    let app = Router::new()
        .route(
            "/jobs",
            post(|| async { "queued" }).layer(layer.limits_for(Method::POST, "/jobs", jobs)),
        )
        .layer(layer);
    let (status, _, body) = send(&app, Method::POST, "/jobs", Some("wes")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(expect::error(&body), "rate_limiter_unavailable");
    // No wait helps a source that failed: it was not asked again.
    assert_eq!(source.calls().len(), 1, "{:?}", source.calls());
}

#[tokio::test]
async fn limits_sharing_the_middlewares_identifier_each_charge_the_same_client() {
    // A cap first (the others copy its identifier), then two rate limits of their own rules:
    // by a header, then by the client's address (written once, borrowed by every limit).
    for by_peer in [false, true] {
        let source = Recording::demo();
        let limiter = source.limiter(OnUnavailable::Allow);
        let cap = lightrate_core::InFlight::new(3).named("c");
        let identify = if by_peer {
            Identify::peer_ip()
        } else {
            user_header()
        };
        let layer = LightRateLayer::new(limiter.clone())
            .identify(identify)
            .also(RouteLimit::in_flight(cap.clone()))
            .also(RouteLimit::operation("search_per_second"))
            .also(RouteLimit::operation("search_per_day"));
        let app = Router::new()
            .route("/hello", get(|| async { "hi" }))
            .layer(layer);
        let request = || {
            let mut r = Request::get("/hello")
                .header("x-user-id", "ann")
                .body(Body::empty())
                .unwrap();
            r.extensions_mut()
                .insert(axum::extract::ConnectInfo(SocketAddr::from((
                    [198, 51, 100, 7],
                    4321,
                ))));
            r
        };
        let who = if by_peer { "198.51.100.7" } else { "ann" };
        let mut allowed = 0;
        for _ in 0..8 {
            let response = app.clone().oneshot(request()).await.unwrap();
            allowed += usize::from(response.status() == StatusCode::OK);
        }
        // search_per_second's burst (5) binds, for this one client, on every limit.
        assert_eq!(allowed, 5, "by_peer {by_peer}");
        assert_eq!(cap.in_flight(who), Some(0), "by_peer {by_peer}");
        let mut users: Vec<String> = limiter
            .bucket_statuses()
            .into_iter()
            .map(|status| status.user_identifier)
            .collect();
        users.dedup();
        assert_eq!(users, [who], "by_peer {by_peer}");
        assert_eq!(
            limiter.bucket_statuses().len(),
            3,
            "/hello's rule and both operations"
        );
    }
}
