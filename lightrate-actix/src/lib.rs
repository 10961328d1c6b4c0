//! Rate limiting for [actix-web](https://docs.rs/actix-web), with tokens from the LightRate
//! API (or a LightRate-compatible source).
//!
//! [`LightRate`] identifies the user of each request, picks its target (the resource's
//! operation if it has one, else method + path), asks a [`Limiter`](lightrate_core::Limiter)
//! (a local-bucket hit most of the time, no allocation), and either calls the wrapped service
//! with the [`Decision`](lightrate_core::Decision) in the request's extensions (a handler reads
//! it with `web::ReqData<Decision>`), or answers without calling it: 429 with `Retry-After`
//! when limited, 503 when the token source cannot answer and the policy is to deny, 400 for an
//! unusable user identifier.
//!
//! ```
//! use actix_web::http::{header::HeaderName, Method};
//! use actix_web::{web, App, HttpResponse};
//! use lightrate::actix::{Identify, LightRate};
//! use lightrate::{EmbeddedSource, Limiter, RuleSet};
//!
//! let limiter = Limiter::new(EmbeddedSource::new(RuleSet::demo()));
//! let rate_limit = LightRate::new(limiter)
//!     .identify(Identify::header(HeaderName::from_static("x-user-id")))
//!     .exclude_path("/healthz");
//!
//! let app = App::new()
//!     .route("/hello", web::get().to(|| async { "hello" }))
//!     // This resource is the LightRate operation `send_email`, not `POST /emails`.
//!     .service(
//!         web::resource("/emails")
//!             .wrap(rate_limit.operation_for(Method::POST, "/emails", "send_email"))
//!             .route(web::post().to(|| async { HttpResponse::Ok().body("sent") })),
//!     )
//!     .route("/healthz", web::get().to(|| async { "ok" }))
//!     .wrap(rate_limit);
//! ```
//!
//! # Workers
//!
//! `HttpServer` builds one `App` per worker thread. Build the [`Limiter`](lightrate_core::Limiter)
//! once and clone it into each (a clone is one `Arc`): every worker then takes from the same
//! local buckets, and the process never admits more than the token source granted.
//!
//! ```no_run
//! use actix_web::{web, App, HttpServer};
//! use lightrate::actix::LightRate;
//! use lightrate::{EmbeddedSource, Limiter, RuleSet};
//!
//! # fn main() -> std::io::Result<()> {
//! let limiter = Limiter::new(EmbeddedSource::new(RuleSet::demo()));
//! let server = HttpServer::new(move || {
//!     App::new()
//!         .route("/hello", web::get().to(|| async { "hello" }))
//!         .wrap(LightRate::new(limiter.clone()))
//! })
//! .bind(("127.0.0.1", 8080))?
//! .run();
//! # let _ = server;
//! # Ok(()) }
//! ```
//!
//! # Per-route operations
//!
//! [`LightRate::operation`] declares a resource's operation (by its full pattern, scope
//! prefixes included, as `ServiceRequest::match_pattern` reports it) in a table shared by
//! every clone, and returns a middleware for the resource. Each request is decided once, by
//! the first LightRate middleware it meets, which puts its `Decision` in the request's
//! extensions; later LightRate middleware lets a request that has one through. An app-wide or
//! scope-level middleware runs before routing has reached the resource, but actix resolves the
//! resource's pattern from the path already, so it finds the declared operation too. So
//! whichever way they are combined (the resource's middleware alone; inside an app-wide or a
//! scope-level `wrap`; declared on the app-wide middleware only) a request costs exactly one
//! token (or the operation's cost), charged to its operation.
//!
//! Actix resources can also be named (`web::resource("/emails").name("send_email")`, and the
//! route macros name theirs after the handler): with
//! [`resource_names_as_operations`](LightRate::resource_names_as_operations), a named resource
//! is limited as the operation of its name, with no declaration at all.
//!
//! # Targets
//!
//! A request without an operation is limited by its method and path: the concrete path by
//! default, or the resource's pattern with [`PathTarget::Template`]. The path is the one actix
//! routes on, percent-decoded (`/em%61ils` reaches the `/emails` resource, and is limited as
//! it), so that an encoded path is no way around a limit.
//!
//! Finding a request's resource pattern costs actix a walk of its resource map and a
//! `String`: the middleware asks only for requests whose path can match a declared
//! operation's template (or with [`PathTarget::Template`]).
//!
//! # The user identifier
//!
//! [`Identify`]: a header, an extension set by an authentication middleware, the client's IP
//! address (the default), or a closure. An identifier that is empty, longer than
//! [`MAX_REQUEST_IDENTIFIER_BYTES`] or not visible text gets 400 before any token is spent.
//! A request with none follows [`MissingIdentifier`]: by default it is limited by its IP
//! address. `X-Forwarded-For` is read only behind
//! [`trust_forwarded_for`](LightRate::trust_forwarded_for) proxies.
//!
//! # Bodies
//!
//! The middleware's responses have actix's [`BoxBody`](actix_web::body::BoxBody), the body
//! every `App`, `Scope` and `Resource` produces: the wrapped service's response passes through
//! untouched (boxing a `BoxBody` again is a no-op; a body of another type, from a
//! body-changing middleware wrapped inside this one, is boxed as `ServiceResponse::map_into_boxed_body`
//! does). This costs less per request than an `EitherBody`.
//!
//! # Layout
//!
//! Only the glue between actix-web and the request policy that `lightrate-core` shares with
//! the tower adapter (every option, identification, targets, answers): the transform
//! [`LightRate`] (`transform.rs`), its [`LightRateMiddleware`] (`middleware.rs`), their
//! [`ResponseFuture`] (`future.rs`), how an actix request shows itself to the policy
//! (`request.rs`), and the conversions between actix's `http` 0.2 types and `http` 1
//! (`convert.rs`).
#![cfg_attr(docsrs, feature(doc_cfg))]

mod convert;
mod future;
mod middleware;
mod request;
mod transform;

pub use future::ResponseFuture;
pub use lightrate_core::web::{
    InvalidIdentifier, MissingIdentifier, Mode, Operation, PathTarget, RateLimitHeaders, Rejection,
    ResponseHead, Used, MAX_REQUEST_IDENTIFIER_BYTES,
};
pub use middleware::LightRateMiddleware;
pub use request::ActixRequest;
pub use transform::LightRate;

/// Where the user identifier of a request comes from: a header, an extension an
/// authentication middleware set (`req.extensions_mut().insert(..)`, what `web::ReqData`
/// reads), the client's IP address (`ServiceRequest::peer_addr`), or a closure of the
/// `ServiceRequest`.
///
/// ```
/// use actix_web::http::header::HeaderName;
/// use lightrate::actix::Identify;
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
///
/// The request's extensions live in a `RefCell`: to identify by one of them without copying
/// it, use [`Identify::extension`](lightrate_core::web::Identify::extension) rather than
/// [`Identify::with`](lightrate_core::web::Identify::with).
pub type Identify = lightrate_core::web::Identify<ActixRequest>;

/// One limit of a request ([`lightrate_core::web::RouteLimit`] for this framework's requests):
/// an identifier, a target (fixed, or chosen per request) and a cost, decided with the request's
/// other limits all or nothing.
pub type RouteLimit = lightrate_core::web::RouteLimit<ActixRequest>;

#[cfg(test)]
mod tests;
