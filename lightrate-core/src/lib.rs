//! The engine of [lightrate](https://github.com/lightrate/lightrate-rust): rate limiting for
//! Rust web services, with tokens from the LightRate token API.
//!
//! - [`protocol`]: the wire types of `POST /api/v1/tokens/consume` ([`Target`],
//!   [`ConsumeRequest`], [`ConsumeTokensResponse`], [`Rule`]).
//! - [`TokenSource`]: where tokens come from. Implemented by [`LightRateClient`] (the hosted
//!   API or any server speaking its protocol) and [`EmbeddedSource`] (the rules engine
//!   in-process, no network: the default when no API key is configured).
//! - [`Clock`]: injected time, with [`SystemClock`] and [`ManualClock`] for tests.
//! - [`web`]: what the web adapters share, on the `http` crate's types: the request policy
//!   (every option of `lightrate::tower::LightRateLayer` and `lightrate::actix::LightRate`),
//!   identifiers, per-route operations, and the answers (429, 503, 400). The adapters live in
//!   `lightrate-tower` (axum, hyper, tonic) and `lightrate-actix`; this crate depends on no
//!   web framework.
//!
//! Applications depend on the facade, `lightrate`, which re-exports this crate at its root.
//! Features: `client` (on by default: [`LightRateClient`], and reqwest), `toml` (rules files),
//! `metrics` (Prometheus metrics through the `metrics` facade: the module `metrics`, there
//! with the feature).
//!
//! ```
//! use lightrate::{ConsumeRequest, EmbeddedSource, RuleSet, Target};
//!
//! let source = EmbeddedSource::new(RuleSet::demo());
//! let target = Target::operation("send_email");
//! let answer = source.consume_now(ConsumeRequest::new("user123", &target, 1)).unwrap();
//! assert!(answer.is_granted());
//! assert_eq!(answer.rule.burst_rate, 10);
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "client")]
mod client;
mod clock;
mod embedded;
pub mod env_vars;
mod error;
mod from_env;
mod inflight;
mod ip;
mod limiter;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod protocol;
mod rate;
mod rules;
mod source;
mod sync;
pub mod web;

#[cfg(feature = "client")]
pub use client::{
    ClientBuilder, Configuration, LightRateClient, LocalBucketResponse, DEFAULT_API_TIMEOUT,
    DEFAULT_BASE_URL, DEFAULT_RETRY_ATTEMPTS,
};
pub use clock::{Clock, ManualClock, Sleep, SystemClock, Timestamp};
pub use embedded::{EmbeddedSource, EmbeddedStats, DEFAULT_MAX_SOURCE_BUCKETS};
pub use error::{Error, ErrorKind};
pub use from_env::EnvSource;
pub use inflight::{
    Acquired, InFlight, InFlightSlot, InFlightStore, StoreAcquired, StoreFuture, StoreSlot,
    DEFAULT_IN_FLIGHT_NAME, IN_FLIGHT_RETRY_AFTER,
};
pub use limiter::{
    BreakerState, BucketStatus, Decision, DecisionSource, Decisions, Limit, Limiter,
    LimiterBuilder, LocalReservation, OnDrop, OnUnavailable, Reservation, RuleSummary, Settled,
    Settlement, Stats, DEFAULT_LEASE_SIZE, DEFAULT_MAX_LOCAL_BUCKETS, DEFAULT_TOKEN_HORIZON,
    INLINE_LIMITS, MAX_LEASE_SIZE,
};
pub use protocol::{
    ConsumeRequest, ConsumeTokensResponse, RefillRate, Rule, Target, MAX_USER_IDENTIFIER_BYTES,
};
pub use rules::{RuleSet, RuleSetBuilder, RuleSpec};
pub use source::TokenSource;

/// The `http` crate, whose `Method` and `StatusCode` appear in this API.
pub use http;
