//! [`LightRateLayer`]: the configuration, shared by every service it makes.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderName, Method, Response};
use lightrate_core::web::{
    MissingIdentifier, Operation, PathTarget, RateLimitHeaders, Rejection, RouteOperations,
};
use lightrate_core::Limiter;
use tower::Layer;

use crate::LightRate;

type IdentifyFn = dyn for<'a> Fn(&'a Parts) -> Option<Cow<'a, str>> + Send + Sync;
type ExcludeFn = dyn Fn(&Parts) -> bool + Send + Sync;
type RespondFn = dyn Fn(&Rejection) -> Response<Bytes> + Send + Sync;

/// Where the user identifier of a request comes from.
///
/// ```
/// use lightrate_tower::Identify;
/// use http::HeaderName;
///
/// /// What an authentication layer put in the request's extensions.
/// #[derive(Clone)]
/// struct Claims { subject: String }
///
/// let by_header = Identify::header(HeaderName::from_static("x-user-id"));
/// let by_auth = Identify::extension(|claims: &Claims| claims.subject.as_str());
/// let by_address = Identify::peer_ip();
/// let by_anything = Identify::with(|parts| parts.uri.query().map(Into::into));
/// ```
#[derive(Clone)]
pub struct Identify(IdentifyKind);

#[derive(Clone)]
enum IdentifyKind {
    Header(HeaderName),
    PeerIp,
    With(Arc<IdentifyFn>),
}

impl fmt::Debug for Identify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            IdentifyKind::Header(name) => write!(f, "Identify::header({name})"),
            IdentifyKind::PeerIp => f.write_str("Identify::peer_ip()"),
            IdentifyKind::With(_) => f.write_str("Identify::with(..)"),
        }
    }
}

impl Identify {
    /// The value of a request header (for example `x-user-id`, or an API-key header).
    pub fn header(name: HeaderName) -> Self {
        Identify(IdentifyKind::Header(name))
    }

    /// The client's IP address (axum's `ConnectInfo<SocketAddr>`, or a `SocketAddr` request
    /// extension); `X-Forwarded-For` only behind
    /// [`trust_forwarded_for`](LightRateLayer::trust_forwarded_for) proxies.
    pub fn peer_ip() -> Self {
        Identify(IdentifyKind::PeerIp)
    }

    /// A value an earlier layer (authentication) put in the request's extensions.
    pub fn extension<T: Send + Sync + 'static>(get: fn(&T) -> &str) -> Self {
        Identify::with(move |parts| parts.extensions.get::<T>().map(|t| Cow::Borrowed(get(t))))
    }

    /// Anything computed from the request's head. Borrow from it when you can: a borrowed
    /// identifier costs no allocation.
    pub fn with(
        f: impl for<'a> Fn(&'a Parts) -> Option<Cow<'a, str>> + Send + Sync + 'static,
    ) -> Self {
        Identify(IdentifyKind::With(Arc::new(f)))
    }

    pub(crate) fn is_peer_ip(&self) -> bool {
        matches!(self.0, IdentifyKind::PeerIp)
    }

    /// The raw identifier, before validation: `None` when the request has none.
    pub(crate) fn raw<'a>(&self, parts: &'a Parts) -> Option<Raw<'a>> {
        match &self.0 {
            IdentifyKind::Header(name) => parts.headers.get(name).map(|v| Raw::Bytes(v.as_bytes())),
            IdentifyKind::PeerIp => None,
            IdentifyKind::With(f) => f(parts).map(Raw::Text),
        }
    }
}

/// An identifier as found, before validation.
pub(crate) enum Raw<'a> {
    Bytes(&'a [u8]),
    Text(Cow<'a, str>),
}

/// What every service of a layer shares.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) limiter: Limiter,
    pub(crate) identify: Identify,
    pub(crate) missing: MissingIdentifier,
    pub(crate) trusted_proxies: usize,
    pub(crate) path_target: PathTarget,
    pub(crate) exclude_paths: Vec<String>,
    pub(crate) exclude: Option<Arc<ExcludeFn>>,
    pub(crate) headers: RateLimitHeaders,
    pub(crate) respond: Option<Arc<RespondFn>>,
    /// Declared per-route operations (shared by every clone of the layer).
    pub(crate) routes: RouteOperations,
    /// The operation of a per-route layer.
    pub(crate) operation: Option<Operation>,
    pub(crate) insert_decision: bool,
}

impl Config {
    pub(crate) fn is_excluded(&self, parts: &Parts) -> bool {
        self.exclude_paths.iter().any(|p| p == parts.uri.path())
            || self.exclude.as_ref().is_some_and(|f| f(parts))
    }

    pub(crate) fn respond(&self, rejection: &Rejection) -> Response<Bytes> {
        match &self.respond {
            Some(f) => f(rejection),
            None => rejection.to_response(self.headers),
        }
    }
}

/// Rate limiting for axum and any tower stack: identifies the user, picks the target (the
/// route's operation, else method + path), asks the [`Limiter`], and answers 429 with
/// `Retry-After` without calling the inner service when it says no.
///
/// Cheap to clone; clones share the limiter and the declared operations. See the crate docs
/// for a full example.
#[derive(Clone)]
pub struct LightRateLayer {
    config: Arc<Config>,
}

impl fmt::Debug for LightRateLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        f.debug_struct("LightRateLayer")
            .field("limiter", &c.limiter)
            .field("identify", &c.identify)
            .field("missing", &c.missing)
            .field("trusted_proxies", &c.trusted_proxies)
            .field("path_target", &c.path_target)
            .field("exclude_paths", &c.exclude_paths)
            .field("headers", &c.headers)
            .field("operation", &c.operation)
            .finish_non_exhaustive()
    }
}

impl LightRateLayer {
    /// A layer asking `limiter`. By default the user is the client's IP address; see
    /// [`identify`](Self::identify).
    pub fn new(limiter: Limiter) -> Self {
        LightRateLayer {
            config: Arc::new(Config {
                limiter,
                identify: Identify::peer_ip(),
                missing: MissingIdentifier::default(),
                trusted_proxies: 0,
                path_target: PathTarget::default(),
                exclude_paths: Vec::new(),
                exclude: None,
                headers: RateLimitHeaders::default(),
                respond: None,
                routes: RouteOperations::new(),
                operation: None,
                insert_decision: true,
            }),
        }
    }

    fn with(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(Arc::make_mut(&mut self.config));
        self
    }

    /// Where the user identifier comes from. An identifier that is empty, longer than 256
    /// bytes, or not visible text gets 400 before any token is spent.
    pub fn identify(self, identify: Identify) -> Self {
        self.with(|c| c.identify = identify)
    }

    /// What a request without an identifier gets. Default: limited by its IP address
    /// ([`MissingIdentifier::PeerIp`]), so that leaving the identifier out is no way around
    /// the limit.
    pub fn on_missing_identifier(self, missing: MissingIdentifier) -> Self {
        self.with(|c| c.missing = missing)
    }

    /// Behind `proxies` reverse proxies, the client's IP address is read from
    /// `X-Forwarded-For`. Default 0: forwarded headers are never trusted.
    pub fn trust_forwarded_for(self, proxies: usize) -> Self {
        self.with(|c| c.trusted_proxies = proxies)
    }

    /// Which path a request without an operation is limited by: the concrete path (default)
    /// or axum's route template (`MatchedPath`).
    pub fn path_target(self, mode: PathTarget) -> Self {
        self.with(|c| c.path_target = mode)
    }

    /// Never limits requests for this exact path (health checks): they do not touch the
    /// limiter.
    pub fn exclude_path(self, path: impl Into<String>) -> Self {
        self.with(|c| c.exclude_paths.push(path.into()))
    }

    /// Never limits requests for which `predicate` is true.
    pub fn exclude(self, predicate: impl Fn(&Parts) -> bool + Send + Sync + 'static) -> Self {
        self.with(|c| c.exclude = Some(Arc::new(predicate)))
    }

    /// Whether to send the IETF `RateLimit-Policy` and `RateLimit` fields. Default off.
    pub fn rate_limit_headers(self, mode: RateLimitHeaders) -> Self {
        self.with(|c| c.headers = mode)
    }

    /// Whether an allowed request carries its [`Decision`](lightrate_core::Decision) in its
    /// extensions for the handler (`Extension<Decision>` in axum). Default on; it costs one
    /// small allocation per request (`http::Extensions` boxes every value), which a service
    /// that never reads it can save.
    pub fn insert_decision(self, insert: bool) -> Self {
        self.with(|c| c.insert_decision = insert)
    }

    /// Replaces the answers (429, 503, 400) with your own.
    pub fn respond_with(
        self,
        respond: impl Fn(&Rejection) -> Response<Bytes> + Send + Sync + 'static,
    ) -> Self {
        self.with(|c| c.respond = Some(Arc::new(respond)))
    }

    /// Declares that requests to the route `template` (as given to `Router::route`, any
    /// method) are the operation `operation`, and returns a layer for that route.
    ///
    /// Use the returned layer on the route (`post(handler).layer(...)`), this layer
    /// router-wide, or both: either way a request is decided once, as the operation.
    pub fn operation(&self, template: &str, operation: impl Into<Operation>) -> LightRateLayer {
        self.declare(None, template, operation.into())
    }

    /// Like [`operation`](Self::operation), for one method of the route.
    pub fn operation_for(
        &self,
        method: Method,
        template: &str,
        operation: impl Into<Operation>,
    ) -> LightRateLayer {
        self.declare(Some(method), template, operation.into())
    }

    fn declare(&self, method: Option<Method>, template: &str, op: Operation) -> LightRateLayer {
        self.config.routes.insert(method, template, op.clone());
        self.clone().with(|c| c.operation = Some(op))
    }

    /// The limiter.
    pub fn limiter(&self) -> &Limiter {
        &self.config.limiter
    }
}

impl<S> Layer<S> for LightRateLayer {
    type Service = LightRate<S>;

    fn layer(&self, inner: S) -> LightRate<S> {
        LightRate::new(inner, self.config.clone())
    }
}
