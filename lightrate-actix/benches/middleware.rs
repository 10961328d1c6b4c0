//! The middleware's cost on an actix app with a trivial handler, in-process (`actix_web::test`
//! requests called on the initialised app), against the same app without it and with
//! actix-extensible-rate-limit's in-memory backend, in the same run.
//!
//! `cargo bench -p lightrate-actix --bench middleware`
//!
//! Every limiter keys on the peer IP address and never denies (a huge lease, a huge quota):
//! what is measured is the cost of an allowed request. Requests are built outside the
//! measurement (`iter_batched`); the call and dropping its response are measured.
#![allow(missing_docs, clippy::unwrap_used)]

use std::future::{ready, Future, Ready};
use std::hint::black_box;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_extensible_rate_limit::backend::memory::InMemoryBackend;
use actix_extensible_rate_limit::backend::SimpleInputFunctionBuilder;
use actix_extensible_rate_limit::RateLimiter;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::Method;
use actix_web::test::{init_service, TestRequest};
use actix_web::{web, App};
use criterion::async_executor::AsyncExecutor;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use lightrate_actix::LightRate;
use lightrate_core::{Limiter, Target, MAX_LEASE_SIZE};
use lightrate_testing::Unlimited;

/// Criterion's async benchmarks on the actix runtime (a `System`, as a worker has).
struct Actix(actix_rt::SystemRunner);

impl AsyncExecutor for &Actix {
    fn block_on<T>(&self, future: impl Future<Output = T>) -> T {
        self.0.block_on(future)
    }
}

fn bench(c: &mut Criterion) {
    let actix = Actix(actix_rt::System::new());
    let mut group = c.benchmark_group("actix");
    let peer = SocketAddr::from(([192, 0, 2, 10], 50_000));
    let make_request = move || {
        TestRequest::get()
            .uri("/hello")
            .peer_addr(peer)
            .to_request()
    };

    macro_rules! bench_app {
        ($id:expr, $app:expr) => {{
            let app = actix.0.block_on(init_service($app));
            // The first request leases; the measured ones are local hits.
            let first = actix.0.block_on(app.call(make_request())).unwrap();
            assert!(first.status().is_success());
            drop(first);
            group.bench_function($id, |b| {
                b.to_async(&actix).iter_batched(
                    make_request,
                    |request| {
                        let app = &app;
                        async move {
                            let response = app.call(black_box(request)).await.unwrap();
                            assert!(response.status().is_success());
                        }
                    },
                    BatchSize::SmallInput,
                )
            });
        }};
    }

    let hello = || async { "hello" };

    bench_app!(
        "no_middleware",
        App::new().route("/hello", web::get().to(hello))
    );

    let limiter = Limiter::builder(Unlimited)
        .lease_size(MAX_LEASE_SIZE)
        .min_lease_size(MAX_LEASE_SIZE)
        .bucket_ttl(Duration::from_secs(3600))
        .rule_ttl(Duration::from_secs(3600))
        .build();
    bench_app!(
        "lightrate_local_hit",
        App::new()
            .route("/hello", web::get().to(hello))
            .wrap(LightRate::new(limiter.clone()))
    );

    // The same, without putting the Decision in the request's extensions (one allocation).
    bench_app!(
        "lightrate_local_hit_no_extension",
        App::new()
            .route("/hello", web::get().to(hello))
            .wrap(LightRate::new(limiter.clone()).insert_decision(false))
    );

    // The demo app's shape: an operation declared on another resource, so that the app-wide
    // middleware looks the request's pattern up (`match_pattern`) for every request.
    let with_operations = LightRate::new(limiter.clone());
    bench_app!(
        "lightrate_local_hit_operations_declared",
        App::new()
            .route("/hello", web::get().to(hello))
            .service(
                web::resource("/emails")
                    .wrap(with_operations.operation_for(Method::POST, "/emails", "send_email"))
                    .route(web::post().to(hello)),
            )
            .wrap(with_operations.clone())
    );

    // Where the time goes: the floor of any middleware that may answer a request itself
    // (forwarding, with the body as `BoxBody`), this middleware with no decision to make (an
    // excluded path), and the limiter's own work (`check_local`, in a loop).
    bench_app!(
        "passthrough_middleware",
        App::new()
            .route("/hello", web::get().to(hello))
            .wrap(Passthrough)
    );
    bench_app!(
        "lightrate_excluded_path",
        App::new()
            .route("/hello", web::get().to(hello))
            .wrap(LightRate::new(limiter.clone()).exclude_path("/hello"))
    );
    let target = Target::path(http::Method::GET, "/hello");
    // The bucket holds a million tokens; refilling it is a call to the source, on the
    // actix runtime as in the middleware, once per million checks.
    group.bench_function("limiter_check_local", |b| {
        b.to_async(&actix).iter(|| async {
            let decision = match limiter.check_local(black_box("192.0.2.10"), black_box(&target), 1)
            {
                Some(decision) => decision,
                None => limiter
                    .check_with_source("192.0.2.10", target.clone().into_owned(), 1)
                    .await
                    .unwrap(),
            };
            assert!(decision.is_allowed());
        })
    });

    let backend = InMemoryBackend::builder().with_gc_interval(None).build();
    let input = SimpleInputFunctionBuilder::new(Duration::from_secs(3600), u64::MAX)
        .peer_ip_key()
        .build();
    bench_app!(
        "extensible_rate_limit",
        App::new()
            .route("/hello", web::get().to(hello))
            .wrap(RateLimiter::builder(backend.clone(), input).build())
    );
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

/// A middleware that only forwards, turning the body into a `BoxBody` as `LightRate` does
/// (a no-op for the `BoxBody` an app gives): the floor under any middleware that may answer
/// a request itself.
struct Passthrough;

impl<S, B> Transform<S, ServiceRequest> for Passthrough
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = actix_web::Error;
    type Transform = PassthroughService<S>;
    type InitError = ();
    type Future = Ready<Result<PassthroughService<S>, ()>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(PassthroughService(service)))
    }
}

struct PassthroughService<S>(S);

impl<S, B> Service<ServiceRequest> for PassthroughService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = actix_web::Error;
    type Future = Boxed<S::Future>;

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Result<(), actix_web::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&self, request: ServiceRequest) -> Self::Future {
        Boxed {
            future: self.0.call(request),
        }
    }
}

pin_project_lite::pin_project! {
    struct Boxed<F> {
        #[pin]
        future: F,
    }
}

impl<F, B> Future for Boxed<F>
where
    F: Future<Output = Result<ServiceResponse<B>, actix_web::Error>>,
    B: MessageBody + 'static,
{
    type Output = Result<ServiceResponse<BoxBody>, actix_web::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project()
            .future
            .poll(cx)
            .map(|r| r.map(ServiceResponse::map_into_boxed_body))
    }
}
