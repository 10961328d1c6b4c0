//! lightrate: rate limiting for Rust web services, with tokens from the LightRate token API.
//!
//! This facade re-exports the engine ([`lightrate_core`]) at its root, and the other crates of
//! the workspace behind features:
//!
//! | feature            | module     | crate              |
//! |--------------------|------------|--------------------|
//! | `tower` (`axum`)   | `tower`    | `lightrate-tower`  |
//! | `actix`            | `actix`    | `lightrate-actix`  |
//! | `server`           | `server`   | `lightrate-server` |
//! | `redis`            | `redis`    | `lightrate-redis`  |
//!
//! See the README for the quick start.

pub use lightrate_core::*;

/// `LightRateLayer` for axum and every tower stack (feature `tower` or `axum`).
#[cfg(feature = "tower")]
pub use lightrate_tower as tower;

/// The actix-web middleware (feature `actix`).
#[cfg(feature = "actix")]
pub use lightrate_actix as actix;

/// The LightRate-compatible token server (feature `server`).
#[cfg(feature = "server")]
pub use lightrate_server as server;

/// `RedisSource`: buckets shared in Redis or Redis Cluster (feature `redis`).
#[cfg(feature = "redis")]
pub use lightrate_redis as redis;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
