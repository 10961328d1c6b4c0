//! Rate limiting for [axum](https://docs.rs/axum) and every [tower](https://docs.rs/tower)
//! stack, with tokens from the LightRate API (or a LightRate-compatible source).
//!
//! [`LightRateLayer`] identifies the user of each request, picks its target (the route's
//! operation if it has one, else method + path), asks a [`Limiter`](lightrate_core::Limiter)
//! (a local-bucket hit most of the time, no allocation), and either calls the inner service
//! with the [`Decision`](lightrate_core::Decision) in the request's extensions, or answers
//! without calling it: 429 with `Retry-After` when limited, 503 when the token source cannot
//! answer and the policy is to deny, 400 for an unusable user identifier.
//!
//! ```
//! use axum::{routing::{get, post}, Router};
//! use http::HeaderName;
//! use lightrate::tower::{Identify, LightRateLayer};
//! use lightrate::{EmbeddedSource, Limiter, RuleSet};
//!
//! let limiter = Limiter::new(EmbeddedSource::new(RuleSet::demo()));
//! let rate_limit = LightRateLayer::new(limiter)
//!     .identify(Identify::header(HeaderName::from_static("x-user-id")))
//!     .exclude_path("/healthz");
//!
//! let app: Router = Router::new()
//!     .route("/hello", get(|| async { "hello" }))
//!     // This route is the LightRate operation `send_email`, not `POST /emails`.
//!     .route(
//!         "/emails",
//!         post(|| async { "sent" }).layer(rate_limit.operation("/emails", "send_email")),
//!     )
//!     .route("/healthz", get(|| async { "ok" }))
//!     .layer(rate_limit);
//! ```
//!
//! # Per-route operations
//!
//! [`LightRateLayer::operation`] declares a route's operation (by its template, as given to
//! `Router::route`) in a table shared by every clone of the layer, and returns a layer for
//! the route. Each request is decided once, by the first LightRate layer it meets, which
//! puts its `Decision` in the request's extensions; later LightRate layers let a request that
//! has one through. So whichever way they are combined (the route's layer alone; the
//! router-wide layer, with `layer` or `route_layer`, alone or with the route's layer) a
//! request costs exactly one token (or the operation's cost), charged to its operation.
//!
//! # The user identifier
//!
//! [`Identify`]: a header, an extension set by an authentication layer, the client's IP
//! address (the default), or a closure. An identifier that is empty, longer than
//! [`MAX_REQUEST_IDENTIFIER_BYTES`] or not visible text gets 400 before any token is spent.
//! A request with none follows [`MissingIdentifier`]: by default it is limited by its IP
//! address.
//! `X-Forwarded-For` is read only behind
//! [`trust_forwarded_for`](LightRateLayer::trust_forwarded_for) proxies.
//!
//! # Bodies
//!
//! The inner service's response passes through untouched; the limiter's own answers are made
//! with `ResBody::from(Bytes)`, which axum's `Body`, `http_body_util::Full<Bytes>` and most
//! response bodies implement. A service whose body does not can map its response body first
//! (`ServiceBuilder::map_response`).
//!
//! # Layout
//!
//! Only the glue between tower and the request policy that `lightrate-core` shares with the
//! actix-web adapter (every option, identification, targets, answers): [`LightRateLayer`]
//! (`layer.rs`), the service [`LightRateService`] (`service.rs`), its [`ResponseFuture`]
//! (`future.rs`), and how a tower request shows itself to the policy (`request.rs`).
#![cfg_attr(docsrs, feature(doc_cfg))]

mod future;
mod layer;
mod request;
mod service;

pub use future::ResponseFuture;
pub use layer::LightRateLayer;
pub use lightrate_core::web::{
    InvalidIdentifier, MissingIdentifier, Mode, Operation, PathTarget, RateLimitHeaders, Rejection,
    ResponseHead, Used, MAX_REQUEST_IDENTIFIER_BYTES,
};
pub use request::TowerRequest;
pub use service::LightRateService;

/// Where the user identifier of a request comes from: a header, an extension an
/// authentication layer set, the client's IP address (axum's `ConnectInfo`, or a
/// `SocketAddr` extension), or a closure of the request's head (`http::request::Parts`).
///
/// ```
/// use http::HeaderName;
/// use lightrate::tower::Identify;
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
pub type Identify = lightrate_core::web::Identify<TowerRequest>;

/// One limit of a request ([`lightrate_core::web::RouteLimit`] for this framework's requests):
/// an identifier, a target (fixed, or chosen per request) and a cost, decided with the request's
/// other limits all or nothing.
pub type RouteLimit = lightrate_core::web::RouteLimit<TowerRequest>;

#[cfg(test)]
mod tests;
