//! [`LimiterBuilder`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::inner::Inner;
use super::settings::{millis_of, OnUnavailable, Settings, MAX_LEASE_SIZE};
use super::Limiter;
use crate::clock::{Clock, ClockHandle};
use crate::source::DynTokenSource;
use crate::TokenSource;

/// Builds a [`Limiter`]. See [`Limiter::builder`].
pub struct LimiterBuilder {
    source: Arc<dyn DynTokenSource>,
    clock: ClockHandle,
    settings: Settings,
}

impl fmt::Debug for LimiterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimiterBuilder")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Limiter {
    /// A limiter over `source` with default settings.
    pub fn new(source: impl TokenSource) -> Self {
        Self::builder(source).build()
    }

    /// A builder for a limiter over `source`.
    pub fn builder(source: impl TokenSource) -> LimiterBuilder {
        LimiterBuilder::new(Arc::new(source))
    }
}

impl LimiterBuilder {
    pub(super) fn new(source: Arc<dyn DynTokenSource>) -> Self {
        LimiterBuilder {
            source,
            clock: ClockHandle::system(),
            settings: Settings::default(),
        }
    }

    /// The clock (a [`ManualClock`](crate::ManualClock) in tests). Default: the system clock.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = ClockHandle::Other(Arc::new(clock));
        self
    }

    /// The cap of a lease: the most tokens one call to the source may ask for (the SDKs'
    /// `default_local_bucket_size`, there the size of every lease; here leases are sized by
    /// demand and scarcity up to it). Its environment variable is the SDKs' too,
    /// `LIGHTRATE_LOCAL_BUCKET_SIZE` ([`env_settings`](Self::env_settings)). Default
    /// [`DEFAULT_LEASE_SIZE`](crate::DEFAULT_LEASE_SIZE); at most [`MAX_LEASE_SIZE`](crate::MAX_LEASE_SIZE); 0 counts as 1. 1 makes one call per
    /// request, as the SDKs do with 1.
    ///
    /// A lower cap bounds what one process holds at the cost of calls: a hot key is served at
    /// most `cap / source latency` requests per second by one process without waiting.
    pub fn lease_size(mut self, tokens: u64) -> Self {
        self.settings.sizing.cap = tokens.clamp(1, MAX_LEASE_SIZE);
        self
    }

    /// The least a lease asks for when the source has room for it: no more than half of what
    /// the source is thought to have left, whatever the demand (so near the limit leases
    /// still shrink towards one request's cost). Default 1: leases are sized by demand and
    /// scarcity alone. A larger floor makes fewer calls for bursty traffic, at the cost of
    /// tokens that may expire unused; [`lease_size`](Self::lease_size) still caps it.
    pub fn min_lease_size(mut self, tokens: u64) -> Self {
        self.settings.sizing.floor = tokens.clamp(1, MAX_LEASE_SIZE);
        self
    }

    /// The token horizon H: how long a leased token can be spent after the call that leased
    /// it started; unspent, it is lost. Default [`DEFAULT_TOKEN_HORIZON`](crate::DEFAULT_TOKEN_HORIZON) (5 s); at least
    /// 10 ms.
    ///
    /// Per (user, rule), any number of processes admit at most `burst + refill·(T + H)` in
    /// any window T. A shorter horizon tightens that bound and loses more tokens when traffic
    /// stops; it should stay well above the source's latency.
    pub fn token_horizon(mut self, horizon: Duration) -> Self {
        self.settings.sizing.horizon = horizon.max(Duration::from_millis(10));
        self
    }

    /// How long a bucket that the slow path has not used (no lease, no denial) is kept, with
    /// its demand estimate and denial cache, before a sweep removes it. Default 60 s.
    pub fn bucket_ttl(mut self, ttl: Duration) -> Self {
        self.settings.bucket_ttl_ms = millis_of(ttl);
        self
    }

    /// How long a learned target → rule mapping (and a learned rule's matcher) is trusted
    /// before the source is asked again. Default 60 s.
    pub fn rule_ttl(mut self, ttl: Duration) -> Self {
        self.settings.rule_ttl_ms = millis_of(ttl);
        self
    }

    /// The most targets the target → rule cache holds (concrete paths are unbounded).
    /// Default 10 000.
    pub fn max_cached_targets(mut self, max: usize) -> Self {
        self.settings.max_cached_targets = max.max(1);
        self
    }

    /// Whether a bucket in use that falls below two slow source latencies of demand (a high
    /// percentile of recent calls) leases the next batch in the background. Default on (when
    /// a tokio runtime is running).
    pub fn refill_ahead(mut self, on: bool) -> Self {
        self.settings.refill_ahead = on;
        self
    }

    /// Whether targets that fall to the application's default rule are leased in batches
    /// like any other (default), or charged one call per request as the official SDKs do.
    pub fn lease_default_rule(mut self, on: bool) -> Self {
        self.settings.lease_default_rule = on;
        self
    }

    /// What requests get when the source cannot answer. Default [`OnUnavailable::Allow`].
    pub fn on_unavailable(mut self, policy: OnUnavailable) -> Self {
        self.settings.on_unavailable = policy;
        self
    }

    /// Opens the circuit after `failures` consecutive outage failures, for `cooldown`.
    /// Default 5 failures, 5 s.
    pub fn circuit_breaker(mut self, failures: u32, cooldown: Duration) -> Self {
        self.settings.breaker.threshold = failures.max(1);
        self.settings.breaker.cooldown = cooldown;
        self
    }

    /// After a configuration error (401/403/404), how long the source is not called (requests
    /// follow the outage policy), and how often the error is logged. Default 10 s.
    pub fn configuration_error_backoff(mut self, backoff: Duration) -> Self {
        self.settings.breaker.configuration_backoff = backoff;
        self
    }

    /// A deadline for one call to the source, enforced by the limiter (needs a tokio runtime
    /// with time enabled). Default none: [`LightRateClient`](crate::LightRateClient) has its
    /// own; set it for sources that do not.
    pub fn source_timeout(mut self, timeout: Duration) -> Self {
        self.settings.source_timeout = Some(timeout);
        self
    }

    /// The most live (user, rule) buckets (default [`DEFAULT_MAX_LOCAL_BUCKETS`](crate::DEFAULT_MAX_LOCAL_BUCKETS)). At the cap the
    /// limiter forgets buckets until 90% of it is used: idle ones first, then those holding no
    /// live token, and only then others, whose tokens are lost. Forgetting never admits
    /// anything: a forgotten user's next request asks the source again. Counted in
    /// [`Stats::evicted_buckets`](crate::Stats::evicted_buckets). At least 10 (a smaller
    /// value is taken as 10).
    pub fn max_buckets(mut self, max: usize) -> Self {
        self.settings.max_buckets = max.max(10);
        self
    }

    /// How often idle buckets and stale cache entries are swept away. Default 10 s.
    pub fn sweep_interval(mut self, interval: Duration) -> Self {
        self.settings.sweep_interval_ms = millis_of(interval);
        self
    }

    /// Builds the limiter.
    pub fn build(self) -> Limiter {
        Limiter {
            inner: Arc::new(Inner::new(self.source, self.clock, self.settings)),
        }
    }
}
