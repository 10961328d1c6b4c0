//! Serves N in-process requests through an axum route whose one limit is declared on the
//! layer (`limits_for`: an operation, costing 10 tokens), for counting with callgrind what
//! reserving and settling cost a request, as `layer_instructions` counts the layer (a binary
//! of its own, so that its figures stay comparable from build to build):
//!
//! ```text
//! cargo build --release -p lightrate-tower --example settle_instructions
//! valgrind --tool=callgrind target/release/examples/settle_instructions 2000 settled
//! valgrind --tool=callgrind target/release/examples/settle_instructions 12000 settled
//! # (difference of the two totals) / 10000 = instructions per request
//! # modes: identity (a pass-through layer), declared (the limit charged in full),
//! # settled (the same limit reserved, then settled at the 1 token the handler says it used)
//! ```
//!
//! Every mode's handler answers with the `Used` extension: `settled - declared` is what the
//! reservation and its settlement cost, `declared - identity` what a declared limit costs.
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]
use axum::{body::Body, extract::ConnectInfo, routing::get, Extension, Router};
use http::{Method, Request};
use lightrate_core::{Limiter, MAX_LEASE_SIZE};
use lightrate_testing::Unlimited;
use lightrate_tower::{LightRateLayer, RouteLimit, Used};
use std::net::SocketAddr;
use tower::ServiceExt;
fn request() -> Request<Body> {
    let mut r = Request::get("/hello").body(Body::empty()).unwrap();
    r.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 10], 5))));
    r
}
fn main() {
    let n: usize = std::env::args().nth(1).unwrap().parse().unwrap();
    let mode = std::env::args().nth(2).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let app = Router::new().route("/hello", get(|| async { (Extension(Used(1)), "hello") }));
    let declared = |settled: bool| {
        let tokens = RouteLimit::operation("hello_tokens").with_cost(10);
        let tokens = if settled { tokens.settled() } else { tokens };
        LightRateLayer::new(
            Limiter::builder(Unlimited)
                .lease_size(MAX_LEASE_SIZE)
                .min_lease_size(MAX_LEASE_SIZE)
                .build(),
        )
        .insert_decision(false)
        .limits_for(Method::GET, "/hello", [tokens])
    };
    let app = match mode.as_str() {
        "identity" => app.layer(tower::util::MapRequestLayer::new(|r: Request<Body>| r)),
        "declared" => app.layer(declared(false)),
        "settled" => app.layer(declared(true)),
        _ => unreachable!(),
    };
    rt.block_on(async {
        let mut ok = 0;
        for _ in 0..n {
            if app.clone().oneshot(request()).await.unwrap().status() == 200 {
                ok += 1;
            }
        }
        println!("{ok}");
    });
}
