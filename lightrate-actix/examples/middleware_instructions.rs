//! Serves N in-process requests through an actix app with no middleware, or with LightRate
//! (with and without the Decision extension), for counting instructions per request with
//! callgrind (repeatable on a busy machine, unlike a timer):
//!
//! ```text
//! cargo build --release -p lightrate-actix --example middleware_instructions
//! valgrind --tool=callgrind target/release/examples/middleware_instructions 2000 lightrate
//! valgrind --tool=callgrind target/release/examples/middleware_instructions 12000 lightrate
//! # (difference of the two totals) / 10000 = instructions per request
//! # modes: none, lightrate, lean
//! ```
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]
use std::net::SocketAddr;

use actix_web::dev::Service;
use actix_web::test::{init_service, TestRequest};
use actix_web::{web, App};
use lightrate_actix::LightRate;
use lightrate_testing::Unlimited;

fn main() {
    let n: usize = std::env::args().nth(1).unwrap().parse().unwrap();
    let mode = std::env::args().nth(2).unwrap();
    let peer = SocketAddr::from(([192, 0, 2, 10], 50_000));
    let request = || TestRequest::with_uri("/hello").peer_addr(peer).to_request();
    let hello = || async { "hello" };
    actix_rt::System::new().block_on(async move {
        let limiter = Unlimited::limiter();
        let app = App::new().route("/hello", web::get().to(hello));
        let mut ok = 0;
        macro_rules! serve {
            ($app:expr) => {{
                let app = init_service($app).await;
                for _ in 0..n {
                    if app.call(request()).await.unwrap().status().is_success() {
                        ok += 1;
                    }
                }
            }};
        }
        match mode.as_str() {
            "none" => serve!(app),
            "lightrate" => serve!(app.wrap(LightRate::new(limiter))),
            "lean" => serve!(app.wrap(LightRate::new(limiter).insert_decision(false))),
            _ => unreachable!(),
        }
        println!("{ok}");
    });
}
