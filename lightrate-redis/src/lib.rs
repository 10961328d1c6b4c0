//! [`RedisSource`]: lightrate's token buckets in Redis or Redis Cluster, shared by every process
//! of a fleet.
//!
//! The rules are a [`RuleSet`](lightrate_core::RuleSet) (the same TOML and builder as the
//! embedded source), matched in each process; only the buckets live in Redis. A consume is one
//! Lua script on one key (loaded once, called by SHA with `EVALSHA`, reloaded on `NOSCRIPT`):
//! it refills the bucket from the time Redis gives (`TIME`, whole milliseconds: one clock for
//! the whole fleet), takes what it can, and writes the bucket back with an expiry at the moment
//! it would be full again. So Redis holds only the buckets in use, and a [`Limiter`] over a
//! `RedisSource` in each process admits, across all of them, what one bucket allows.
//!
//! ```no_run
//! use lightrate_core::{Limiter, RuleSet};
//! use lightrate_redis::RedisSource;
//!
//! let rules = RuleSet::from_toml_file("rules.toml")?;
//! let limiter = Limiter::new(RedisSource::connect("redis://127.0.0.1:6379", rules)?);
//! // Redis Cluster: RedisSource::connect_cluster(["redis://10.0.0.1:7000", ...], rules)
//! # Ok::<(), lightrate_core::Error>(())
//! ```
//!
//! # Keys
//!
//! `<prefix>:<application>:<rule id>:<user>`, for example `lightrate:shop:rule_hello:alice`.
//! The prefix (default `lightrate`) is taken as given (visible ASCII, no braces); the other
//! parts are percent-encoded: every byte but ASCII letters, digits and `-._~@/+=` becomes `%XX`,
//! so any identifier (spaces, colons, braces, non-ASCII) has a key of its own and the parts
//! never run into each other. Keys hold no braces, so Redis Cluster hashes the whole key (no
//! hash tags): buckets spread over the slots, and no identifier can gather keys on one node.
//! Each script touches exactly one key, so nothing crosses slots.
//!
//! The value is the string `<level>:<time ms>:<units per token>`. One token is `period_ms`
//! units of a rate of `tokens` tokens per `period_ms` milliseconds, and `tokens` units accrue
//! per millisecond: integers throughout, the embedded source's arithmetic. Lua numbers are
//! doubles, exact below 2⁵³, so a rule whose `burst_rate × period_ms` reaches 2⁵³ is refused
//! when the source is built. A bucket written under another rate keeps its whole tokens.
//!
//! # When Redis is down
//!
//! A consume that gets no answer within the timeout (default 500 ms) fails with an
//! [`Error`](lightrate_core::Error) of kind `Timeout`; a connection refused or lost is
//! `Network`; a cluster that is down is `Unavailable`. These are outage kinds: the limiter's
//! [`OnUnavailable`](lightrate_core::OnUnavailable) policy decides the request and its circuit
//! breaker stops waiting on a dead Redis. Refused credentials are a `Configuration` error.
//! The connection is made on first use and remade after a failure (a lost connection starts
//! a new attempt at once; a failed attempt is retried by the next call, never cached), so a
//! Redis that comes back is used again without restarting anything.
//! Neither errors, logs nor `Debug` output hold a URL's password; errors from the `redis`
//! crate never appear in this crate's types.
//!
//! # When one Redis Cluster node is down
//!
//! A cluster source keeps the slot map itself and sends each script straight to its slot's
//! primary, on a connection of that node's own, within the timeout: a killed primary fails at
//! once (connection refused) and a stalled one (`SIGSTOP`, a frozen machine) within the
//! timeout, and only for the keys of its slots; requests for the other nodes' keys neither
//! wait for it nor share its connection. The slot map is refreshed in the background (asking
//! every known node at once, taking the first answer) after a `MOVED` and after any node's
//! failure, at most every 100 ms while failures last, so the slots of a dead primary are served
//! again within about 100 ms of its replica's promotion; no request waits for a refresh but
//! the very first. A node's failure while another primary answers is a
//! [`partial`](lightrate_core::Error::partial) outage: the limiter's outage policy applies to
//! that request, but its circuit breaker does not open for every key. `PING` (the server's
//! `/health`) is `Ok` while any primary answers.
//!
//! Run the cluster with `cluster-require-full-coverage no`: with the default `yes`, Redis
//! itself refuses every key on every node (`CLUSTERDOWN`) from the moment a primary is marked
//! failed until its replica takes over (about a second), and no client can serve the healthy
//! slots then; the retries above ride out only the end of that window.
//!
//! No script runs twice: a call is sent again only after an answer Redis gives before running
//! anything: `MOVED` (once, to the node named), `CLUSTERDOWN` or `TRYAGAIN` (after a pause of
//! 25 ms, doubling, while the timeout allows). A timeout, a lost connection or `ASK` fail the
//! call, never retried. A call that timed out on a
//! stalled node may still run once when the node resumes (its bytes were sent): that request
//! got the outage policy and its token is taken once, never twice.
//!
//! # Bounds
//!
//! Redis grants what one bucket per (application, rule, user) allows: at most
//! `burst + refill·T` in any window T, however many processes ask. The limiters in front of it
//! never admit more than it granted; tokens they hold locally are the only slack (see
//! [`Limiter`]'s bounds).
//!
//! [`Limiter`]: lightrate_core::Limiter
#![cfg_attr(docsrs, feature(doc_cfg))]

mod cluster;
mod connection;
mod env;
mod inflight;
mod keys;
mod script;
mod source;
#[cfg(feature = "test-util")]
pub mod test_util;

pub use env::{builder_from_env, in_flight_from_env};
pub use inflight::{RedisInFlight, RedisInFlightBuilder, DEFAULT_SLOT_TTL};
pub use script::MAX_BUCKET_UNITS;
pub use source::{
    RedisSource, RedisSourceBuilder, DEFAULT_APPLICATION_ID, DEFAULT_PREFIX, DEFAULT_REDIS_TIMEOUT,
};
