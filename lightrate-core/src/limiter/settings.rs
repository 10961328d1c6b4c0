//! [`Settings`]: every knob of a limiter, set by [`LimiterBuilder`](super::LimiterBuilder)
//! and moved whole into the limiter; the outage policy and the knobs' public defaults.

use std::time::Duration;

use super::sizing::Sizing;
use crate::{Error, ErrorKind};

/// What a request gets when the token source cannot answer (timeout, network error, 5xx,
/// unreadable answer, circuit open) or rejects the configuration (401/403/404).
///
/// ```
/// use lightrate_core::OnUnavailable;
///
/// assert_eq!("deny".parse::<OnUnavailable>().unwrap(), OnUnavailable::Deny);
/// assert_eq!(OnUnavailable::default(), OnUnavailable::Allow);
/// assert!("maybe".parse::<OnUnavailable>().is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OnUnavailable {
    /// Let the request through (fail open): an outage of the rate limiter does not become an
    /// outage of the service. The default.
    #[default]
    Allow,
    /// Deny the request (fail closed); web adapters answer 503 with `Retry-After`.
    Deny,
    /// Return the source's error from [`Limiter::check`](crate::Limiter::check), for callers that decide themselves.
    Error,
}

impl std::str::FromStr for OnUnavailable {
    type Err = Error;

    /// `allow`, `deny` or `error`, in any case.
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "allow" => Ok(OnUnavailable::Allow),
            "deny" => Ok(OnUnavailable::Deny),
            "error" => Ok(OnUnavailable::Error),
            other => Err(Error::new(
                ErrorKind::Configuration,
                format!("the outage policy must be allow, deny or error, not {other:?}"),
            )),
        }
    }
}

/// The default cap of a lease: the most tokens one call to the source may ask for. Leases are
/// sized by demand and scarcity up to it; a lease of 10 000 covers 20 ms of a hot key at
/// 500 000 requests per second.
pub const DEFAULT_LEASE_SIZE: u64 = 10_000;
/// The largest lease cap.
pub const MAX_LEASE_SIZE: u64 = 1_000_000;
/// The default cap on live (user, rule) buckets: under 256 MB with short identifiers (the
/// `memory` bench measures a bucket, with what lease sizing learns of it: BENCHMARKS.md).
pub const DEFAULT_MAX_LOCAL_BUCKETS: usize = 1_000_000;

/// The default token horizon: how long a leased token can be spent after its lease started.
pub const DEFAULT_TOKEN_HORIZON: Duration = Duration::from_secs(5);

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

impl Settings {
    /// Whether a rule's tokens are leased into local buckets: every rule's, but the default
    /// rule's when it is asked for per request, as the SDKs do.
    pub(crate) fn leases(&self, is_default: bool) -> bool {
        !is_default || self.lease_default_rule
    }
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
