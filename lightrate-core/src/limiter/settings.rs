//! [`Settings`]: every knob of a limiter, set by [`LimiterBuilder`](super::LimiterBuilder)
//! and moved whole into the limiter.

use std::time::Duration;

use super::builder::{OnUnavailable, DEFAULT_LEASE_SIZE, DEFAULT_MAX_LOCAL_BUCKETS};
use super::sizing::Sizing;
use super::DEFAULT_TOKEN_HORIZON;

/// The circuit breaker's knobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BreakerSettings {
    /// Consecutive outage failures that open the circuit.
    pub(crate) threshold: u32,
    /// How long it stays open.
    pub(crate) cooldown: Duration,
    /// After a configuration error: how long the source is not called (and how often the
    /// error is logged).
    pub(crate) configuration_backoff: Duration,
}

/// A limiter's knobs (the builder's documentation says what each does).
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// The lease cap, floor and token horizon.
    pub(crate) sizing: Sizing,
    /// How long a bucket the slow path has not used is kept (ms).
    pub(crate) bucket_ttl_ms: u64,
    /// How long a learned target → rule mapping is trusted (ms).
    pub(crate) rule_ttl_ms: u64,
    /// How often idle buckets and stale targets are swept (ms).
    pub(crate) sweep_interval_ms: u64,
    /// The most live buckets.
    pub(crate) max_buckets: usize,
    /// The most cached targets.
    pub(crate) max_cached_targets: usize,
    pub(crate) refill_ahead: bool,
    pub(crate) lease_default_rule: bool,
    pub(crate) on_unavailable: OnUnavailable,
    /// The limiter's own deadline for one call to the source, if any.
    pub(crate) source_timeout: Option<Duration>,
    pub(crate) breaker: BreakerSettings,
}

/// Whole milliseconds, at least 1.
pub(crate) fn millis_of(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            sizing: Sizing {
                cap: DEFAULT_LEASE_SIZE,
                floor: 1,
                horizon: DEFAULT_TOKEN_HORIZON,
            },
            bucket_ttl_ms: 60_000,
            rule_ttl_ms: 60_000,
            sweep_interval_ms: 10_000,
            max_buckets: DEFAULT_MAX_LOCAL_BUCKETS,
            max_cached_targets: 10_000,
            refill_ahead: true,
            lease_default_rule: true,
            on_unavailable: OnUnavailable::Allow,
            source_timeout: None,
            breaker: BreakerSettings {
                threshold: 5,
                cooldown: Duration::from_secs(5),
                configuration_backoff: Duration::from_secs(10),
            },
        }
    }
}
