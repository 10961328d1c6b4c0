//! Counters a user can read.

use std::sync::atomic::{AtomicU64, Ordering};

use super::breaker::BreakerState;

/// A snapshot of a limiter's counters. No key material, no user identifiers.
///
/// A local hit touches no counter: `local_hits` is derived from the others (every leased
/// token is taken locally, taken by a request that waited for its lease, still held, or
/// lost), so it is exact when the limiter is quiet and approximate while requests run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Tokens taken from local buckets without a call (requests, when each costs one token).
    pub local_hits: u64,
    /// Calls made to the token source (leases, refill-ahead, per-request default-rule calls).
    pub source_calls: u64,
    /// Tokens the source granted into local buckets.
    pub leased_tokens: u64,
    /// Tokens the source granted straight to one request: probes that learn a new target's
    /// rule, and per-request default-rule calls.
    pub per_request_tokens: u64,
    /// Leased tokens lost because their bucket expired or was reset before they were used.
    pub expired_tokens: u64,
    /// Requests allowed after waiting for a call to the source.
    pub allowed_by_source: u64,
    /// Requests denied because the source granted nothing (or its lease ran out among
    /// concurrent waiters).
    pub denied_by_source: u64,
    /// Requests denied by the denial cache, without a call.
    pub denied_by_denial_cache: u64,
    /// Requests allowed because the source could not answer and the policy is `Allow`.
    pub allowed_unavailable: u64,
    /// Requests denied (or failed) because the source could not answer.
    pub denied_unavailable: u64,
    /// Failed calls that were outages: timeouts, network errors, 5xx, 429, unreadable answers.
    pub outage_errors: u64,
    /// Failed calls that were configuration errors: 401, 403, 404.
    pub configuration_errors: u64,
    /// Failed calls of any other kind (400, 422, ...).
    pub other_errors: u64,
    /// Live (user, rule) buckets.
    pub live_buckets: u64,
    /// Buckets forgotten to stay under the cap of live buckets
    /// ([`LimiterBuilder::max_buckets`](crate::LimiterBuilder::max_buckets)).
    pub evicted_buckets: u64,
    /// Targets in the target → rule cache.
    pub cached_targets: u64,
    /// Rules learned from the source.
    pub known_rules: u64,
    /// The circuit breaker's state.
    pub breaker: BreakerState,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) source_calls: AtomicU64,
    pub(crate) leased_tokens: AtomicU64,
    pub(crate) expired_tokens: AtomicU64,
    pub(crate) per_request_tokens: AtomicU64,
    /// Tokens taken from buckets by requests that waited for a lease.
    pub(crate) taken_after_lease: AtomicU64,
    pub(crate) allowed_by_source: AtomicU64,
    pub(crate) denied_by_source: AtomicU64,
    pub(crate) denied_by_denial_cache: AtomicU64,
    pub(crate) allowed_unavailable: AtomicU64,
    pub(crate) denied_unavailable: AtomicU64,
    pub(crate) outage_errors: AtomicU64,
    pub(crate) configuration_errors: AtomicU64,
    pub(crate) other_errors: AtomicU64,
    pub(crate) evicted_buckets: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

pub(crate) fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}
