//! Serves N in-process requests through an axum route with no layer, a pass-through layer,
//! LightRateLayer (with and without the Decision extension) or tower_governor's layer, for
//! counting instructions per request with callgrind (repeatable on a busy machine):
//!
//! ```text
//! cargo build --release -p lightrate-tower --example layer_instructions
//! valgrind --tool=callgrind target/release/examples/layer_instructions 2000 lightrate
//! valgrind --tool=callgrind target/release/examples/layer_instructions 12000 lightrate
//! # (difference of the two totals) / 10000 = instructions per request
//! # modes: none, identity, lightrate, lean, two (lean, with a second limit), governor
//! ```
//!
//! A mode ending in `-state` (`lean-state`) calls `.with_state(())` on the router after the
//! layer, as `axum::serve` does once per connection: the layer is then applied to the route
//! once, where a `Router<()>` without it applies route layers on every request.
//!
//! For `governor`, subtract from each total the inclusive count of
//! `<QuantaClock as Default>::default` (`callgrind_annotate --inclusive=yes`): quanta calibrates
//! its clock for a wall-clock time, so that count differs from run to run.
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]
use axum::{body::Body, extract::ConnectInfo, routing::get, Router};
use http::Request;
use lightrate_core::{Limiter, MAX_LEASE_SIZE};
use lightrate_testing::{Unlimited, UnlimitedPerTarget};
use lightrate_tower::{LightRateLayer, RouteLimit};
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
    let mode_arg = std::env::args().nth(2).unwrap();
    let state = mode_arg.ends_with("-state");
    let mode = mode_arg.trim_end_matches("-state").to_owned();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let app = Router::new().route("/hello", get(|| async { "hello" }));
    let app = match mode.as_str() {
        "none" => app,
        "identity" => app.layer(tower::util::MapRequestLayer::new(|r: Request<Body>| r)),
        "lightrate" => app.layer(LightRateLayer::new(
            Limiter::builder(Unlimited)
                .lease_size(MAX_LEASE_SIZE)
                .min_lease_size(MAX_LEASE_SIZE)
                .build(),
        )),
        "lean" => app.layer(
            LightRateLayer::new(
                Limiter::builder(Unlimited)
                    .lease_size(MAX_LEASE_SIZE)
                    .min_lease_size(MAX_LEASE_SIZE)
                    .build(),
            )
            .insert_decision(false),
        ),
        // Two limits: the request's own (GET /hello) and an operation's, of the same client.
        "two" => app.layer(
            LightRateLayer::new(
                Limiter::builder(UnlimitedPerTarget)
                    .lease_size(MAX_LEASE_SIZE)
                    .min_lease_size(MAX_LEASE_SIZE)
                    .build(),
            )
            .insert_decision(false)
            .also(RouteLimit::operation("hello_per_day")),
        ),
        "governor" => app.layer(tower_governor::GovernorLayer::new(
            tower_governor::governor::GovernorConfigBuilder::default()
                .per_nanosecond(1)
                .burst_size(u32::MAX)
                .finish()
                .unwrap(),
        )),
        _ => unreachable!(),
    };
    let app: Router = if state { app.with_state(()) } else { app };
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
