//! The middleware on real actix apps, called in-process with `actix_web::test`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::test::{call_service, init_service, read_body, TestRequest};
use actix_web::{guard, web, App, HttpMessage, HttpResponse};
use lightrate_core::{Decision, Error, ErrorKind, LightRateClient, Limiter, OnUnavailable};
use lightrate_testing::{expect, Recording};

use super::*;

fn user_header() -> Identify {
    Identify::header(HeaderName::from_static("x-user-id"))
}

const PEER: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)),
    4000,
);

/// A request as a client would send it (with a peer address, as a socket gives).
fn request(method: Method, path: &str, user: Option<&str>) -> TestRequest {
    let mut request = TestRequest::default()
        .method(method)
        .uri(path)
        .peer_addr(PEER);
    if let Some(user) = user {
        request = request.insert_header(("x-user-id", user));
    }
    request
}

async fn read<B: MessageBody>(response: ServiceResponse<B>) -> (StatusCode, HeaderMap, String) {
    let status = response.status();
    let headers = response.headers().clone();
    let body = read_body(response).await;
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

/// Sends one request to an app made by `init_service`: (status, headers, body).
macro_rules! send {
    ($app:expr, $request:expr) => {
        read(call_service(&$app, $request.to_request()).await).await
    };
    ($app:expr, $method:expr, $path:expr, $user:expr) => {
        send!($app, request($method, $path, $user))
    };
}

#[actix_rt::test]
async fn allows_until_the_burst_then_answers_429_without_calling_the_handler() {
    let source = Recording::demo();
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let app = init_service(
        App::new()
            .route(
                "/hello",
                web::get().to(move |decision: web::ReqData<Decision>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async move { format!("{:?}", decision.source()) }
                }),
            )
            .wrap(LightRate::new(source.limiter(OnUnavailable::Allow)).identify(user_header())),
    )
    .await;
    for _ in 0..20 {
        let (status, _, body) = send!(app, Method::GET, "/hello", Some("ann"));
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "TokenSource", "the handler reads the decision");
    }
    let (status, headers, body) = send!(app, Method::GET, "/hello", Some("ann"));
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers.get("retry-after").unwrap(), "1");
    assert_eq!(headers.get("content-type").unwrap(), "application/json");
    expect::rate_limited(&body, "rule_hello");
    assert_eq!(handled.load(Ordering::SeqCst), 20);
    // Another user is unaffected.
    assert_eq!(
        send!(app, Method::GET, "/hello", Some("bob")).0,
        StatusCode::OK
    );
}

#[actix_rt::test]
async fn unusable_identifiers_get_400_before_any_token_is_spent() {
    let source = Recording::demo();
    let app = init_service(
        App::new()
            .route("/hello", web::get().to(|| async { "hi" }))
            .wrap(LightRate::new(source.limiter(OnUnavailable::Allow)).identify(user_header())),
    )
    .await;
    let long = "x".repeat(10_000);
    for bad in ["", "   ", long.as_str()] {
        let (status, _, body) = send!(app, Method::GET, "/hello", Some(bad));
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(expect::error(&body), "invalid_user_identifier");
    }
    // What a header can still carry: a tab, and bytes that are not UTF-8.
    for raw in [&b"a\tb"[..], &b"\xff\xfe"[..]] {
        let bad = TestRequest::get()
            .uri("/hello")
            .insert_header(("x-user-id", HeaderValue::from_bytes(raw).unwrap()));
        assert_eq!(send!(app, bad).0, StatusCode::BAD_REQUEST);
    }
    assert!(source.calls().is_empty());
}

#[actix_rt::test]
async fn missing_identifiers_follow_the_policy() {
    for (policy, expected) in expect::MISSING_IDENTIFIER {
        let source = Recording::demo();
        let app = init_service(
            App::new()
                .route("/hello", web::get().to(|| async { "hi" }))
                .wrap(
                    LightRate::new(source.limiter(OnUnavailable::Allow))
                        .identify(user_header())
                        .on_missing_identifier(policy),
                ),
        )
        .await;
        let (status, _, body) = send!(app, Method::GET, "/hello", None);
        assert_eq!(status, expected, "{policy:?}");
        if expected == StatusCode::BAD_REQUEST {
            assert_eq!(expect::error(&body), "missing_user_identifier");
        }
        assert_eq!(
            source.calls().len(),
            usize::from(policy == MissingIdentifier::PeerIp),
            "{policy:?}"
        );
    }
}

#[actix_rt::test]
async fn the_peer_address_is_an_identifier_and_forwarded_for_needs_trust() {
    let source = Recording::demo();
    let limit = LightRate::new(source.limiter(OnUnavailable::Allow));
    let app = init_service(
        App::new()
            .route("/hello", web::get().to(|| async { "hi" }))
            .wrap(limit.clone()),
    )
    .await;
    let trusting = init_service(
        App::new()
            .route("/hello", web::get().to(|| async { "hi" }))
            .wrap(limit.clone().trust_forwarded_for(1)),
    )
    .await;
    let forwarded = || {
        TestRequest::get()
            .uri("/hello")
            .insert_header(("x-forwarded-for", "198.51.100.4, 203.0.113.9"))
            .peer_addr(SocketAddr::from(([10, 0, 0, 1], 9)))
    };
    assert_eq!(send!(app, forwarded()).0, StatusCode::OK);
    assert_eq!(send!(trusting, forwarded()).0, StatusCode::OK);
    let v6 = TestRequest::get()
        .uri("/hello")
        .peer_addr("[2001:db8::7]:443".parse().unwrap());
    assert_eq!(send!(app, v6).0, StatusCode::OK);
    let users = expect::users(limit.limiter());
    assert!(users.contains(&"10.0.0.1".to_owned()), "{users:?}");
    assert!(users.contains(&"203.0.113.9".to_owned()), "{users:?}");
    assert!(users.contains(&"2001:db8::7".to_owned()), "{users:?}");
    assert!(!users.contains(&"198.51.100.4".to_owned()), "{users:?}");
}

#[actix_rt::test]
async fn identifiers_from_an_auth_extension_or_a_closure() {
    #[derive(Clone)]
    struct Claims {
        subject: String,
    }
    let source = Recording::demo();
    let limit = LightRate::new(source.limiter(OnUnavailable::Allow));
    let by_claims = init_service(
        App::new()
            .route("/hello", web::get().to(|| async { "hi" }))
            .wrap(
                limit
                    .clone()
                    .identify(Identify::extension(|c: &Claims| c.subject.as_str())),
            )
            // An authentication middleware, outside the rate limiter.
            .wrap_fn(|req, srv| {
                if let Some(subject) = req.headers().get("x-subject") {
                    let subject = subject.to_str().unwrap_or_default().to_owned();
                    req.extensions_mut().insert(Claims { subject });
                }
                srv.call(req)
            }),
    )
    .await;
    let by_query = init_service(
        App::new()
            .route("/hello", web::get().to(|| async { "hi" }))
            .wrap(
                limit
                    .clone()
                    .identify(Identify::with(|req| {
                        req.query_string().strip_prefix("user=").map(Into::into)
                    }))
                    .on_missing_identifier(MissingIdentifier::Reject),
            ),
    )
    .await;
    let claims = TestRequest::get()
        .uri("/hello")
        .insert_header(("x-subject", "carol"));
    assert_eq!(send!(by_claims, claims).0, StatusCode::OK);
    let blank = TestRequest::get()
        .uri("/hello")
        .insert_header(("x-subject", " "));
    assert_eq!(send!(by_claims, blank).0, StatusCode::BAD_REQUEST);
    assert_eq!(
        send!(by_query, TestRequest::get().uri("/hello?user=dave")).0,
        StatusCode::OK
    );
    assert_eq!(
        send!(by_query, TestRequest::get().uri("/hello")).0,
        StatusCode::BAD_REQUEST
    );
    let mut users = expect::users(limit.limiter());
    users.sort();
    assert_eq!(users, ["carol", "dave"]);
}

#[actix_rt::test]
async fn excluded_requests_never_touch_the_limiter() {
    let source = Recording::demo();
    let app = init_service(
        App::new()
            .route("/healthz", web::get().to(|| async { "ok" }))
            .route("/metrics", web::get().to(|| async { "m" }))
            .wrap(
                LightRate::new(source.limiter(OnUnavailable::Deny))
                    .identify(user_header())
                    .exclude_path("/healthz")
                    .exclude(|req| req.path() == "/metrics"),
            ),
    )
    .await;
    for _ in 0..50 {
        assert_eq!(
            send!(app, Method::GET, "/healthz", Some("u")).0,
            StatusCode::OK
        );
        assert_eq!(send!(app, Method::GET, "/metrics", None).0, StatusCode::OK);
    }
    assert!(source.calls().is_empty());
}

/// The pattern and the name of the resource a request will reach are known to app-wide and
/// scope-level middleware, before routing reaches the resource (and its own middleware): what
/// the app-wide `LightRate` relies on to find a resource's operation.
#[actix_rt::test]
async fn app_wide_middleware_sees_the_resource_pattern_before_the_resource_runs() {
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    macro_rules! record {
        ($place:expr) => {{
            let seen = seen.clone();
            move |req: ServiceRequest, srv| {
                seen.lock().unwrap().push(format!(
                    "{} {:?} {:?}",
                    $place,
                    req.match_pattern(),
                    req.match_name()
                ));
                Service::call(srv, req)
            }
        }};
    }
    let app = init_service(
        App::new()
            .service(
                web::scope("/api")
                    .service(
                        web::resource("/items/{id}")
                            .name("item")
                            .wrap_fn(record!("resource"))
                            .route(web::get().to(|| async { "item" })),
                    )
                    .wrap_fn(record!("scope")),
            )
            .wrap_fn(record!("app")),
    )
    .await;
    assert_eq!(
        send!(app, Method::GET, "/api/items/42", None).0,
        StatusCode::OK
    );
    assert_eq!(
        *seen.lock().unwrap(),
        [
            r#"app Some("/api/items/{id}") Some("item")"#,
            r#"scope Some("/api/items/{id}") Some("item")"#,
            r#"resource Some("/api/items/{id}") Some("item")"#,
        ]
    );
}

/// A fresh recording source and a middleware on it identifying users by `x-user-id`.
fn fresh() -> (Arc<Recording>, LightRate) {
    let source = Recording::demo();
    let limit = LightRate::new(source.limiter(OnUnavailable::Allow)).identify(user_header());
    (source, limit)
}

async fn sent() -> HttpResponse {
    HttpResponse::Ok().body("sent")
}

/// Three POSTs to `$path` are allowed and cost one token each, as the operation `send_email`.
macro_rules! one_token_each {
    ($name:expr, $source:expr, $app:expr, $path:expr) => {{
        let app = init_service($app).await;
        for _ in 0..3 {
            let (status, _, body) = send!(app, Method::POST, $path, Some("u"));
            assert_eq!(
                (status, body.as_str()),
                (StatusCode::OK, "sent"),
                "{}",
                $name
            );
        }
        assert_eq!(
            $source.calls(),
            vec![("operation send_email".to_owned(), 1); 3],
            "{}: one token per request, as the operation",
            $name
        );
    }};
}

/// Every documented way to combine a per-route operation with app-wide or scope-level
/// middleware: one token per request, charged to the operation.
#[actix_rt::test]
async fn operations_cost_exactly_one_token_however_the_middleware_is_combined() {
    let emails = |at: &str| web::resource(at.to_owned()).route(web::post().to(sent));

    let (source, limit) = fresh();
    one_token_each!(
        "the resource's middleware alone",
        source,
        App::new().service(emails("/emails").wrap(limit.operation("/emails", "send_email"))),
        "/emails"
    );

    let (source, limit) = fresh();
    one_token_each!(
        "the resource's middleware inside an app-wide wrap",
        source,
        App::new()
            .service(emails("/emails").wrap(limit.operation("/emails", "send_email")))
            .wrap(limit.clone()),
        "/emails"
    );

    let (source, limit) = fresh();
    one_token_each!(
        "the resource's middleware inside a scope-level wrap",
        source,
        App::new().service(
            web::scope("/api")
                .service(emails("/emails").wrap(limit.operation("/api/emails", "send_email")))
                .wrap(limit.clone())
        ),
        "/api/emails"
    );

    let (source, limit) = fresh();
    one_token_each!(
        "the resource's middleware inside scope-level and app-wide wraps",
        source,
        App::new()
            .service(
                web::scope("/api")
                    .service(emails("/emails").wrap(limit.operation("/api/emails", "send_email")))
                    .wrap(limit.clone())
            )
            .wrap(limit.clone()),
        "/api/emails"
    );

    let (source, limit) = fresh();
    let _ = limit.operation_for(Method::POST, "/emails", "send_email");
    one_token_each!(
        "declared on the app-wide middleware only",
        source,
        App::new().service(emails("/emails")).wrap(limit.clone()),
        "/emails"
    );

    let (source, limit) = fresh();
    let _ = limit.operation("/api/emails", "send_email");
    one_token_each!(
        "declared on the scope-level middleware only",
        source,
        App::new().service(
            web::scope("/api")
                .service(emails("/emails"))
                .wrap(limit.clone())
        ),
        "/api/emails"
    );

    let (source, limit) = fresh();
    let limit = limit.insert_decision(false);
    one_token_each!(
        "the resource's middleware inside an app-wide wrap, without inserting the decision",
        source,
        App::new()
            .service(emails("/emails").wrap(limit.operation("/emails", "send_email")))
            .wrap(limit.clone()),
        "/emails"
    );

    let (source, limit) = fresh();
    let limit = limit.resource_names_as_operations(true);
    one_token_each!(
        "a named resource, app-wide",
        source,
        App::new()
            .service(emails("/emails").name("send_email"))
            .wrap(limit.clone()),
        "/emails"
    );

    let (source, limit) = fresh();
    let limit = limit.resource_names_as_operations(true);
    one_token_each!(
        "a named resource, scope-level",
        source,
        App::new().service(
            web::scope("/api")
                .service(emails("/emails").name("send_email"))
                .wrap(limit.clone())
        ),
        "/api/emails"
    );

    let (source, limit) = fresh();
    let limit = limit.resource_names_as_operations(true);
    one_token_each!(
        "a named resource, on the resource and app-wide",
        source,
        App::new()
            .service(emails("/emails").name("send_email").wrap(limit.clone()))
            .wrap(limit.clone()),
        "/emails"
    );

    // The route macros name the resource after the handler.
    #[actix_web::post("/emails")]
    async fn send_email() -> HttpResponse {
        HttpResponse::Ok().body("sent")
    }
    let (source, limit) = fresh();
    one_token_each!(
        "a route macro's resource, app-wide",
        source,
        App::new()
            .service(send_email)
            .wrap(limit.resource_names_as_operations(true)),
        "/emails"
    );
}

#[actix_rt::test]
async fn an_operation_for_one_method_leaves_the_others_to_their_path() {
    let (source, limit) = fresh();
    let app = init_service(
        App::new()
            .service(
                web::resource("/emails")
                    .wrap(limit.operation_for(Method::POST, "/emails", "send_email"))
                    .route(web::post().to(sent))
                    .route(web::get().to(|| async { "list" })),
            )
            .wrap(limit.clone()),
    )
    .await;
    assert_eq!(
        send!(app, Method::GET, "/emails", Some("u")).0,
        StatusCode::OK
    );
    assert_eq!(
        send!(app, Method::POST, "/emails", Some("u")).0,
        StatusCode::OK
    );
    assert_eq!(
        source.calls(),
        [
            ("GET /emails".to_owned(), 1),
            ("operation send_email".to_owned(), 1)
        ]
    );
}

/// Before routing, actix finds a resource's name from the path alone: when resources share a
/// path (method guards), app-wide middleware sees the first one's name, the resource's own
/// middleware its own (as `resource_names_as_operations` documents).
#[actix_rt::test]
async fn names_before_routing_come_from_the_path_alone() {
    #[actix_web::get("/notes")]
    async fn read_notes() -> &'static str {
        "notes"
    }
    #[actix_web::post("/notes")]
    async fn write_note() -> &'static str {
        "written"
    }
    let (source, limit) = fresh();
    let limit = limit.resource_names_as_operations(true);
    let app_wide = init_service(
        App::new()
            .service(read_notes)
            .service(write_note)
            .wrap(limit.clone()),
    )
    .await;
    let (status, _, body) = send!(app_wide, Method::POST, "/notes", Some("u"));
    assert_eq!((status, body.as_str()), (StatusCode::OK, "written"));
    let per_resource = init_service(
        App::new()
            .service(
                web::resource("/notes")
                    .name("read_notes")
                    .guard(guard::Get())
                    .wrap(limit.clone())
                    .to(|| async { "notes" }),
            )
            .service(
                web::resource("/notes")
                    .name("write_note")
                    .guard(guard::Post())
                    .wrap(limit.clone())
                    .to(|| async { "written" }),
            ),
    )
    .await;
    let (status, _, body) = send!(per_resource, Method::POST, "/notes", Some("v"));
    assert_eq!((status, body.as_str()), (StatusCode::OK, "written"));
    assert_eq!(
        source.calls(),
        [
            ("operation read_notes".to_owned(), 1),
            ("operation write_note".to_owned(), 1)
        ]
    );
}

#[actix_rt::test]
async fn operations_can_cost_more_than_one() {
    let (source, limit) = fresh();
    let app = init_service(
        App::new()
            .service(
                web::resource("/emails")
                    .wrap(limit.operation("/emails", Operation::new("send_email").with_cost(4)))
                    .route(web::post().to(sent)),
            )
            .wrap(limit.clone()),
    )
    .await;
    let mut allowed = 0;
    for _ in 0..4 {
        if send!(app, Method::POST, "/emails", Some("u")).0 == StatusCode::OK {
            allowed += 1;
        }
    }
    // Burst 10 at 4 a request: two requests.
    assert_eq!(allowed, 2);
    expect::all_charged(&source.calls(), "operation send_email", 4);
}

#[actix_rt::test]
async fn paths_are_concrete_by_default_or_the_resource_pattern() {
    for (mode, path, expected) in [
        (PathTarget::Concrete, "/items/42", "GET /items/42"),
        (PathTarget::Template, "/items/42", "GET /items/{id}"),
        (PathTarget::Template, "/api/items/7", "GET /api/items/{id}"),
        // No resource matched: the concrete path.
        (PathTarget::Template, "/nowhere/1", "GET /nowhere/1"),
    ] {
        let source = Recording::demo();
        let app = init_service(
            App::new()
                .route("/items/{id}", web::get().to(|| async { "item" }))
                .service(
                    web::scope("/api").route("/items/{id}", web::get().to(|| async { "item" })),
                )
                .wrap(
                    LightRate::new(source.limiter(OnUnavailable::Allow))
                        .identify(user_header())
                        .path_target(mode),
                ),
        )
        .await;
        send!(app, Method::GET, path, Some("u"));
        assert_eq!(source.calls()[0].0, expected, "{mode:?} {path}");
    }
}

#[actix_rt::test]
async fn ietf_fields_when_asked() {
    let (_source, limit) = fresh();
    let always = init_service(
        App::new()
            .route("/hello", web::get().to(|| async { "hi" }))
            .wrap(limit.clone().rate_limit_headers(RateLimitHeaders::Always)),
    )
    .await;
    let (_, headers, _) = send!(always, Method::GET, "/hello", Some("u"));
    assert_eq!(
        headers.get("ratelimit-policy").unwrap(),
        "\"rule_hello\";q=20;w=20"
    );
    assert_eq!(headers.get("ratelimit").unwrap(), "\"rule_hello\";r=19;t=1");

    let denied_only = init_service(
        App::new()
            .route("/hello", web::get().to(|| async { "hi" }))
            .wrap(limit.rate_limit_headers(RateLimitHeaders::OnDenied)),
    )
    .await;
    let (_, headers, _) = send!(denied_only, Method::GET, "/hello", Some("v"));
    assert!(headers.get("ratelimit").is_none());
    for _ in 0..19 {
        send!(denied_only, Method::GET, "/hello", Some("v"));
    }
    let (status, headers, _) = send!(denied_only, Method::GET, "/hello", Some("v"));
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers.get("ratelimit").unwrap(), "\"rule_hello\";r=0;t=1");
}

#[actix_rt::test]
async fn answers_are_replaceable() {
    let (_source, limit) = fresh();
    let app = init_service(
        App::new()
            .route("/hello", web::get().to(|| async { "hi" }))
            .wrap(limit.respond_with(|rejection| {
                let mut response = http::Response::new(bytes::Bytes::from_static(b"slow down"));
                *response.status_mut() = rejection.status();
                response
                    .headers_mut()
                    .insert("x-why", http::HeaderValue::from_static("limited"));
                response
            })),
    )
    .await;
    let (status, headers, body) = send!(app, Method::GET, "/hello", Some(""));
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::BAD_REQUEST, "slow down")
    );
    assert_eq!(headers.get("x-why").unwrap(), "limited");
}

#[actix_rt::test]
async fn an_unavailable_source_follows_the_outage_policy() {
    for (policy, expected) in expect::OUTAGE {
        let source = Recording::demo();
        source.fail_with(Some(Error::new(ErrorKind::Timeout, "slow")));
        let app = init_service(
            App::new()
                .route("/hello", web::get().to(|| async { "hi" }))
                .wrap(LightRate::new(source.limiter(policy)).identify(user_header())),
        )
        .await;
        let (status, headers, body) = send!(app, Method::GET, "/hello", Some("u"));
        assert_eq!(status, expected, "{policy:?}");
        if expected == StatusCode::SERVICE_UNAVAILABLE {
            assert!(headers.contains_key("retry-after"));
            assert_eq!(expect::error(&body), "rate_limiter_unavailable");
        } else {
            assert_eq!(body, "hi");
        }
    }
}

#[actix_rt::test]
async fn local_hits_do_not_wait_for_the_source() {
    // A rule with room, and leases of at least five: after the lease that learns the rule,
    // one call per five requests.
    let source = Recording::ample();
    let limiter = source.builder(10_000).min_lease_size(5).build();
    let app = init_service(
        App::new()
            .route(
                "/hello",
                web::get().to(|decision: web::ReqData<Decision>| async move {
                    format!("{:?}", decision.source())
                }),
            )
            .wrap(LightRate::new(limiter).identify(user_header())),
    )
    .await;
    let mut sources = Vec::new();
    for _ in 0..6 {
        sources.push(send!(app, Method::GET, "/hello", Some("u")).2);
    }
    expect::leased_then_local(&sources, 2);
    let sizes: Vec<u64> = source.calls().iter().map(|(_, n)| *n).collect();
    assert_eq!(sizes, [1, 5]);
}

#[test]
fn the_middleware_can_be_moved_into_every_worker_and_its_debug_output_has_no_key() {
    fn send_sync_clone<T: Send + Sync + Clone + 'static>() {}
    send_sync_clone::<LightRate>();
    send_sync_clone::<Identify>();

    let key = "sk_live_secret_0123456789";
    let client = LightRateClient::builder(key, "app").build().unwrap();
    let limit = LightRate::new(Limiter::new(client))
        .identify(user_header())
        .exclude_path("/healthz");
    let debug = format!("{limit:?} {:?}", limit.operation("/emails", "send_email"));
    assert!(!debug.contains(key), "{debug}");
    assert!(debug.contains("x-user-id"), "{debug}");
    assert!(debug.contains("send_email"), "{debug}");
}

/// Actix routes on the percent-decoded path: `/em%61ils` reaches `/emails`. The middleware
/// limits what actix routes, so an encoded path is no way around an operation.
#[actix_rt::test]
async fn percent_encoded_paths_are_limited_as_the_route_they_reach() {
    let (source, limit) = fresh();
    let app = init_service(
        App::new()
            .service(
                web::resource("/emails")
                    .wrap(limit.operation_for(Method::POST, "/emails", "send_email"))
                    .route(web::post().to(sent)),
            )
            .route("/hello", web::get().to(|| async { "hi" }))
            .wrap(limit.clone().exclude_path("/healthz")),
    )
    .await;
    for path in ["/emails", "/em%61ils", "/%65mails"] {
        let (status, _, body) = send!(app, Method::POST, path, Some("u"));
        assert_eq!((status, body.as_str()), (StatusCode::OK, "sent"), "{path}");
    }
    assert_eq!(
        send!(app, Method::GET, "/h%65llo", Some("u")).0,
        StatusCode::OK
    );
    assert_eq!(
        source.calls(),
        [
            ("operation send_email".to_owned(), 1),
            ("operation send_email".to_owned(), 1),
            ("operation send_email".to_owned(), 1),
            ("GET /hello".to_owned(), 1),
        ]
    );
}

/// Operations declared on patterns with parameters, app-wide only: every concrete path of the
/// pattern is the operation; other resources sharing its literal prefix are not.
#[actix_rt::test]
async fn operations_on_patterns_with_parameters() {
    let (source, limit) = fresh();
    let _ = limit.operation("/items/{id}", "send_email");
    let _ = limit.operation("/api/items/{id}/{part}", "send_email");
    let app = init_service(
        App::new()
            .route("/items/new", web::get().to(|| async { "form" }))
            .route("/items/{id}", web::get().to(|| async { "item" }))
            .service(
                web::scope("/api").route("/items/{id}/{part}", web::get().to(|| async { "part" })),
            )
            .wrap(limit.clone()),
    )
    .await;
    for path in ["/items/1", "/items/2", "/api/items/3/a", "/items/new"] {
        assert_eq!(send!(app, Method::GET, path, Some("u")).0, StatusCode::OK);
    }
    assert_eq!(
        source.calls(),
        [
            ("operation send_email".to_owned(), 1),
            ("operation send_email".to_owned(), 1),
            ("operation send_email".to_owned(), 1),
            ("GET /items/new".to_owned(), 1),
        ]
    );
}

/// A shadow-mode handler's view of its request: allowed or not, and from where.
async fn shadow_seen(decision: Option<web::ReqData<Decision>>) -> String {
    match decision {
        Some(d) => format!("{} {:?}", d.is_allowed(), d.source()),
        None => "none".to_owned(),
    }
}

#[actix_rt::test]
async fn shadow_mode_lets_refused_requests_through_counted_and_logged_at_a_limited_rate() {
    let logs = lightrate_testing::Logs::capture();
    let source = Recording::demo();
    let clock = lightrate_core::ManualClock::new();
    let limiter = source.builder(1).clock(clock.clone()).build();
    let app = init_service(
        App::new().route("/hello", web::get().to(shadow_seen)).wrap(
            LightRate::new(limiter.clone())
                .identify(user_header())
                .mode(Mode::Shadow),
        ),
    )
    .await;
    let mut seen = Vec::new();
    for _ in 0..50 {
        let (status, _, body) = send!(app, Method::GET, "/hello", Some("ann"));
        assert_eq!(status, StatusCode::OK);
        seen.push(body);
    }
    expect::shadow_run(
        &seen,
        source.calls().len(),
        &limiter,
        &logs.lines_with("shadow mode"),
    );
    clock.advance(std::time::Duration::from_secs(10));
    assert_eq!(
        send!(app, Method::GET, "/hello", Some("ann")).0,
        StatusCode::OK
    );
    expect::shadow_second_line(&logs.lines_with("shadow mode"));
}

#[actix_rt::test]
async fn shadow_mode_lets_unusable_identifiers_and_outages_through() {
    let source = Recording::demo();
    let app = init_service(
        App::new().route("/hello", web::get().to(shadow_seen)).wrap(
            LightRate::new(source.limiter(OnUnavailable::Deny))
                .identify(user_header())
                .mode(Mode::Shadow),
        ),
    )
    .await;
    let (status, _, body) = send!(app, Method::GET, "/hello", Some(" "));
    assert_eq!((status, body.as_str()), (StatusCode::OK, "none"));
    assert!(
        source.calls().is_empty(),
        "an unusable identifier costs no token"
    );
    source.fail_with(Some(Error::new(ErrorKind::Timeout, "slow")));
    let (status, _, body) = send!(app, Method::GET, "/hello", Some("u"));
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "false Unavailable")
    );
}

#[actix_rt::test]
async fn head_is_charged_as_get() {
    let source = Recording::demo();
    // A resource that answers HEAD with its GET handler.
    let app = init_service(
        App::new()
            .service(
                web::resource("/hello")
                    .route(web::get().to(|| async { "hi" }))
                    .route(web::head().to(|| async { "hi" })),
            )
            .wrap(LightRate::new(source.limiter(OnUnavailable::Allow)).identify(user_header())),
    )
    .await;
    // The GET rule's burst (20) covers both.
    for _ in 0..10 {
        assert_eq!(
            send!(app, Method::GET, "/hello", Some("h")).0,
            StatusCode::OK
        );
        assert_eq!(
            send!(app, Method::HEAD, "/hello", Some("h")).0,
            StatusCode::OK
        );
    }
    assert_eq!(
        send!(app, Method::HEAD, "/hello", Some("h")).0,
        StatusCode::TOO_MANY_REQUESTS
    );
    expect::all_charged(&source.calls(), "GET /hello", 1);
}

#[actix_rt::test]
async fn an_in_flight_slot_is_freed_when_the_handler_panics() {
    let source = Recording::demo();
    let cap = lightrate_core::InFlight::new(1).named("p");
    let limit = LightRate::new(source.limiter(OnUnavailable::Allow)).identify(user_header());
    let app = init_service(
        App::new()
            .service(
                web::resource("/panic")
                    .wrap(limit.limits("/panic", [RouteLimit::in_flight(cap.clone())]))
                    .route(web::get().to(|| async {
                        panic!("the handler fails");
                        #[allow(unreachable_code)]
                        HttpResponse::Ok().finish()
                    })),
            )
            .wrap(limit),
    )
    .await;
    let app = std::rc::Rc::new(app);
    let calling = app.clone();
    // The handler's panic unwinds through the middleware's future, which releases the slot.
    let failed = actix_rt::spawn(async move {
        let _ = calling
            .call(request(Method::GET, "/panic", Some("pam")).to_request())
            .await;
    })
    .await;
    assert!(failed.is_err());
    assert_eq!(cap.in_flight("pam"), Some(0));
}
