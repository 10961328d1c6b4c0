//! [`Limiter`]: local token buckets over any [`TokenSource`].
//!
//! The limiter leases tokens from the source and keeps them in local buckets, one per (user,
//! rule), so that most requests never leave the process:
//!
//! - **Local hit**: the target's rule and the (user, rule) bucket from this thread's memos or
//!   a lock-free map, and one compare-and-swap. No lock, no allocation; the clock is a cached
//!   reading (one atomic load).
//! - **Target → rule cache**: exact targets first (an operation, or method + path), then the
//!   matchers of known rules for targets not seen yet; learned from the source's answers,
//!   expiring after `rule_ttl` (so rule changes on the server are picked up), bounded in size.
//! - **Leases sized by what is left and who takes it** (`sizing.rs`): what the waiting
//!   requests need, plus this process's demand over a span, but never more than its share of
//!   what the source has left beside the others' take. Near the limit a lease is one request's
//!   cost; `lease_size` caps it.
//! - **Single flight, no false denials**: at most one lease in flight per (user, rule), and
//!   per (user, target) while the rule is unknown. Requests that find no token register what
//!   they need on it and wait; those it cannot serve while the source still had tokens ride a
//!   successor lease sized for all of them. A request is denied only when the source granted
//!   less than was asked, or by the denial cache.
//! - **Denial cache**: when the source has nothing left, the (user, rule) is denied locally
//!   until a token can exist again (what lightrate's own sources say, `retryAfterMs`; else
//!   `1 / refillRate`), without calls.
//! - **Refill-ahead**: a bucket in use that falls below two slow source latencies of demand
//!   (a high percentile of recent calls) leases the next batch in the background, so steady
//!   traffic does not wait for the source.
//! - **Token horizon**: a leased token can be spent for `token_horizon` (H, default 5 s) after
//!   its lease started, never later; so the fleet size drops out of the bound below.
//! - **Default-rule leasing**: targets that fall to the default rule are leased like any other
//!   (switchable to the SDKs' one call per request).
//! - **Bounded memory**: a bucket holds no token past its horizon, and one the slow path has
//!   not used for `bucket_ttl` (default 60 s) is removed by a sweep: memory is bounded by the
//!   live (user, rule) pairs.
//! - **Outage policy** ([`OnUnavailable`]) and a **circuit breaker**; 401/403/404 are
//!   configuration errors, logged as such and never counted as an outage. An answer that
//!   grants more than was asked is not believed (an unreadable answer).
//!
//! # Where the state lives
//!
//! | file | type | what it owns |
//! |---|---|---|
//! | `handle.rs` | [`Limiter`] | the public API, over one `Arc<Inner>` |
//! | `builder.rs` | [`LimiterBuilder`] | the knobs, and the limiter's constructors |
//! | `inner.rs` | `Inner` | the parts below, and what the paths of a request share (the denial cache, a call, counting, sweeping) |
//! | `hit.rs` | `Inner::check_local` | the local hit |
//! | `slow.rs` | `Inner::check_slow` | the slow path: the bucket again, a lease joined or started, the outage policy |
//! | `several.rs` | [`Limit`], [`Decisions`] | several limits in one decision, all or nothing: tokens given back, the source asked concurrently |
//! | `settings.rs` | `Settings` | every knob, set by [`LimiterBuilder`] and moved in whole; [`OnUnavailable`] |
//! | `routes.rs`, `maps.rs` | `Routes` | targets → rules (the map), the learned rules; how the hot maps are built |
//! | `buckets.rs`, `bucket.rs` | `Buckets`, `LocalBucket` | the (user, rule) buckets, inline or shared once hot; sweeps, the cap |
//! | `memo.rs` | (thread-locals) | each thread's memos of the last targets resolved and of its hot users' buckets |
//! | `learned.rs` | `Learned` | what a bucket learns: its demand, the others' take, the source's level |
//! | `sizing.rs` | `Sizing` | how big a lease is: a pure function of what the bucket learned |
//! | `lease.rs`, `flight.rs` | `Lease`, `Flights` | one call for a bucket's tokens and filing its answer; single flight |
//! | `upstream.rs`, `breaker.rs`, `latency.rs` | `Upstream` | the source, its circuit breaker, its recent latency |
//! | `counters.rs`, `stats.rs` | `Counters`, [`Stats`] | the one set of counters, per rule, that [`Stats`] and the metrics read |
//!
//! # Bounds
//!
//! The limiter never admits more than the source granted. Every token admitted at time t was
//! granted after t − H, so per (user, rule), in any window T, any number of processes admit at
//! most `burst + refill·(T + H)`. Leased tokens not spent within H are lost (under-admission).

mod breaker;
mod bucket;
mod buckets;
mod builder;
mod counters;
mod debts;
mod decision;
mod flight;
mod handle;
mod hit;
mod inner;
mod keys;
mod latency;
mod learned;
mod lease;
mod maps;
mod memo;
#[cfg(feature = "metrics")]
mod publish;
mod queues;
mod reserve;
mod routes;
mod settings;
mod several;
mod sizing;
mod slow;
mod stats;
mod upstream;
mod wait;

pub use self::breaker::BreakerState;
pub use self::builder::LimiterBuilder;
pub use self::decision::{Decision, DecisionSource, RuleSummary};
pub use self::handle::{BucketStatus, Limiter};
pub use self::reserve::{LocalReservation, OnDrop, Reservation, Settled, Settlement};
pub use self::settings::{
    OnUnavailable, DEFAULT_LEASE_SIZE, DEFAULT_MAX_LOCAL_BUCKETS, DEFAULT_TOKEN_HORIZON,
    MAX_LEASE_SIZE,
};
pub use self::several::{Decisions, Limit, INLINE_LIMITS};
pub use self::stats::Stats;

pub(crate) use self::keys::{same_bytes, IpProbe, PathProbe, Probe};
pub(crate) use self::several::{GrantedDecisions, OwnedLimit, Taken};

#[cfg(test)]
mod tests;
