//! The layer's own work on a local hit allocates nothing (the `Decision` it hands the handler
//! is one allocation, and can be turned off). Counted per thread with a counting allocator,
//! around a plain inner service, on requests built beforehand.
#![allow(clippy::unwrap_used, missing_docs)]

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderName, Request, Response};
use http_body_util::Full;
use lightrate_core::{EmbeddedSource, Limiter, RefillRate, RuleSet};
use lightrate_testing::{allocations, Counting};
use lightrate_tower::{Identify, LightRateLayer};
use tower::{Layer, Service, ServiceExt};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Routers put their own values in a request's extensions before route layers run (axum:
/// `MatchedPath`, the URL parameters, `ConnectInfo`), so the extensions map already exists.
#[derive(Clone)]
struct RoutedBy;

fn request() -> Request<Full<Bytes>> {
    let mut request = Request::get("/hello")
        .header("x-user-id", "alice")
        .body(Full::new(Bytes::new()))
        .unwrap();
    request.extensions_mut().insert(RoutedBy);
    request
}

/// Allocations per request made by the layer around a service that allocates nothing.
fn per_request(layer: LightRateLayer) -> usize {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let inner = tower::service_fn(|_request: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let mut service = layer.layer(inner);
    let mut serve = |requests: Vec<Request<Full<Bytes>>>| {
        for request in requests {
            let response = runtime.block_on(async {
                let ready = service.ready().await.unwrap();
                ready.call(request).await.unwrap()
            });
            assert_eq!(response.status(), 200);
        }
    };
    // Warm up: the first request leases; the thread registers with the maps.
    serve((0..3).map(|_| request()).collect());
    let requests: Vec<_> = (0..1000).map(|_| request()).collect();
    let before = allocations();
    serve(requests);
    (allocations() - before) / 1000
}

fn layer() -> LightRateLayer {
    // A rule that never runs out: every request after the first few is a local hit.
    let rules = RuleSet::builder()
        .default_rule(RefillRate::per_second(1_000_000), 10_000_000)
        .build()
        .unwrap();
    // Leases of 1 000 from the first: sized by demand instead, they shrink when a loaded
    // machine slows the requests down, and a source call (~17 allocations) every few dozen
    // requests made this test fail now and then.
    let limiter = Limiter::builder(EmbeddedSource::new(rules))
        .lease_size(1_000)
        .min_lease_size(1_000)
        .refill_ahead(false)
        .build();
    LightRateLayer::new(limiter).identify(Identify::header(HeaderName::from_static("x-user-id")))
}

#[test]
fn a_local_hit_allocates_nothing_but_the_decision_it_hands_the_handler() {
    assert_eq!(per_request(layer().insert_decision(false)), 0);
    // The Decision is boxed into the request's extensions.
    assert_eq!(per_request(layer()), 1);
    // Operations declared on other routes do not make requests allocate.
    let with_operations = layer().insert_decision(false);
    let _ = with_operations.operation("/emails", "send_email");
    assert_eq!(per_request(with_operations), 0);
}

#[test]
fn declared_limits_allocate_their_list_and_a_settled_one_its_reservation() {
    use http::Method;
    use lightrate_tower::RouteLimit;
    let declared = |limits: Vec<RouteLimit>| {
        let layer = layer().insert_decision(false);
        layer.limits_for(Method::GET, "/hello", limits)
    };
    // Two operations decided locally: the request's list of its limits, and nothing else (the
    // request's own target, which neither is charged to, is not copied).
    let two = vec![
        RouteLimit::operation("per_second"),
        RouteLimit::operation("per_day"),
    ];
    assert_eq!(per_request(declared(two)), 1);
    // A limit on the request's own target keeps it past the borrow of the request: one more.
    let with_request = vec![RouteLimit::request(), RouteLimit::operation("per_day")];
    assert_eq!(per_request(declared(with_request)), 2);
    // Reserved and settled: the list; the reservation's limits (a vector, the identifier; the
    // operation's name is not copied), the reservation's box, and the box of what is done
    // after the response. (A cost of 1: a lease of 1 000 serves 1 000 requests without a
    // source call, whose allocations would count.)
    let settled = vec![RouteLimit::operation("tokens").settled()];
    assert_eq!(per_request(declared(settled)), 5);
}
