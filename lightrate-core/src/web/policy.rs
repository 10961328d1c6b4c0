//! [`RequestPolicy`]: every option of the adapters ([`Options`]) and what the policy derives
//! from them; what a request gets is in `plan.rs` and `answer.rs`.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response};

use super::family::Family;
use super::identify::{Identify, Kind, MissingIdentifier};
use super::operations::{Operation, PathTarget, RouteOperations, Served};
use super::rejection::{RateLimitHeaders, Rejection};
use super::route_limit::RouteLimit;
use super::shadow::{Mode, ShadowLog};
use super::view::RequestView;
use crate::Limiter;

pub(crate) type ExcludeFn<V> = dyn Fn(&<V as RequestView>::Request) -> bool + Send + Sync;
pub(crate) type RespondFn = dyn Fn(&Rejection) -> Response<Bytes> + Send + Sync;

/// The options of a rate-limiting middleware: what its builder methods set (each documented
/// there, in `request_policy_options!`). Changed only through
/// [`RequestPolicy::configure`], which keeps what the policy derives from them.
pub struct Options<V: RequestView> {
    /// Where the user identifier comes from.
    pub identify: Identify<V>,
    /// What a request without an identifier gets.
    pub missing: MissingIdentifier,
    /// How many reverse proxies append to `X-Forwarded-For` (0: never read it).
    pub trusted_proxies: usize,
    /// Which path a request without an operation is limited by.
    pub path_target: PathTarget,
    /// Paths never limited.
    pub exclude_paths: Vec<String>,
    /// Requests never limited.
    pub exclude: Option<Arc<ExcludeFn<V>>>,
    /// When to send the IETF fields.
    pub headers: RateLimitHeaders,
    /// The user's answers, instead of the default ones.
    pub respond: Option<Arc<RespondFn>>,
    /// Whether a named route is limited as the operation of its name.
    pub names_as_operations: bool,
    /// Whether an allowed request carries its `Decision` for the handler.
    pub insert_decision: bool,
    /// Whether refusals are enforced, or only counted (shadow mode).
    pub mode: Mode,
    /// Limits every request gets beside its own (its route's operation, else its method and
    /// path), on routes that declare none.
    pub also: Vec<RouteLimit<V>>,
}

impl<V: RequestView> Clone for Options<V> {
    fn clone(&self) -> Self {
        Options {
            identify: self.identify.clone(),
            missing: self.missing,
            trusted_proxies: self.trusted_proxies,
            path_target: self.path_target,
            exclude_paths: self.exclude_paths.clone(),
            exclude: self.exclude.clone(),
            headers: self.headers,
            respond: self.respond.clone(),
            names_as_operations: self.names_as_operations,
            insert_decision: self.insert_decision,
            mode: self.mode,
            also: self.also.clone(),
        }
    }
}

impl<V: RequestView> fmt::Debug for Options<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("identify", &self.identify)
            .field("missing", &self.missing)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("path_target", &self.path_target)
            .field("exclude_paths", &self.exclude_paths)
            .field("headers", &self.headers)
            .field("names_as_operations", &self.names_as_operations)
            .field("insert_decision", &self.insert_decision)
            .field("mode", &self.mode)
            .field("also", &self.also)
            .finish_non_exhaustive()
    }
}

/// A rate-limiting middleware's options and what it derives from them, shared by each service
/// it makes (behind an `Arc`), and what a request gets: [`plan`](Self::plan).
pub struct RequestPolicy<V: RequestView> {
    pub(super) limiter: Limiter,
    /// The options; changed only through [`configure`](Self::configure).
    pub(super) options: Options<V>,
    /// Whether the options are the default configuration's, but for declared operations
    /// (see [`is_simple`](Self::is_simple)); kept by [`configure`](Self::configure).
    pub(super) simple: bool,
    /// Shadow mode's log, shared by every clone.
    pub(super) shadow_log: Arc<ShadowLog>,
    /// Declared per-route operations (shared by every clone).
    pub(super) routes: RouteOperations,
    /// The operation of a per-route layer.
    pub(super) operation: Option<Operation>,
    /// The limits of a per-route layer that declared several.
    pub(super) route_limits: Option<Arc<[RouteLimit<V>]>>,
    /// The request's own limit and [`Options::also`], when that is not empty.
    pub(super) also_limits: Option<Arc<[RouteLimit<V>]>>,
    /// This middleware, its clones and the per-route middlewares it declares: requests are
    /// decided once by each family (shared by every clone).
    pub(super) family: Arc<Family>,
    view: PhantomData<fn() -> V>,
}

impl<V: RequestView> Clone for RequestPolicy<V> {
    fn clone(&self) -> Self {
        RequestPolicy {
            limiter: self.limiter.clone(),
            options: self.options.clone(),
            routes: self.routes.clone(),
            operation: self.operation.clone(),
            route_limits: self.route_limits.clone(),
            also_limits: self.also_limits.clone(),
            family: self.family.clone(),
            simple: self.simple,
            shadow_log: self.shadow_log.clone(),
            view: PhantomData,
        }
    }
}

impl<V: RequestView> fmt::Debug for RequestPolicy<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestPolicy")
            .field("limiter", &self.limiter)
            .field("options", &self.options)
            .field("operation", &self.operation)
            .finish_non_exhaustive()
    }
}

impl<V: RequestView> RequestPolicy<V> {
    /// The defaults: the user is the client's IP address, nothing excluded, no IETF fields,
    /// the decision kept for the handler.
    pub fn new(limiter: Limiter) -> Self {
        let mut policy = RequestPolicy {
            limiter,
            options: Options {
                identify: Identify::peer_ip(),
                missing: MissingIdentifier::default(),
                trusted_proxies: 0,
                path_target: PathTarget::default(),
                exclude_paths: Vec::new(),
                exclude: None,
                headers: RateLimitHeaders::default(),
                respond: None,
                names_as_operations: false,
                insert_decision: true,
                mode: Mode::default(),
                also: Vec::new(),
            },
            routes: RouteOperations::default(),
            operation: None,
            route_limits: None,
            also_limits: None,
            family: Family::new(),
            simple: false,
            shadow_log: Arc::default(),
            view: PhantomData,
        };
        policy.configure(|_| {});
        policy
    }

    /// Changes options (what the adapters' builder methods do), and what the policy derives
    /// from them: whether its requests take the default configuration's path.
    pub fn configure(&mut self, change: impl FnOnce(&mut Options<V>)) {
        change(&mut self.options);
        self.derive();
    }

    /// Derives from the options whether requests take the default configuration's path.
    fn derive(&mut self) {
        self.also_limits = (!self.options.also.is_empty()).then(|| {
            std::iter::once(RouteLimit::request())
                .chain(self.options.also.iter().cloned())
                .collect()
        });
        let o = &self.options;
        self.simple = matches!(o.identify.kind(), Kind::PeerIp)
            && o.trusted_proxies == 0
            && o.exclude_paths.is_empty()
            && o.exclude.is_none()
            && self.operation.is_none()
            && self.route_limits.is_none()
            && o.also.is_empty()
            && o.path_target == PathTarget::Concrete
            && !o.names_as_operations
            && o.mode == Mode::Enforce
            && o.headers != RateLimitHeaders::Always;
    }

    /// The options.
    pub fn options(&self) -> &Options<V> {
        &self.options
    }

    /// The limiter.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// Declares that requests to the route `template` (with `method`, or any method) are the
    /// operation `op`, and returns the policy of a middleware for that route.
    pub fn declare(&self, method: Option<Method>, template: &str, op: Operation) -> Self {
        self.routes.insert(method, template, op.clone());
        let mut route = self.clone();
        route.operation = Some(op);
        route.derive();
        route
    }

    /// Declares that requests to the route `template` (with `method`, or any method) are
    /// limited by `limits`, all or nothing, and returns the policy of a middleware for that
    /// route.
    pub fn declare_limits(
        &self,
        method: Option<Method>,
        template: &str,
        limits: Vec<RouteLimit<V>>,
    ) -> Self {
        let shared: Arc<[RouteLimit<V>]> = limits.iter().cloned().collect();
        self.routes.insert(
            method,
            template,
            super::operations::Declared::Limits(Arc::new(limits)),
        );
        let mut route = self.clone();
        route.route_limits = Some(shared);
        route.derive();
        route
    }

    /// Whether this policy is the default configuration: the user is the client's IP address
    /// (no forwarded headers), the target is the method and the concrete path, nothing is
    /// excluded, no operation is declared (the declarations frozen by a first request without
    /// any), refusals are enforced, and allowed responses get no IETF fields. Its requests
    /// skip every step those options add.
    #[inline]
    pub fn is_simple(&self) -> bool {
        self.simple && self.routes.frozen().is_some_and(Served::is_empty)
    }
}
