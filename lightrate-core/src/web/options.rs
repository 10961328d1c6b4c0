//! The builder methods of every adapter, written once: [`request_policy_options!`] writes them
//! into an adapter's layer (or transform) type.

/// Writes the builder methods of a rate-limiting middleware (`LightRateLayer`, `LightRate`)
/// whose configuration is `policy: Arc<RequestPolicy<$view>>`, and its `Debug`.
///
/// The framework-specific parts of the docs are arguments: how a handler reads the decision,
/// where the route's template comes from, which path the framework routes on, how a route's
/// template is written, and which method type `operation_for` takes (with its conversion to
/// `http::Method`).
#[macro_export]
macro_rules! request_policy_options {
    (
        type: $Type:ident,
        view: $View:ty,
        method: $Method:ty => $to_http:expr,
        reads_decision: $reads:literal,
        template: $template:literal,
        path: $path:literal,
        route: $route:literal $(,)?
    ) => {
        impl $Type {
            fn with_policy(
                mut self,
                change: impl FnOnce(&mut $crate::web::adapter::Options<$View>),
            ) -> Self {
                ::std::sync::Arc::make_mut(&mut self.policy).configure(change);
                self
            }

            /// Where the user identifier comes from
            /// ([`Identify`](lightrate_core::web::Identify)): a header,
            /// an extension set by authentication, the client's IP address (the default), or a
            /// closure. An identifier that is empty, longer than
            /// [`MAX_REQUEST_IDENTIFIER_BYTES`](lightrate_core::web::MAX_REQUEST_IDENTIFIER_BYTES), or not
            /// visible text gets 400 before any token is spent.
            pub fn identify(self, identify: $crate::web::Identify<$View>) -> Self {
                self.with_policy(|p| p.identify = identify)
            }

            /// What a request without an identifier gets. Default: limited by its IP address
            /// ([`MissingIdentifier::PeerIp`](lightrate_core::web::MissingIdentifier::PeerIp)),
            /// so that leaving the identifier out is no way around the limit.
            pub fn on_missing_identifier(self, missing: $crate::web::MissingIdentifier) -> Self {
                self.with_policy(|p| p.missing = missing)
            }

            /// Behind `proxies` reverse proxies, the client's IP address is read from
            /// `X-Forwarded-For`. Default 0: forwarded headers are never trusted.
            pub fn trust_forwarded_for(self, proxies: usize) -> Self {
                self.with_policy(|p| p.trusted_proxies = proxies)
            }

            #[doc = concat!(
                "Which path a request without an operation is limited by: the concrete path ",
                "(default) or ", $template, "."
            )]
            pub fn path_target(self, mode: $crate::web::PathTarget) -> Self {
                self.with_policy(|p| p.path_target = mode)
            }

            #[doc = concat!(
                "Never limits requests for this exact path (health checks), ", $path,
                ": they do not touch the limiter."
            )]
            pub fn exclude_path(self, path: impl Into<String>) -> Self {
                self.with_policy(|p| p.exclude_paths.push(path.into()))
            }

            /// Never limits requests for which `predicate` is true.
            pub fn exclude(
                self,
                predicate: impl Fn(&<$View as $crate::web::adapter::RequestView>::Request) -> bool
                    + Send
                    + Sync
                    + 'static,
            ) -> Self {
                self.with_policy(|p| p.exclude = Some(::std::sync::Arc::new(predicate)))
            }

            /// Whether to send the IETF `RateLimit-Policy` and `RateLimit` fields. Default off.
            pub fn rate_limit_headers(self, mode: $crate::web::RateLimitHeaders) -> Self {
                self.with_policy(|p| p.headers = mode)
            }

            #[doc = concat!(
                "Whether an allowed request carries its [`Decision`](lightrate_core::Decision) ",
                "in its extensions for the handler (", $reads, "). Default on; it costs one ",
                "small allocation per request (the extensions box every value), which a ",
                "service that never reads it can save. Either way a request is decided only ",
                "once."
            )]
            pub fn insert_decision(self, insert: bool) -> Self {
                self.with_policy(|p| p.insert_decision = insert)
            }

            /// Enforce the limiter's refusals (the default), or only count them:
            /// [`Mode::Shadow`](lightrate_core::web::Mode::Shadow) decides and counts every
            /// request as usual (tokens are consumed) but lets each one through, with a
            /// [`Decision`](lightrate_core::Decision) that says it would have been denied, and
            /// logs them at most once per ten seconds. `Mode::from_env()` reads
            /// `LIGHTRATE_MODE`.
            pub fn mode(self, mode: $crate::web::Mode) -> Self {
                self.with_policy(|p| p.mode = mode)
            }

            /// Replaces the answers (429, 503, 400) with your own. The closure receives the
            /// [`Rejection`](lightrate_core::web::Rejection);
            /// [`Rejection::to_response`](lightrate_core::web::Rejection::to_response) is the
            /// default answer. gRPC requests (`content-type: application/grpc`) are always
            /// refused the gRPC way
            /// ([`Rejection::to_grpc_response`](lightrate_core::web::Rejection::to_grpc_response)),
            /// never with this closure's answer, which a gRPC client could not read.
            pub fn respond_with(
                self,
                respond: impl Fn(
                        &$crate::web::Rejection,
                    ) -> $crate::http::Response<$crate::web::adapter::AnswerBody>
                    + Send
                    + Sync
                    + 'static,
            ) -> Self {
                self.with_policy(|p| p.respond = Some(::std::sync::Arc::new(respond)))
            }

            #[doc = concat!(
                "Declares that requests to the route `template` (", $route, "; any method) ",
                "are the operation `operation`, and returns a middleware for that route.\n\n",
                "Use the returned middleware on the route, this one router-wide (or on a ",
                "scope), or both: either way a request is decided once, as the operation. ",
                "Declare operations while building the app: a declaration made after the first ",
                "request has been served is ignored (with a warning)."
            )]
            pub fn operation(
                &self,
                template: &str,
                operation: impl Into<$crate::web::Operation>,
            ) -> Self {
                self.declare(None, template, operation.into())
            }

            /// Like [`operation`](Self::operation), for one method of the route.
            pub fn operation_for(
                &self,
                method: $Method,
                template: &str,
                operation: impl Into<$crate::web::Operation>,
            ) -> Self {
                // Unconvertible methods (none the framework accepts) declare for any method:
                // never less limited.
                self.declare(($to_http)(&method), template, operation.into())
            }

            fn declare(
                &self,
                method: Option<$crate::http::Method>,
                template: &str,
                operation: $crate::web::Operation,
            ) -> Self {
                $Type {
                    policy: ::std::sync::Arc::new(self.policy.declare(method, template, operation)),
                }
            }

            /// Adds a limit to every request this middleware limits, beside the request's own
            /// (its route's operation, else its method and path, on the middleware's
            /// identifier): the request is admitted only if both admit it, and one refused
            /// takes nothing from the other. Routes that declare their limits
            /// ([`limits`](Self::limits)) have those instead.
            pub fn also(self, limit: $crate::web::RouteLimit<$View>) -> Self {
                self.with_policy(|p| p.also.push(limit))
            }

            #[doc = concat!(
                "Declares that requests to the route `template` (", $route, "; any method) ",
                "are limited by `limits`, all in one decision: admitted only if every limit ",
                "admits them, and a request one limit refuses takes nothing from the others. ",
                "Returns a middleware for that route; use it on the route, this one ",
                "router-wide, or both: either way a request is decided once. Declare limits ",
                "while building the app: a declaration made after the first request has been ",
                "served is ignored (with a warning)."
            )]
            pub fn limits(
                &self,
                template: &str,
                limits: impl IntoIterator<Item = $crate::web::RouteLimit<$View>>,
            ) -> Self {
                $Type {
                    policy: ::std::sync::Arc::new(self.policy.declare_limits(
                        None,
                        template,
                        limits.into_iter().collect(),
                    )),
                }
            }

            /// Like [`limits`](Self::limits), for one method of the route.
            pub fn limits_for(
                &self,
                method: $Method,
                template: &str,
                limits: impl IntoIterator<Item = $crate::web::RouteLimit<$View>>,
            ) -> Self {
                $Type {
                    policy: ::std::sync::Arc::new(self.policy.declare_limits(
                        ($to_http)(&method),
                        template,
                        limits.into_iter().collect(),
                    )),
                }
            }

            /// The limiter.
            pub fn limiter(&self) -> &$crate::Limiter {
                self.policy.limiter()
            }
        }

        impl ::std::fmt::Debug for $Type {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_tuple(stringify!($Type)).field(&self.policy).finish()
            }
        }
    };
}
