//! A LightRate-compatible token server: lightrate's rules engine served over HTTP with exactly
//! the LightRate protocol (`POST /api/v1/tokens/consume`), with its buckets in memory (an
//! [`EmbeddedSource`]) or in Redis (a [`RedisSource`], so that any number of replicas share
//! them).
//!
//! Use it as the API stand-in in tests (bind `127.0.0.1:0`, point a
//! [`LightRateClient`](lightrate_core::LightRateClient) at [`RunningServer::base_url`]), or to
//! self-host a token service that every instance of an application shares. Any LightRate SDK
//! pointed at it works as against the hosted API.
//!
//! ```
//! use lightrate_core::{LightRateClient, RuleSet, EmbeddedSource, Target};
//! use lightrate_server::{LightRateServer, ServerConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ServerConfig::new("test-key", "app_1", EmbeddedSource::new(RuleSet::demo()))?;
//! let server = LightRateServer::new(config).bind("127.0.0.1:0").await?;
//!
//! let client = LightRateClient::builder("test-key", "app_1")
//!     .base_url(server.base_url())
//!     .build()?;
//! let answer = client.consume_tokens("alice", 1, Target::operation("send_email")).await?;
//! assert_eq!(answer.tokens_consumed, 1);
//! assert_eq!(answer.rule.burst_rate, 10);
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Answers: 200 with the consume response (also when rate limited); 400 for a malformed body,
//! 401 for a missing or wrong key (compared in constant time), 404 for another application,
//! 405, 408 when the request does not arrive whole within the request timeout, 413 past the
//! body limit; 503 with `Retry-After` when the store cannot answer (Redis unreachable: within
//! its timeout, never a hang and never a grant); errors are JSON
//! `{"error": "<reason>", "message": "<detail>"}`. `GET /health` is 200 `{"status": "ok"}`
//! when the store answers, 503 `{"status": "unavailable", ...}` when it does not. `GET /metrics`
//! is the server's counters in the Prometheus text format (no key; see
//! [`ServerConfig::metrics`]).
//!
//! # Hardening
//!
//! - **Nothing unauthorised is read**: the key and the route are checked from the headers, so
//!   401, 404 and 405 (and 413 for a declared length past the limit) are answered at once and
//!   the connection closed without reading the body.
//! - **No request lasts forever**: a request must arrive whole, headers and body, within the
//!   request timeout ([`ServerConfig::request_timeout`], default 10 s) of its first byte
//!   (of the accept, for a connection's first request); headers late are a closed connection,
//!   a body late a 408 and a closed connection. A connection idle that long after an answer is
//!   closed too.
//! - **Bounded connections**: at most [`ServerConfig::max_connections`] at once (default from
//!   the descriptor limit, see [`default_max_connections`]); past it a connection is answered
//!   503 at once and closed. A failed accept (out of descriptors) pauses accepting 5 ms,
//!   doubling up to 200 ms, with one log line per 10 s while it lasts.
//! - **Draining**: [`RunningServer::shutdown`] stops accepting and lets requests in flight
//!   finish, up to [`ServerConfig::drain_timeout`].
#![cfg_attr(docsrs, feature(doc_cfg))]

mod arrival;
mod config;
mod connection;
pub mod env_vars;
#[cfg(feature = "test-util")]
pub mod faults;
#[doc(hidden)]
pub mod fuzzing;
mod handler;
mod limits;
mod metrics;
mod store;

#[cfg(feature = "test-util")]
use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[cfg(feature = "test-util")]
use axum::body::Body;
use lightrate_core::{EmbeddedSource, Error, RuleSet};
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::util::BoxCloneService;
#[cfg(feature = "test-util")]
use tower::ServiceExt;

pub use crate::config::{
    ServerConfig, DEFAULT_BODY_LIMIT, DEFAULT_DRAIN_TIMEOUT, DEFAULT_REQUEST_TIMEOUT,
};
#[cfg(feature = "test-util")]
use crate::connection::Dropped;
use crate::connection::{HttpService, Limits};
#[cfg(feature = "test-util")]
use crate::faults::{FaultLayer, Faults};
use crate::handler::AppState;
pub use crate::limits::default_max_connections;
use crate::metrics::ServerMetrics;
pub use crate::store::TokenStore;

/// A server, before it listens.
#[derive(Debug)]
pub struct LightRateServer<S = EmbeddedSource> {
    config: ServerConfig<S>,
    #[cfg(feature = "test-util")]
    faults: Option<Faults>,
}

impl<S: TokenStore> LightRateServer<S> {
    /// A server for `config`.
    pub fn new(config: ServerConfig<S>) -> Self {
        LightRateServer {
            config,
            #[cfg(feature = "test-util")]
            faults: None,
        }
    }

    /// Puts a [`FaultLayer`] in front of the handler, controlled by `faults` (which also
    /// records every request). For tests (feature `test-util`).
    #[cfg(feature = "test-util")]
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = Some(faults);
        self
    }

    /// The axum router of the protocol, to mount in another application. It does not apply
    /// faults.
    pub fn router(&self) -> axum::Router {
        handler::router(&self.config, Arc::new(self.state()))
    }

    fn state(&self) -> AppState<S> {
        AppState {
            api_key: self.config.api_key.clone(),
            application_id: self.config.application_id.clone(),
            source: self.config.source.clone(),
            body_limit: self.config.body_limit,
            request_timeout: self.config.request_timeout,
            consume_calls: AtomicU64::new(0),
            metrics: Arc::new(ServerMetrics::default()),
        }
    }

    /// Binds `addr` and serves in the background.
    pub async fn bind(self, addr: impl ToSocketAddrs) -> io::Result<RunningServer<S>> {
        let listener = TcpListener::bind(addr).await?;
        self.serve(listener)
    }

    /// Serves on `listener` in the background.
    pub fn serve(self, listener: TcpListener) -> io::Result<RunningServer<S>> {
        let local_addr = listener.local_addr()?;
        let state = Arc::new(self.state());
        let router = handler::router(&self.config, state.clone());
        #[cfg(feature = "test-util")]
        let service: HttpService = match &self.faults {
            Some(faults) => BoxCloneService::new(
                tower::ServiceBuilder::new()
                    .layer(FaultLayer::new(faults.clone()))
                    .service(router),
            ),
            None => BoxCloneService::new(ServiceExt::<http::Request<Body>>::map_err(
                router,
                |never: Infallible| -> Dropped { match never {} },
            )),
        };
        #[cfg(not(feature = "test-util"))]
        let service: HttpService = BoxCloneService::new(router);
        let (stop, stopped) = watch::channel(false);
        let limits = Limits {
            max_connections: self
                .config
                .max_connections
                .unwrap_or_else(default_max_connections),
            request_timeout: self.config.request_timeout,
            drain_timeout: self.config.drain_timeout,
        };
        let task = tokio::spawn(connection::accept_loop(
            listener,
            service,
            stopped,
            limits,
            state.metrics.clone(),
        ));
        tracing::info!(
            target: "lightrate::server",
            %local_addr,
            max_connections = limits.max_connections,
            request_timeout_ms = limits.request_timeout.as_millis() as u64,
            "serving"
        );
        Ok(RunningServer {
            local_addr,
            state,
            source: self.config.source.clone(),
            stop,
            task: Some(task),
        })
    }
}

/// A server that is serving. Dropping it stops it.
pub struct RunningServer<S = EmbeddedSource> {
    local_addr: SocketAddr,
    state: Arc<AppState<S>>,
    source: Arc<S>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl<S> fmt::Debug for RunningServer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl<S> RunningServer<S> {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://<address>`: what to give a client as its base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// The store it serves (to inspect buckets).
    pub fn source(&self) -> &Arc<S> {
        &self.source
    }

    /// How many authenticated consume requests reached the handler.
    pub fn consume_calls(&self) -> u64 {
        self.state.consume_calls.load(Ordering::Relaxed)
    }

    /// Serves `rules` from now on, keeping the buckets of the rules still there (see
    /// [`TokenStore::replace_rules`]); connections are not touched. On an error the rules in
    /// force stay. Counted in `lightrate_server_rule_reloads_total`.
    pub fn replace_rules(&self, rules: RuleSet) -> Result<(), Error>
    where
        S: TokenStore,
    {
        let replaced = self.source.replace_rules(rules);
        self.state.metrics.reload(replaced.is_ok());
        replaced
    }

    /// Reads the TOML rules file at `path` again and serves its rules (see
    /// [`replace_rules`](Self::replace_rules)); returns them. A file that cannot be read or is
    /// not valid is refused (kind `Configuration`, the message naming the line) and the rules
    /// in force stay.
    pub fn reload_rules_file(
        &self,
        path: impl AsRef<std::path::Path>,
    ) -> Result<Arc<RuleSet>, Error>
    where
        S: TokenStore,
    {
        let rules = match RuleSet::from_toml_file(path) {
            Ok(rules) => rules,
            Err(e) => {
                self.state.metrics.reload(false);
                return Err(e);
            }
        };
        let shown = Arc::new(rules.clone());
        self.replace_rules(rules).map(|()| shown)
    }

    /// Stops accepting, closes idle connections, lets requests in flight finish (up to the
    /// drain timeout), and waits for all of it.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl<S> Drop for RunningServer<S> {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
