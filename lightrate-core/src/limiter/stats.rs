//! Counters a user can read.

use super::breaker::BreakerState;
use super::counters::Counted;
use super::inner::Inner;

/// A snapshot of a limiter's counters. No key material, no user identifiers.
///
/// A local hit touches no counter: `local_hits` is derived from the others (every token put
/// in a local bucket is taken locally, still held, or lost), so it is exact when the limiter
/// is quiet and approximate while requests run. Stats and the `metrics` feature read the same
/// counters.
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

impl Stats {
    /// What `inner`'s counters and buckets say now.
    pub(super) fn of(inner: &Inner) -> Stats {
        let t = inner.counters.totals();
        let (held, live) = inner.buckets.held();
        let held: u64 = held.values().sum();
        let (cached_targets, known_rules) = inner.routes.counts();
        Stats {
            // Every token put in a bucket is taken locally, held, or lost: no counter on the
            // hot path.
            local_hits: (t.deposited + t.returned)
                .saturating_sub(held)
                .saturating_sub(t.expired),
            source_calls: t.calls,
            leased_tokens: t.deposited + t.served,
            per_request_tokens: t.per_request,
            expired_tokens: t.expired,
            allowed_by_source: t.decided(Counted::AllowedBySource),
            denied_by_source: t.decided(Counted::DeniedBySource)
                + t.decided(Counted::ShadowDeniedBySource),
            denied_by_denial_cache: t.decided(Counted::DeniedByCache)
                + t.decided(Counted::ShadowDeniedByCache),
            allowed_unavailable: t.decided(Counted::AllowedUnavailable),
            denied_unavailable: t.decided(Counted::DeniedUnavailable),
            outage_errors: t.outage_errors,
            configuration_errors: t.configuration_errors,
            other_errors: t.other_errors,
            live_buckets: live,
            evicted_buckets: t.evicted_buckets,
            cached_targets: cached_targets as u64,
            known_rules: known_rules as u64,
            breaker: inner.upstream.breaker_state(inner.clock.now()),
        }
    }
}
