//! lightrate: rate limiting for Rust web services, with tokens from the LightRate token API.
//!
//! The one dependency an application adds. The engine ([`Limiter`], the token sources) is at
//! the root; the adapters and the server are modules behind features:
//!
//! | feature | what it adds | default |
//! |---|---|---|
//! | `client` | [`LightRateClient`]: tokens from the LightRate API (reqwest, rustls) | on |
//! | `toml` | rules files in TOML ([`RuleSet::from_toml_file`]) | off |
//! | `tower` | [`tower`]: `LightRateLayer` for any tower stack, without axum | off |
//! | `axum` | `tower`, reading axum's `MatchedPath` and `ConnectInfo` | off |
//! | `actix` | [`actix`]: the actix-web middleware | off |
//! | `server` | [`server`]: the LightRate-compatible token server | off |
//! | `redis` | [`redis`]: `RedisSource`, buckets shared in Redis or Redis Cluster | off |
//! | `metrics` | [`metrics`]: Prometheus metrics through the `metrics` facade | off |
//!
//! ```
//! use lightrate::{EmbeddedSource, Limiter, RuleSet, Target};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), lightrate::Error> {
//! // Tokens from the rules engine in-process; `LightRateClient::new(key, app)?` for the API.
//! let limiter = Limiter::new(EmbeddedSource::new(RuleSet::demo()));
//! let decision = limiter.check("user123", &Target::operation("send_email")).await?;
//! assert!(decision.is_allowed());
//! # Ok(()) }
//! ```
//!
//! The README has the quick start with axum and actix-web; the [`guide`] is the reference
//! behind it, one page per topic (targets, answers, the engine, metrics, the server, Redis,
//! production).
#![cfg_attr(docsrs, feature(doc_cfg))]

// The engine: the limiter and its answers.
pub use lightrate_core::{
    BreakerState, BucketStatus, Decision, DecisionSource, Decisions, EnvSource, Limit, Limiter,
    LimiterBuilder, OnUnavailable, RuleSummary, Stats, DEFAULT_LEASE_SIZE,
    DEFAULT_MAX_LOCAL_BUCKETS, DEFAULT_TOKEN_HORIZON, INLINE_LIMITS, MAX_LEASE_SIZE,
};
// Reserve, then settle.
pub use lightrate_core::{LocalReservation, OnDrop, Reservation, Settled, Settlement};
// Where tokens come from, and the protocol they speak.
pub use lightrate_core::{
    ConsumeRequest, ConsumeTokensResponse, EmbeddedSource, EmbeddedStats, RefillRate, Rule,
    RuleSet, RuleSetBuilder, RuleSpec, Target, TokenSource, DEFAULT_MAX_SOURCE_BUCKETS,
    MAX_USER_IDENTIFIER_BYTES,
};
// In-flight caps.
pub use lightrate_core::{
    Acquired, InFlight, InFlightSlot, InFlightStore, StoreAcquired, StoreFuture, StoreSlot,
    DEFAULT_IN_FLIGHT_NAME, IN_FLIGHT_RETRY_AFTER,
};
// Time, and errors.
pub use lightrate_core::{Clock, Error, ErrorKind, ManualClock, Sleep, SystemClock, Timestamp};
// The LightRate API client.
#[cfg(feature = "client")]
pub use lightrate_core::{
    ClientBuilder, Configuration, LightRateClient, LocalBucketResponse, DEFAULT_API_TIMEOUT,
    DEFAULT_BASE_URL, DEFAULT_RETRY_ATTEMPTS,
};

/// The `http` crate, whose `Method` and `StatusCode` appear in this API.
pub use lightrate_core::http;

#[cfg(feature = "metrics")]
pub use lightrate_core::metrics;

/// Rate limiting for axum and every tower stack (feature `tower`, or `axum` to read axum's
/// route templates and peer addresses): [`LightRateLayer`](tower::LightRateLayer).
///
/// ```
/// use axum::{routing::{get, post}, Router};
/// use http::HeaderName;
/// use lightrate::tower::{Identify, LightRateLayer};
/// use lightrate::{EmbeddedSource, Limiter, RuleSet};
///
/// let limiter = Limiter::new(EmbeddedSource::new(RuleSet::demo()));
/// let rate_limit = LightRateLayer::new(limiter)
///     .identify(Identify::header(HeaderName::from_static("x-user-id")))
///     .exclude_path("/healthz");
/// let app: Router = Router::new()
///     .route("/hello", get(|| async { "hello" }))
///     .route(
///         "/emails",
///         post(|| async { "sent" }).layer(rate_limit.operation("/emails", "send_email")),
///     )
///     .route("/healthz", get(|| async { "ok" }))
///     .layer(rate_limit);
/// ```
///
/// The guide (per-route operations, identifiers, bodies) is the documentation of the
/// `lightrate-tower` crate.
#[cfg(feature = "tower")]
pub mod tower {
    pub use lightrate_tower::{
        Identify, InvalidIdentifier, LightRateLayer, LightRateService, MissingIdentifier, Mode,
        Operation, PathTarget, RateLimitHeaders, Rejection, ResponseFuture, ResponseHead,
        RouteLimit, Used, MAX_REQUEST_IDENTIFIER_BYTES,
    };
}

/// The actix-web middleware (feature `actix`): [`LightRate`](actix::LightRate).
///
/// ```
/// use actix_web::http::{header::HeaderName, Method};
/// use actix_web::{web, App, HttpResponse};
/// use lightrate::actix::{Identify, LightRate};
/// use lightrate::{EmbeddedSource, Limiter, RuleSet};
///
/// let limiter = Limiter::new(EmbeddedSource::new(RuleSet::demo()));
/// let rate_limit = LightRate::new(limiter)
///     .identify(Identify::header(HeaderName::from_static("x-user-id")))
///     .exclude_path("/healthz");
/// let app = App::new()
///     .route("/hello", web::get().to(|| async { "hello" }))
///     .service(
///         web::resource("/emails")
///             .wrap(rate_limit.operation_for(Method::POST, "/emails", "send_email"))
///             .route(web::post().to(|| async { HttpResponse::Ok().body("sent") })),
///     )
///     .wrap(rate_limit);
/// ```
///
/// The guide (workers, per-route operations, named resources, targets, bodies) is the
/// documentation of the `lightrate-actix` crate.
#[cfg(feature = "actix")]
pub mod actix {
    pub use lightrate_actix::{
        Identify, InvalidIdentifier, LightRate, LightRateMiddleware, MissingIdentifier, Mode,
        Operation, PathTarget, RateLimitHeaders, Rejection, ResponseFuture, ResponseHead,
        RouteLimit, Used, MAX_REQUEST_IDENTIFIER_BYTES,
    };
}

/// The LightRate-compatible token server (feature `server`): the embedded source served with
/// the LightRate protocol, for tests over real sockets and for self-hosting.
#[cfg(feature = "server")]
pub mod server {
    pub use lightrate_server::{
        default_max_connections, LightRateServer, RunningServer, ServerConfig, TokenStore,
        DEFAULT_BODY_LIMIT, DEFAULT_DRAIN_TIMEOUT, DEFAULT_REQUEST_TIMEOUT,
    };
}

/// Buckets shared in Redis or Redis Cluster (feature `redis`): [`RedisSource`](redis::RedisSource),
/// a token source for a fleet of apps or of server replicas.
///
/// The guide (key layout, outages, the script) is the documentation of the `lightrate-redis`
/// crate.
#[cfg(feature = "redis")]
pub mod redis {
    pub use lightrate_redis::{
        builder_from_env, RedisSource, RedisSourceBuilder, DEFAULT_APPLICATION_ID, DEFAULT_PREFIX,
        DEFAULT_REDIS_TIMEOUT, MAX_BUCKET_UNITS,
    };
}

/// Where the guide's links lead in rustdoc. The pages in `docs/` end with the same labels
/// pointing at each other as files (for reading them in the repository); a link definition
/// given first wins, so these put rustdoc's targets first.
macro_rules! guide_links {
    () => {
        "[answers]: crate::guide::answers\n\
         [shadow-mode]: crate::guide::answers#shadow-mode\n\
         [unavailable]: crate::guide::answers#when-the-token-source-cannot-answer\n\
         [metrics]: crate::guide::metrics\n\
         [redis]: crate::guide::redis\n\
         [server]: crate::guide::server\n\
         [grpc]: crate::guide::grpc\n\
         [axum]: crate::guide::axum\n\
         [actix]: crate::guide::actix\n\
         [engine]: crate::guide::engine\n\
         [limits]: crate::guide::limits\n\
         [client]: crate::guide::client\n\
         [production]: crate::guide::production\n\
         [testing]: crate::guide::testing\n\
         [BENCHMARKS.md]: https://github.com/lightrate/lightrate-rust/blob/main/BENCHMARKS.md\n\
         [benchmarks-leasing]: https://github.com/lightrate/lightrate-rust/blob/main/BENCHMARKS.md#leasing-for-the-rules-people-write\n\
         [benchmarks-fuzzing]: https://github.com/lightrate/lightrate-rust/blob/main/BENCHMARKS.md#fuzzing\n"
    };
}

/// The guide: the reference behind the README, one page per topic.
///
/// Each page is a file of `docs/` in the repository, included here; its Rust examples are
/// compiled and run as doctests (with the features the examples use).
///
/// | page | what |
/// |---|---|
/// | [`axum`](crate::guide::axum) | `LightRateLayer` on axum and tower: targets, per-route operations, identifiers, exclusions, the `Decision` |
/// | [`actix`](crate::guide::actix) | the actix-web middleware: workers, scopes, named resources |
/// | [`limits`](crate::guide::limits) | several limits in one decision, all or nothing: per second and per day, user and organisation, plans, in-flight caps |
/// | [`answers`](crate::guide::answers) | 429, 400 and 503 answers, IETF fields, outages, shadow mode |
/// | [`grpc`](crate::guide::grpc) | tonic: gRPC refusals, operations per gRPC method |
/// | [`engine`](crate::guide::engine) | the `Limiter`: the local hit, lease sizing, bounds, calls and latency |
/// | [`metrics`](crate::guide::metrics) | Prometheus metrics, what they cost |
/// | [`client`](crate::guide::client) | the LightRate API client: the SDK calls, retries, the key |
/// | [`server`](crate::guide::server) | the embedded source and `lightrate-server`: flags, rules files, reload, hardening |
/// | [`redis`](crate::guide::redis) | fleets on Redis or Redis Cluster: keys, outages, the fleet-wide bound |
/// | [`production`](crate::guide::production) | timeouts, connection caps, proxies, memory, the outage policy, a rollout |
/// | [`testing`](crate::guide::testing) | the tests, benchmarks and fuzz targets |
pub mod guide {
    #[doc = guide_links!()]
    #[doc = include_str!("../docs/axum.md")]
    pub mod axum {}
    #[doc = guide_links!()]
    #[doc = include_str!("../docs/actix.md")]
    pub mod actix {}
    #[doc = guide_links!()]
    #[doc = include_str!("../docs/limits.md")]
    pub mod limits {}
    #[doc = guide_links!()]
    #[doc = include_str!("../docs/answers.md")]
    pub mod answers {}
    #[doc = guide_links!()]
    #[doc = include_str!("../docs/grpc.md")]
    pub mod grpc {}
    #[doc = guide_links!()]
    #[doc = include_str!("../docs/engine.md")]
    pub mod engine {}
    #[doc = guide_links!()]
    #[doc = include_str!("../docs/metrics.md")]
    pub mod metrics {}
    #[doc = guide_links!()]
    #[doc = include_str!("../docs/client.md")]
    pub mod client {}
    #[doc = guide_links!()]
    #[doc = include_str!("../docs/server.md")]
    pub mod server {}
    #[doc = guide_links!()]
    #[doc = include_str!("../docs/redis.md")]
    pub mod redis {}
    #[doc = guide_links!()]
    #[doc = include_str!("../docs/production.md")]
    pub mod production {}
    #[doc = guide_links!()]
    #[doc = include_str!("../docs/testing.md")]
    pub mod testing {}
}

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
