//! The axum demo app, started in-process on 127.0.0.1:0.

use lightrate::tower::Mode;
use lightrate::Limiter;

use crate::support::RunningApp;

#[path = "../../examples/axum_app.rs"]
#[allow(dead_code)]
mod axum_app;

/// Starts the example's app around `limiter` on the current tokio runtime.
pub fn start(limiter: Limiter) -> RunningApp {
    start_in(limiter, Mode::Enforce)
}

/// The same, in `mode`.
pub fn start_in(limiter: Limiter, mode: Mode) -> RunningApp {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let task = tokio::spawn(axum_app::serve(listener, axum_app::app(limiter, mode)));
    RunningApp::new(format!("http://{address}"), move || task.abort())
}

/// Serves `router` (any axum app) on 127.0.0.1:0, with the peer address known, on the current
/// tokio runtime.
pub fn serve_router(router: axum::Router) -> RunningApp {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let task = tokio::spawn(axum_app::serve(listener, router));
    RunningApp::new(format!("http://{address}"), move || task.abort())
}
