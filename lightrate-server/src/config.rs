//! [`ServerConfig`]: what a server serves, and the limits it enforces.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lightrate_core::{EmbeddedSource, Error, ErrorKind};

use crate::store::TokenStore;

/// The default limit on a request body: 64 KiB.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// The default time a request has to arrive whole, headers and body: 10 s.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The default time requests in flight have to finish after a shutdown starts: 10 s.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What a server serves: one application, its API key, and the store of its buckets (the
/// embedded source unless said otherwise).
pub struct ServerConfig<S = EmbeddedSource> {
    pub(crate) api_key: String,
    pub(crate) application_id: String,
    pub(crate) source: Arc<S>,
    pub(crate) body_limit: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) max_connections: Option<usize>,
    pub(crate) drain_timeout: Duration,
    pub(crate) metrics: bool,
}

impl<S: fmt::Debug> fmt::Debug for ServerConfig<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("api_key", &"****")
            .field("application_id", &self.application_id)
            .field("source", &self.source)
            .field("body_limit", &self.body_limit)
            .field("request_timeout", &self.request_timeout)
            .field("max_connections", &self.max_connections)
            .field("drain_timeout", &self.drain_timeout)
            .field("metrics", &self.metrics)
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
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_connections: None,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            metrics: true,
        })
    }

    /// The largest request body accepted (413 beyond). Default 64 KiB.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// How long a request has to arrive whole, headers and body, from its first byte (from the
    /// accept for a connection's first request; a connection idle this long after an answer is
    /// closed). Late headers close the connection; a late body gets 408 and a closed
    /// connection. Default [`DEFAULT_REQUEST_TIMEOUT`] (10 s); at least 1 ms.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The most connections served at once; past it, a connection is answered 503 at once and
    /// closed. Default: [`default_max_connections`] (from the limit on open descriptors);
    /// at least 1.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = Some(max.max(1));
        self
    }

    /// How long requests in flight have to finish once [`RunningServer::shutdown`] starts;
    /// connections still open then are closed. Default [`DEFAULT_DRAIN_TIMEOUT`] (10 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Whether to serve `GET /metrics` (default `true`). It needs no key and is never limited,
    /// and it shows rule ids and traffic: keep it off a public listener (or turn it off).
    pub fn metrics(mut self, serve: bool) -> Self {
        self.metrics = serve;
        self
    }

    /// The store this configuration serves.
    pub fn source(&self) -> &Arc<S> {
        &self.source
    }
}
