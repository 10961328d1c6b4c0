//! [`LightRate`]: the configuration, shared by every middleware it makes (one per worker and
//! per place it wraps).

use std::borrow::Cow;
use std::fmt;
use std::future::{ready, Ready};
use std::rc::Rc;
use std::sync::{Arc, Mutex, OnceLock};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Extensions, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::HeaderName;
use actix_web::http::Method;
use actix_web::HttpResponse;
use bytes::Bytes;
use http::Response;
use lightrate_core::web::{
    MissingIdentifier, Operation, PathTarget, RateLimitHeaders, Rejection, RouteOperations,
};
use lightrate_core::Limiter;

use crate::convert::{http_method, to_actix_response};
use crate::LightRateMiddleware;

type IdentifyFn = dyn for<'a> Fn(&'a ServiceRequest) -> Option<Cow<'a, str>> + Send + Sync;
type ExtensionFn = dyn for<'a> Fn(&'a Extensions) -> Option<&'a str> + Send + Sync;
type ExcludeFn = dyn Fn(&ServiceRequest) -> bool + Send + Sync;
type RespondFn = dyn Fn(&Rejection) -> Response<Bytes> + Send + Sync;

/// Where the user identifier of a request comes from.
///
/// ```
/// use actix_web::http::header::HeaderName;
/// use lightrate_actix::Identify;
///
/// /// What an authentication middleware put in the request's extensions.
/// #[derive(Clone)]
/// struct Claims { subject: String }
///
/// let by_header = Identify::header(HeaderName::from_static("x-user-id"));
/// let by_auth = Identify::extension(|claims: &Claims| claims.subject.as_str());
/// let by_address = Identify::peer_ip();
/// let by_token = Identify::with(|req| {
///     let value = req.headers().get("authorization")?.to_str().ok()?;
///     value.strip_prefix("Bearer ").map(Into::into)
/// });
/// ```
#[derive(Clone)]
pub struct Identify(IdentifyKind);

#[derive(Clone)]
pub(crate) enum IdentifyKind {
    Header(HeaderName),
    PeerIp,
    Extension(Arc<ExtensionFn>),
    With(Arc<IdentifyFn>),
}

impl fmt::Debug for Identify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            IdentifyKind::Header(name) => write!(f, "Identify::header({name})"),
            IdentifyKind::PeerIp => f.write_str("Identify::peer_ip()"),
            IdentifyKind::Extension(_) => f.write_str("Identify::extension(..)"),
            IdentifyKind::With(_) => f.write_str("Identify::with(..)"),
        }
    }
}

impl Identify {
    /// The value of a request header (for example `x-user-id`, or an API-key header).
    pub fn header(name: HeaderName) -> Self {
        Identify(IdentifyKind::Header(name))
    }

    /// The client's IP address (`ServiceRequest::peer_addr`); `X-Forwarded-For` only behind
    /// [`trust_forwarded_for`](LightRate::trust_forwarded_for) proxies.
    pub fn peer_ip() -> Self {
        Identify(IdentifyKind::PeerIp)
    }

    /// A value an earlier middleware (authentication) put in the request's extensions
    /// (`req.extensions_mut().insert(claims)`, what `web::ReqData` reads). Borrowed for the
    /// duration of the check: it costs no allocation.
    pub fn extension<T: 'static>(get: fn(&T) -> &str) -> Self {
        fn erase(
            f: impl for<'a> Fn(&'a Extensions) -> Option<&'a str> + Send + Sync + 'static,
        ) -> Arc<ExtensionFn> {
            Arc::new(f)
        }
        Identify(IdentifyKind::Extension(erase(move |extensions| {
            extensions.get::<T>().map(get)
        })))
    }

    /// Anything computed from the request. Borrow from it when you can: a borrowed identifier
    /// costs no allocation. (The request's extensions live in a `RefCell`: to identify by one
    /// of them without copying it, use [`extension`](Self::extension).)
    pub fn with(
        f: impl for<'a> Fn(&'a ServiceRequest) -> Option<Cow<'a, str>> + Send + Sync + 'static,
    ) -> Self {
        Identify(IdentifyKind::With(Arc::new(f)))
    }

    pub(crate) fn kind(&self) -> &IdentifyKind {
        &self.0
    }
}

/// What every middleware made by a [`LightRate`] shares.
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
    /// Declared per-route operations (shared by every clone).
    pub(crate) routes: RouteOperations,
    /// The templates of `routes`, to tell cheaply which requests may have an operation.
    pub(crate) templates: Templates,
    /// The operation of a per-resource middleware.
    pub(crate) operation: Option<Operation>,
    /// Whether a named resource is limited as the operation of its name.
    pub(crate) names_as_operations: bool,
    pub(crate) insert_decision: bool,
}

impl Config {
    /// `path` is the request's path as actix routes it (percent-decoded).
    pub(crate) fn is_excluded(&self, req: &ServiceRequest, path: &str) -> bool {
        (!self.exclude_paths.is_empty() && self.exclude_paths.iter().any(|p| p == path))
            || self.exclude.as_ref().is_some_and(|f| f(req))
    }

    pub(crate) fn respond(&self, rejection: &Rejection) -> HttpResponse {
        to_actix_response(match &self.respond {
            Some(f) => f(rejection),
            None => rejection.to_response(self.headers),
        })
    }
}

/// The route templates that have a declared operation, shared by every clone like the
/// [`RouteOperations`] they mirror, and frozen with them at the first request.
///
/// Finding a request's pattern costs actix a walk of its resource map and a `String`; a
/// request whose path cannot match any declared template is spared both.
#[derive(Clone, Debug, Default)]
pub(crate) struct Templates {
    inner: Arc<TemplateTable>,
}

#[derive(Debug, Default)]
struct TemplateTable {
    building: Mutex<Vec<String>>,
    frozen: OnceLock<Box<[Literal]>>,
}

/// What the path of a request at a template must be.
#[derive(Debug)]
enum Literal {
    /// Equal to a template without parameters.
    Exact(Box<str>),
    /// Starting with the literal part of a template, before its first `{`.
    Prefix(Box<str>),
}

impl Templates {
    fn insert(&self, template: &str) {
        if self.inner.frozen.get().is_none() {
            self.inner
                .building
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(template.to_owned());
        }
    }

    /// Whether a request to `path` (percent-decoded) may be at a declared template. Freezes
    /// the declarations, here and in `routes`.
    #[inline]
    pub(crate) fn may_match(&self, path: &str, routes: &RouteOperations) -> bool {
        let frozen = self.inner.frozen.get_or_init(|| {
            let _ = routes.is_empty(); // freezes the operations at the same time
            let building = self
                .inner
                .building
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            building
                .iter()
                .map(|t| match t.find('{') {
                    None => Literal::Exact(t.as_str().into()),
                    Some(at) => Literal::Prefix(t.get(..at).unwrap_or_default().into()),
                })
                .collect()
        });
        frozen.iter().any(|literal| match literal {
            Literal::Exact(template) => path == &**template,
            Literal::Prefix(prefix) => path.starts_with(&**prefix),
        })
    }
}

/// Rate limiting middleware for actix-web: identifies the user, picks the target (the
/// resource's operation, else method + path), asks the [`Limiter`], and answers 429 with
/// `Retry-After` without calling the handler when it says no.
///
/// Use it with `wrap` on an `App`, a `Scope` or a `Resource`. Cheap to clone; clones share the
/// limiter and the declared operations. See the crate docs for a full example.
#[derive(Clone)]
pub struct LightRate {
    config: Arc<Config>,
}

impl fmt::Debug for LightRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        f.debug_struct("LightRate")
            .field("limiter", &c.limiter)
            .field("identify", &c.identify)
            .field("missing", &c.missing)
            .field("trusted_proxies", &c.trusted_proxies)
            .field("path_target", &c.path_target)
            .field("exclude_paths", &c.exclude_paths)
            .field("headers", &c.headers)
            .field("operation", &c.operation)
            .field("names_as_operations", &c.names_as_operations)
            .field("insert_decision", &c.insert_decision)
            .finish_non_exhaustive()
    }
}

impl LightRate {
    /// A middleware asking `limiter`. By default the user is the client's IP address; see
    /// [`identify`](Self::identify).
    ///
    /// Build the limiter once and clone it into every worker's `App` (a clone is an `Arc`):
    /// every worker then draws from the same local buckets.
    pub fn new(limiter: Limiter) -> Self {
        LightRate {
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
                templates: Templates::default(),
                operation: None,
                names_as_operations: false,
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
    /// or the pattern of the resource it matched (`ServiceRequest::match_pattern`, e.g.
    /// `/items/{id}`).
    pub fn path_target(self, mode: PathTarget) -> Self {
        self.with(|c| c.path_target = mode)
    }

    /// Never limits requests for this exact path (health checks), as actix routes it
    /// (percent-decoded): they do not touch the limiter.
    pub fn exclude_path(self, path: impl Into<String>) -> Self {
        self.with(|c| c.exclude_paths.push(path.into()))
    }

    /// Never limits requests for which `predicate` is true.
    pub fn exclude(
        self,
        predicate: impl Fn(&ServiceRequest) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.with(|c| c.exclude = Some(Arc::new(predicate)))
    }

    /// Whether to send the IETF `RateLimit-Policy` and `RateLimit` fields. Default off.
    pub fn rate_limit_headers(self, mode: RateLimitHeaders) -> Self {
        self.with(|c| c.headers = mode)
    }

    /// Whether an allowed request carries its [`Decision`](lightrate_core::Decision) in its
    /// extensions for the handler (`web::ReqData<Decision>`). Default on; it costs one small
    /// allocation per request (actix's `Extensions` boxes every value), which a service that
    /// never reads it can save. Either way a request is decided only once.
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

    /// Declares that requests to the resource with the pattern `template` (the full pattern,
    /// scope prefixes included, as `ServiceRequest::match_pattern` gives it: `/emails`,
    /// `/api/items/{id}`; any method) are the operation `operation`, and returns a middleware
    /// for that resource.
    ///
    /// Wrap the resource with the returned middleware (`web::resource(..).wrap(..)`), use this
    /// one app-wide or on a scope, or both: either way a request is decided once, as the
    /// operation. Declare operations while building the app: a declaration made after the
    /// first request has been served is ignored (with a warning).
    pub fn operation(&self, template: &str, operation: impl Into<Operation>) -> LightRate {
        self.declare(None, template, operation.into())
    }

    /// Like [`operation`](Self::operation), for one method of the resource.
    pub fn operation_for(
        &self,
        method: Method,
        template: &str,
        operation: impl Into<Operation>,
    ) -> LightRate {
        match http_method(&method) {
            Some(method) => self.declare(Some(method), template, operation.into()),
            // Unreachable (actix and `http` accept the same methods); never less limited.
            None => self.declare(None, template, operation.into()),
        }
    }

    fn declare(&self, method: Option<http::Method>, template: &str, op: Operation) -> LightRate {
        self.config.routes.insert(method, template, op.clone());
        self.config.templates.insert(template);
        self.clone().with(|c| c.operation = Some(op))
    }

    /// Whether a request to a named resource (`web::resource("/emails").name("send_email")`)
    /// is limited as the operation of that name, at one token, instead of by method and
    /// path. Default off. Operations declared with [`operation`](Self::operation) come
    /// first.
    ///
    /// Note that the route macros (`#[post("/emails")]`) name their resource after the
    /// handler function (or their `name = ".."` argument). Before routing (app-wide or
    /// scope-level `wrap`), actix resolves the name from the path alone: when several
    /// resources share a path (method guards), it is the first one's.
    ///
    /// ```
    /// use actix_web::{web, App, HttpResponse};
    /// use lightrate_actix::LightRate;
    /// use lightrate_core::{EmbeddedSource, Limiter, RuleSet};
    ///
    /// let limiter = Limiter::new(EmbeddedSource::new(RuleSet::demo()));
    /// let app = App::new()
    ///     // Limited as the operation `send_email`, one token a request.
    ///     .service(
    ///         web::resource("/emails")
    ///             .name("send_email")
    ///             .route(web::post().to(HttpResponse::Ok)),
    ///     )
    ///     .wrap(LightRate::new(limiter).resource_names_as_operations(true));
    /// ```
    pub fn resource_names_as_operations(self, on: bool) -> Self {
        self.with(|c| c.names_as_operations = on)
    }

    /// The limiter.
    pub fn limiter(&self) -> &Limiter {
        &self.config.limiter
    }
}

impl<S, B> Transform<S, ServiceRequest> for LightRate
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = actix_web::Error;
    type Transform = LightRateMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<LightRateMiddleware<S>, ()>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(LightRateMiddleware::new(
            Rc::new(service),
            self.config.clone(),
        )))
    }
}
