//! What the allocator says about the middleware: an allowed local hit allocates nothing beyond
//! what actix allocates for the same request without it, except the `Decision` the handler
//! can read (one box, which `insert_decision(false)` saves); declared operations cost nothing
//! to requests that cannot be at their routes.
//!
//! One test binary with a counting global allocator, counting the allocations of the current
//! thread (the actix test runtime runs the app on it).
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::test::{init_service, TestRequest};
use actix_web::{web, App};
use lightrate_actix::LightRate;
use lightrate_testing::{allocations, Counting, Unlimited};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const REQUESTS: usize = 20;

/// Allocations made by `REQUESTS` calls of `GET /hello` on `app` (building the request not
/// counted, dropping the response counted), after a few calls to warm everything up.
async fn allocations_of<T, B>(app: App<T>) -> usize
where
    T: ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
    B: MessageBody + 'static,
{
    let app = init_service(app).await;
    let peer = SocketAddr::from(([192, 0, 2, 10], 50_000));
    let request = || {
        TestRequest::get()
            .uri("/hello")
            .peer_addr(peer)
            .to_request()
    };
    // Learning the rule, the lease, then two hits in a row on the user's bucket, which moves
    // it out of its map entry for this thread's memo: its one allocation, before the count.
    for _ in 0..5 {
        let response = app.call(request()).await.unwrap();
        assert!(response.status().is_success());
    }
    let mut total = 0;
    for _ in 0..REQUESTS {
        let request = request();
        let before = allocations();
        let response = app.call(request).await.unwrap();
        assert!(response.status().is_success());
        drop(response);
        total += allocations() - before;
    }
    total
}

fn hello() -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .route("/hello", web::get().to(|| async { "hello" }))
        .service(web::resource("/emails").route(web::post().to(|| async { "sent" })))
}

#[actix_rt::test]
async fn a_local_hit_allocates_nothing_but_the_decision_it_hands_the_handler() {
    let baseline = allocations_of(hello()).await;
    let limiter = Unlimited::limiter();

    let lean =
        allocations_of(hello().wrap(LightRate::new(limiter.clone()).insert_decision(false))).await;
    assert_eq!(
        lean, baseline,
        "insert_decision(false): no allocation of its own"
    );

    let with_decision = allocations_of(hello().wrap(LightRate::new(limiter.clone()))).await;
    assert_eq!(
        with_decision,
        baseline + REQUESTS,
        "the Decision in the request's extensions: one box a request"
    );

    // An operation declared on another resource: `/hello` cannot be at it, so its pattern is
    // never looked up.
    let rate_limit = LightRate::new(limiter).insert_decision(false);
    let _ = rate_limit.operation_for(Method::POST, "/emails", "send_email");
    let declared = allocations_of(hello().wrap(rate_limit)).await;
    assert_eq!(
        declared, baseline,
        "operations declared elsewhere cost nothing"
    );
}
