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
//! 405, 413 past the body limit; 503 with `Retry-After` when the store cannot answer (Redis
//! unreachable: within its timeout, never a hang and never a grant); errors are JSON
//! `{"error": "<reason>", "message": "<detail>"}`. `GET /health` is 200 `{"status": "ok"}`
//! when the store answers, 503 `{"status": "unavailable", ...}` when it does not.

#[cfg(feature = "test-util")]
pub mod faults;
mod handler;

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use lightrate_core::{EmbeddedSource, Error, ErrorKind, TokenSource};
use lightrate_redis::RedisSource;
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::util::BoxCloneService;
use tower::ServiceExt;

#[cfg(feature = "test-util")]
use crate::faults::{FaultLayer, Faults};
use crate::handler::AppState;

/// The default limit on a request body: 64 KiB.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// Where a server keeps its buckets: a [`TokenSource`] that can also say whether it can answer
/// (`GET /health`). Implemented by [`EmbeddedSource`] (in memory, always healthy) and
/// [`RedisSource`] (healthy while Redis answers `PING`).
///
/// ```
/// use lightrate_core::{EmbeddedSource, RuleSet};
/// use lightrate_server::TokenStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert!(EmbeddedSource::new(RuleSet::demo()).health().await.is_ok());
/// # }
/// ```
pub trait TokenStore: TokenSource + fmt::Debug {
    /// `Ok` when the store can answer consumes now, else the error that says why not.
    fn health(&self) -> impl Future<Output = Result<(), Error>> + Send {
        std::future::ready(Ok(()))
    }
}

impl TokenStore for EmbeddedSource {}

impl TokenStore for RedisSource {
    fn health(&self) -> impl Future<Output = Result<(), Error>> + Send {
        self.ping()
    }
}

/// What a server serves: one application, its API key, and the store of its buckets (the
/// embedded source unless said otherwise).
pub struct ServerConfig<S = EmbeddedSource> {
    api_key: String,
    application_id: String,
    source: Arc<S>,
    body_limit: usize,
}

impl<S: fmt::Debug> fmt::Debug for ServerConfig<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("api_key", &"****")
            .field("application_id", &self.application_id)
            .field("source", &self.source)
            .field("body_limit", &self.body_limit)
            .finish()
    }
}

impl ServerConfig<EmbeddedSource> {
    /// Serves the embedded `source` (buckets in memory) to clients presenting `api_key` for
    /// `application_id`.
    ///
    /// Errors (kind [`ErrorKind::Configuration`]) when the key or application id is empty.
    pub fn new(
        api_key: impl Into<String>,
        application_id: impl Into<String>,
        source: impl Into<Arc<EmbeddedSource>>,
    ) -> Result<Self, Error> {
        ServerConfig::with_store(api_key, application_id, source.into())
    }
}

impl<S: TokenStore> ServerConfig<S> {
    /// Serves `store` (a [`RedisSource`], say: replicas on one Redis share every bucket) to
    /// clients presenting `api_key` for `application_id`. Errors as [`ServerConfig::new`].
    ///
    /// ```
    /// use lightrate_core::RuleSet;
    /// use lightrate_redis::RedisSource;
    /// use lightrate_server::ServerConfig;
    /// use std::sync::Arc;
    ///
    /// let store = RedisSource::builder(RuleSet::demo())
    ///     .application_id("app_1")
    ///     .connect("redis://127.0.0.1:6379")?;
    /// let config = ServerConfig::with_store("test-key", "app_1", Arc::new(store))?;
    /// # Ok::<(), lightrate_core::Error>(())
    /// ```
    pub fn with_store(
        api_key: impl Into<String>,
        application_id: impl Into<String>,
        store: Arc<S>,
    ) -> Result<Self, Error> {
        let api_key = api_key.into();
        let application_id = application_id.into();
        if api_key.trim().is_empty() {
            return Err(Error::new(ErrorKind::Configuration, "the API key is empty"));
        }
        if application_id.trim().is_empty() {
            return Err(Error::new(
                ErrorKind::Configuration,
                "the application id is empty",
            ));
        }
        Ok(ServerConfig {
            api_key,
            application_id,
            source: store,
            body_limit: DEFAULT_BODY_LIMIT,
        })
    }

    /// The largest request body accepted (413 beyond). Default 64 KiB.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// The store this configuration serves.
    pub fn source(&self) -> &Arc<S> {
        &self.source
    }
}

/// A server, before it listens.
#[derive(Debug)]
pub struct LightRateServer<S = EmbeddedSource> {
    config: ServerConfig<S>,
    #[cfg(feature = "test-util")]
    faults: Option<Faults>,
}

/// A connection is dropped only by an injected fault.
#[cfg(feature = "test-util")]
type Dropped = faults::Dropped;
#[cfg(not(feature = "test-util"))]
type Dropped = Infallible;

type HttpService = BoxCloneService<http::Request<Body>, http::Response<Body>, Dropped>;

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
            consume_calls: AtomicU64::new(0),
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
        let task = tokio::spawn(accept_loop(listener, service, stopped));
        tracing::info!(target: "lightrate::server", %local_addr, "serving");
        Ok(RunningServer {
            local_addr,
            state,
            source: self.config.source.clone(),
            stop,
            task: Some(task),
        })
    }
}

async fn accept_loop(
    listener: TcpListener,
    service: HttpService,
    mut stopped: watch::Receiver<bool>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.changed() => break,
        };
        let (stream, _peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(target: "lightrate::server", error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service =
            TowerToHyperService::new(service.clone().map_request(
                |request: http::Request<hyper::body::Incoming>| request.map(Body::new),
            ));
        let mut stopped = stopped.clone();
        connections.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30));
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stopped.changed() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
                }
            }
        });
        // Reap finished connections so the set stays as small as the open ones.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
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

    /// Stops accepting, closes idle connections, lets requests in flight finish (up to 5 s),
    /// and waits for all of it.
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
