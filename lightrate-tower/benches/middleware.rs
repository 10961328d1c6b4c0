//! The layer's cost on an axum router with a trivial handler, in-process (`oneshot`), against
//! the same router without it and with tower_governor's layer, in the same run.
//!
//! `cargo bench -p lightrate-tower --bench middleware`
//!
//! Both limiters key on the peer IP address (axum's `ConnectInfo`) and never deny (a huge
//! lease, a huge quota): what is measured is the cost of an allowed request.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, StatusCode};
use lightrate_core::{Limiter, MAX_LEASE_SIZE};
use lightrate_testing::Unlimited;
use lightrate_tower::LightRateLayer;
use tower::ServiceExt;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::GovernorLayer;

fn app() -> Router {
    Router::new().route("/hello", get(|| async { "hello" }))
}

fn request() -> Request<Body> {
    let mut request = Request::get("/hello").body(Body::empty()).unwrap();
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 10], 50_000))));
    request
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("tower");

    let plain = app();
    group.bench_function("no_layer", |b| {
        b.to_async(&runtime).iter(|| async {
            let response = plain.clone().oneshot(black_box(request())).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response
        })
    });

    // What any layer costs on an axum route (a per-request clone of the boxed route, a boxed
    // future): the floor under every middleware below.
    let identity = app().layer(tower::util::MapRequestLayer::new(|r: Request<Body>| r));
    group.bench_function("identity_layer", |b| {
        b.to_async(&runtime).iter(|| async {
            let response = identity
                .clone()
                .oneshot(black_box(request()))
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response
        })
    });

    let limiter = Limiter::builder(Unlimited)
        .lease_size(MAX_LEASE_SIZE)
        .min_lease_size(MAX_LEASE_SIZE)
        .bucket_ttl(Duration::from_secs(3600))
        .rule_ttl(Duration::from_secs(3600))
        .build();
    let limited_limiter = limiter;
    let limited = app().layer(LightRateLayer::new(limited_limiter.clone()));
    runtime.block_on(async {
        let response = limited.clone().oneshot(request()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    });
    group.bench_function("lightrate_local_hit", |b| {
        b.to_async(&runtime).iter(|| async {
            let response = limited.clone().oneshot(black_box(request())).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response
        })
    });

    // The same, without putting the Decision in the request's extensions (one allocation).
    let lean = app().layer(LightRateLayer::new(limited_limiter.clone()).insert_decision(false));
    group.bench_function("lightrate_local_hit_no_extension", |b| {
        b.to_async(&runtime).iter(|| async {
            let response = lean.clone().oneshot(black_box(request())).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response
        })
    });

    let config = GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(u32::MAX)
        .finish()
        .unwrap();
    let governed = app().layer(GovernorLayer::new(config));
    group.bench_function("tower_governor", |b| {
        b.to_async(&runtime).iter(|| async {
            let response = governed
                .clone()
                .oneshot(black_box(request()))
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
