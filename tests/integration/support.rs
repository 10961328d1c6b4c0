//! Shared helpers: a real `lightrate-server` with fault injection, and clients pointed at it.

use std::time::Duration;

use lightrate::server::{LightRateServer, RunningServer, ServerConfig};
use lightrate::{EmbeddedSource, LightRateClient, ManualClock, RuleSet};
use lightrate_server::faults::Faults;

pub const API_KEY: &str = "sk_test_0123456789abcdef";
pub const APP_ID: &str = "app_test";

/// A server with the demo rules on a manual clock, and the handle of its fault layer.
pub struct TestServer {
    pub server: RunningServer,
    pub faults: Faults,
    pub clock: ManualClock,
}

pub async fn start_server() -> TestServer {
    start_server_with(EmbeddedSource::new(RuleSet::demo())).await
}

pub async fn start_server_with(source: EmbeddedSource) -> TestServer {
    let clock = ManualClock::new();
    let source = source.with_clock(clock.clone());
    let faults = Faults::new();
    let config = ServerConfig::new(API_KEY, APP_ID, source).expect("valid config");
    let server = LightRateServer::new(config)
        .with_faults(faults.clone())
        .bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    TestServer {
        server,
        faults,
        clock,
    }
}

impl TestServer {
    pub fn client(&self, timeout: Duration) -> LightRateClient {
        LightRateClient::builder(API_KEY, APP_ID)
            .base_url(self.server.base_url())
            .timeout(timeout)
            .build()
            .expect("valid client")
    }
}

/// An address on which nothing listens (bound, then released).
pub async fn refused_addr() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}
