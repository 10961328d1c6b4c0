//! [`Limiter`]: local token buckets over any [`TokenSource`].
//!
//! The limiter leases tokens from the source in batches (`lease_size`, default 5) and keeps
//! them in local buckets, one per (user, rule), so that most requests never leave the process:
//!
//! - **Local hit**: a lock-free map lookup of the target's rule, one of the (user, rule)
//!   bucket, and one compare-and-swap. No lock, no allocation, no clock call (a cached
//!   millisecond clock serves expiry).
//! - **Target → rule cache**: exact targets first (an operation, or method + path), then the
//!   matchers of known rules for targets not seen yet; learned from the source's answers,
//!   expiring after `rule_ttl` (so rule changes on the server are picked up), bounded in size.
//! - **Single flight**: at most one lease in flight per (user, rule), and per (user, target)
//!   while the rule is unknown. Concurrent misses wait for it and share what it brings; those
//!   it cannot serve are denied, never admitted past what was granted, and never lease again.
//! - **Denial cache**: when the source grants nothing, the (user, rule) is denied locally until
//!   a token can exist again (`1 / refillRate`), without calls.
//! - **Refill-ahead**: a bucket in use that falls to its low-water mark leases the next batch
//!   in the background, so steady traffic does not wait for the source.
//! - **Default-rule leasing**: targets that fall to the default rule are leased like any other
//!   (switchable to the SDKs' one call per request).
//! - **Expiry**: a bucket idle for `bucket_ttl` (default 60 s) never answers again and is
//!   removed by a sweep; memory is bounded by the live (user, rule) pairs.
//! - **Outage policy** ([`OnUnavailable`]) and a **circuit breaker**; 401/403/404 are
//!   configuration errors, logged as such and never counted as an outage.
//!
//! # Bounds
//!
//! The limiter never admits more than the source granted. Per (user, rule), in any window T,
//! P processes admit at most `burst + refill·T + P·S` (S = lease size); tokens left in a
//! bucket that expires are lost (under-admission, at most S per expiry).

mod breaker;
mod bucket;
mod decision;
mod flight;
mod keys;
mod stats;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use papaya::{Compute, Operation};

pub use self::breaker::BreakerState;
pub use self::decision::{Decision, DecisionSource, RuleSummary};
pub use self::stats::Stats;

use self::breaker::{Breaker, Gate};
use self::bucket::{LocalBucket, Take};
use self::flight::{Flight, FlightGuard, Outcome};
use self::keys::{BucketKey, BucketRef, TargetKey, TargetRef};
use self::stats::{bump, read, Counters};
use crate::clock::{duration_to_nanos, Clock, SystemClock, Timestamp};
use crate::rules::CompiledRule;
use crate::source::DynTokenSource;
use crate::{
    ConsumeRequest, ConsumeTokensResponse, Error, ErrorKind, Rule, Target, TokenSource,
    MAX_USER_IDENTIFIER_BYTES,
};

type Hasher = foldhash::fast::RandomState;

/// What a request gets when the token source cannot answer (timeout, network error, 5xx,
/// unreadable answer, circuit open) or rejects the configuration (401/403/404).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OnUnavailable {
    /// Let the request through (fail open): an outage of the rate limiter does not become an
    /// outage of the service. The default.
    #[default]
    Allow,
    /// Deny the request (fail closed); web adapters answer 503 with `Retry-After`.
    Deny,
    /// Return the source's error from [`Limiter::check`], for callers that decide themselves.
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

/// Local token buckets over a [`TokenSource`]: what the web adapters ask for every request.
///
/// Cheap to clone: clones share the buckets (one limiter per process, shared by every worker).
///
/// ```
/// use lightrate_core::{EmbeddedSource, Limiter, RuleSet, Target};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lightrate_core::Error> {
/// let limiter = Limiter::builder(EmbeddedSource::new(RuleSet::demo()))
///     .lease_size(5)
///     .build();
/// let email = Target::operation("send_email"); // burst 10 on the source
/// let mut allowed = 0;
/// for _ in 0..15 {
///     if limiter.check("alice", &email).await?.is_allowed() {
///         allowed += 1;
///     }
/// }
/// assert_eq!(allowed, 10);
/// assert!(limiter.stats().source_calls <= 4);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

/// Builds a [`Limiter`]. See [`Limiter::builder`].
pub struct LimiterBuilder {
    source: Arc<dyn DynTokenSource>,
    clock: Arc<dyn Clock>,
    lease_size: u64,
    bucket_ttl: Duration,
    rule_ttl: Duration,
    max_cached_targets: usize,
    refill_ahead: bool,
    low_water_mark: Option<u64>,
    lease_default_rule: bool,
    on_unavailable: OnUnavailable,
    breaker_threshold: u32,
    breaker_cooldown: Duration,
    configuration_error_backoff: Duration,
    source_timeout: Option<Duration>,
    sweep_interval: Duration,
}

impl fmt::Debug for LimiterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimiterBuilder")
            .field("lease_size", &self.lease_size)
            .field("bucket_ttl", &self.bucket_ttl)
            .field("rule_ttl", &self.rule_ttl)
            .field("refill_ahead", &self.refill_ahead)
            .field("lease_default_rule", &self.lease_default_rule)
            .field("on_unavailable", &self.on_unavailable)
            .finish_non_exhaustive()
    }
}

/// The default number of tokens leased per call.
pub const DEFAULT_LEASE_SIZE: u64 = 5;
/// The largest lease size.
pub const MAX_LEASE_SIZE: u64 = 1_000_000;

impl LimiterBuilder {
    fn new(source: Arc<dyn DynTokenSource>) -> Self {
        LimiterBuilder {
            source,
            clock: Arc::new(SystemClock::new()),
            lease_size: DEFAULT_LEASE_SIZE,
            bucket_ttl: Duration::from_secs(60),
            rule_ttl: Duration::from_secs(60),
            max_cached_targets: 10_000,
            refill_ahead: true,
            low_water_mark: None,
            lease_default_rule: true,
            on_unavailable: OnUnavailable::Allow,
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(5),
            configuration_error_backoff: Duration::from_secs(10),
            source_timeout: None,
            sweep_interval: Duration::from_secs(10),
        }
    }

    /// The clock (a [`ManualClock`](crate::ManualClock) in tests). Default: the system clock.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Tokens leased per call (S). Default 5; at most [`MAX_LEASE_SIZE`]; 0 counts as 1.
    pub fn lease_size(mut self, tokens: u64) -> Self {
        self.lease_size = tokens.clamp(1, MAX_LEASE_SIZE);
        self
    }

    /// How long an unused bucket lives; its tokens are lost after. Default 60 s.
    pub fn bucket_ttl(mut self, ttl: Duration) -> Self {
        self.bucket_ttl = ttl;
        self
    }

    /// How long a learned target → rule mapping (and a learned rule's matcher) is trusted
    /// before the source is asked again. Default 60 s.
    pub fn rule_ttl(mut self, ttl: Duration) -> Self {
        self.rule_ttl = ttl;
        self
    }

    /// The most targets the target → rule cache holds (concrete paths are unbounded).
    /// Default 10 000.
    pub fn max_cached_targets(mut self, max: usize) -> Self {
        self.max_cached_targets = max.max(1);
        self
    }

    /// Whether a bucket in use that falls to its low-water mark leases the next batch in the
    /// background. Default on (when a tokio runtime is running).
    pub fn refill_ahead(mut self, on: bool) -> Self {
        self.refill_ahead = on;
        self
    }

    /// The low-water mark of refill-ahead. Default: half the lease size, rounded down.
    pub fn low_water_mark(mut self, tokens: u64) -> Self {
        self.low_water_mark = Some(tokens);
        self
    }

    /// Whether targets that fall to the application's default rule are leased in batches
    /// like any other (default), or charged one call per request as the official SDKs do.
    pub fn lease_default_rule(mut self, on: bool) -> Self {
        self.lease_default_rule = on;
        self
    }

    /// What requests get when the source cannot answer. Default [`OnUnavailable::Allow`].
    pub fn on_unavailable(mut self, policy: OnUnavailable) -> Self {
        self.on_unavailable = policy;
        self
    }

    /// Opens the circuit after `failures` consecutive outage failures, for `cooldown`.
    /// Default 5 failures, 5 s.
    pub fn circuit_breaker(mut self, failures: u32, cooldown: Duration) -> Self {
        self.breaker_threshold = failures.max(1);
        self.breaker_cooldown = cooldown;
        self
    }

    /// After a configuration error (401/403/404), how long the source is not called (requests
    /// follow the outage policy), and how often the error is logged. Default 10 s.
    pub fn configuration_error_backoff(mut self, backoff: Duration) -> Self {
        self.configuration_error_backoff = backoff;
        self
    }

    /// A deadline for one call to the source, enforced by the limiter (needs a tokio runtime
    /// with time enabled). Default none: [`LightRateClient`](crate::LightRateClient) has its
    /// own; set it for sources that do not.
    pub fn source_timeout(mut self, timeout: Duration) -> Self {
        self.source_timeout = Some(timeout);
        self
    }

    /// How often idle buckets and stale cache entries are swept away. Default 10 s.
    pub fn sweep_interval(mut self, interval: Duration) -> Self {
        self.sweep_interval = interval;
        self
    }

    /// Builds the limiter.
    pub fn build(self) -> Limiter {
        let collector = Arc::new(seize::Collector::new());
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        let low_water = self.low_water_mark.unwrap_or(self.lease_size / 2);
        Limiter {
            inner: Arc::new(Inner {
                source: self.source,
                clock: self.clock,
                lease_size: self.lease_size,
                bucket_ttl_ms: ms(self.bucket_ttl),
                rule_ttl_ms: ms(self.rule_ttl),
                max_cached_targets: self.max_cached_targets,
                refill_ahead: self.refill_ahead,
                low_water,
                lease_default_rule: self.lease_default_rule,
                on_unavailable: self.on_unavailable,
                source_timeout: self.source_timeout,
                sweep_interval_ms: ms(self.sweep_interval),
                targets: papaya::HashMap::builder()
                    .hasher(Hasher::default())
                    .shared_collector(collector.clone())
                    .build(),
                buckets: papaya::HashMap::builder()
                    .hasher(Hasher::default())
                    .shared_collector(collector)
                    .build(),
                rules: papaya::HashMap::default(),
                rule_slots: Mutex::new(HashMap::new()),
                next_slot: AtomicU32::new(0),
                pending: Mutex::new(HashMap::new()),
                breaker: Breaker::new(
                    self.breaker_threshold,
                    self.breaker_cooldown,
                    self.configuration_error_backoff,
                ),
                counters: Counters::default(),
                last_sweep_ms: AtomicU64::new(0),
                sweeping: AtomicBool::new(false),
            }),
        }
    }
}

/// A learned rule.
struct RuleEntry {
    id: Arc<str>,
    rule: Rule,
    compiled: CompiledRule,
    summary: RuleSummary,
    learned_ms: AtomicU64,
}

/// A learned target → rule mapping.
#[derive(Clone, Copy, Debug)]
struct TargetEntry {
    rule: RuleSummary,
    expires_ms: u64,
}

/// Where a flight is registered, so it can be unregistered when it lands.
enum FlightHome {
    Bucket(Arc<LocalBucket>),
    Pending(PendingKey),
}

type PendingKey = (Box<str>, TargetKey);

/// How much a lease asks for.
#[derive(Clone, Copy, Debug)]
enum Lease {
    /// A batch of `tokens` for the local bucket, started by a request costing `cost`.
    Batch { tokens: u64, cost: u64 },
    /// Just what one request costs, for that request (learns the target's rule).
    Probe(u64),
}

impl Lease {
    fn tokens(self) -> u64 {
        match self {
            Lease::Batch { tokens, .. } => tokens,
            Lease::Probe(cost) => cost,
        }
    }

    /// What the default rule is charged (`tokensRequestedForDefaultBucketMatch`): the batch
    /// when the default rule is leased, else one request's cost, as the SDKs do.
    fn default_match(self, lease_default_rule: bool) -> u64 {
        match self {
            Lease::Batch { tokens, .. } if lease_default_rule => tokens,
            Lease::Batch { cost, .. } | Lease::Probe(cost) => cost,
        }
    }
}

/// A lease that no runtime could take: driven by the request that started it.
type InlineLease = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

struct Inner {
    source: Arc<dyn DynTokenSource>,
    clock: Arc<dyn Clock>,
    lease_size: u64,
    bucket_ttl_ms: u64,
    rule_ttl_ms: u64,
    max_cached_targets: usize,
    refill_ahead: bool,
    low_water: u64,
    lease_default_rule: bool,
    on_unavailable: OnUnavailable,
    source_timeout: Option<Duration>,
    sweep_interval_ms: u64,
    /// Target → rule. Shares its epoch collector with `buckets`: one guard serves a hit.
    targets: papaya::HashMap<TargetKey, TargetEntry, Hasher>,
    buckets: papaya::HashMap<BucketKey, Arc<LocalBucket>, Hasher>,
    /// Rule slot → rule.
    rules: papaya::HashMap<u32, Arc<RuleEntry>>,
    /// Rule id → slot.
    rule_slots: Mutex<HashMap<String, u32>>,
    next_slot: AtomicU32,
    /// Leases in flight for targets whose rule is not known yet, per (user, target).
    pending: Mutex<HashMap<PendingKey, Arc<Flight>>>,
    breaker: Breaker,
    counters: Counters,
    last_sweep_ms: AtomicU64,
    sweeping: AtomicBool,
}

fn millis(t: Timestamp) -> u64 {
    t.as_nanos() / 1_000_000
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A bucket's state, as [`Limiter::bucket_statuses`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BucketStatus {
    /// Whose bucket.
    pub user_identifier: String,
    /// The rule's id.
    pub rule_id: String,
    /// Tokens held locally.
    pub tokens: u64,
    /// Time since the bucket was last used.
    pub idle_for: Duration,
    /// Whether it is past its TTL (it will not answer and will be removed).
    pub expired: bool,
    /// When denied by the denial cache: for how much longer.
    pub denied_for: Option<Duration>,
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

    /// Decides without calling the source, when it can: `Some` for a local hit or a denial
    /// from the denial cache, `None` when the source must be asked
    /// ([`check_with_source`](Self::check_with_source)).
    ///
    /// This is the hot path: it neither locks nor allocates nor reads the system clock.
    #[inline]
    pub fn check_local(&self, user: &str, target: &Target<'_>, cost: u64) -> Option<Decision> {
        let inner = &*self.inner;
        let now_ms = millis(inner.clock.coarse_now());
        let guard = inner.buckets.guard();
        let entry = inner.targets.get(&TargetRef(target), &guard)?;
        if now_ms >= entry.expires_ms {
            return None;
        }
        let key = BucketRef {
            user,
            slot: entry.rule.slot,
        };
        let bucket = inner.buckets.get(&key, &guard)?;
        match bucket.try_take(cost.max(1), now_ms, inner.bucket_ttl_ms) {
            Take::Taken(left) => {
                if inner.refill_ahead
                    && left <= inner.low_water
                    && left + cost.max(1) > inner.low_water
                {
                    self.inner.refill_ahead(user, bucket);
                }
                Some(Decision::local(
                    left,
                    bucket.source_remaining(),
                    bucket.rule,
                ))
            }
            Take::Empty => inner.denied_locally(bucket),
            Take::Expired => None,
        }
    }

    /// Decides, calling the source when needed. The future owns its arguments, so it can be
    /// stored or spawned; it tries the local bucket again first.
    ///
    /// `Err` only when the source failed and the policy is [`OnUnavailable::Error`], or for
    /// an unusable user identifier (blank or over 1024 bytes).
    pub fn check_with_source(
        &self,
        user: impl Into<Box<str>>,
        target: Target<'static>,
        cost: u64,
    ) -> impl Future<Output = Result<Decision, Error>> + Send + 'static {
        let inner = self.inner.clone();
        let user = user.into();
        async move { inner.check_slow(user, target, cost.max(1)).await }
    }

    /// Decides for one token: locally when it can, else with the source.
    pub async fn check(&self, user: &str, target: &Target<'_>) -> Result<Decision, Error> {
        self.check_cost(user, target, 1).await
    }

    /// Decides for `cost` tokens (a route that costs more than one).
    pub async fn check_cost(
        &self,
        user: &str,
        target: &Target<'_>,
        cost: u64,
    ) -> Result<Decision, Error> {
        match self.check_local(user, target, cost) {
            Some(decision) => Ok(decision),
            None => {
                self.check_with_source(user, target.clone().into_owned(), cost)
                    .await
            }
        }
    }

    /// The policy for an unavailable source.
    pub fn on_unavailable(&self) -> OnUnavailable {
        self.inner.on_unavailable
    }

    /// The id of a rule a decision names.
    pub fn rule_id(&self, rule: &RuleSummary) -> Option<Arc<str>> {
        let guard = self.inner.rules.guard();
        self.inner
            .rules
            .get(&rule.slot, &guard)
            .map(|entry| entry.id.clone())
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        let inner = &*self.inner;
        let c = &inner.counters;
        let guard = inner.buckets.guard();
        let mut hits = read(&c.retired_hits);
        let mut live = 0;
        for (_, bucket) in inner.buckets.iter(&guard) {
            hits += bucket.hits();
            live += 1;
        }
        Stats {
            local_hits: hits,
            source_calls: read(&c.source_calls),
            leased_tokens: read(&c.leased_tokens),
            expired_tokens: read(&c.expired_tokens),
            per_request_tokens: read(&c.per_request_tokens),
            allowed_by_source: read(&c.allowed_by_source),
            denied_by_source: read(&c.denied_by_source),
            denied_by_denial_cache: read(&c.denied_by_denial_cache),
            allowed_unavailable: read(&c.allowed_unavailable),
            denied_unavailable: read(&c.denied_unavailable),
            outage_errors: read(&c.outage_errors),
            configuration_errors: read(&c.configuration_errors),
            other_errors: read(&c.other_errors),
            live_buckets: live,
            cached_targets: inner.targets.len() as u64,
            known_rules: inner.rules.len() as u64,
            breaker: inner.breaker.state(inner.clock.now()),
        }
    }

    /// Every live bucket.
    pub fn bucket_statuses(&self) -> Vec<BucketStatus> {
        let inner = &*self.inner;
        let now = inner.clock.now();
        let now_ms = millis(now);
        let guard = inner.buckets.guard();
        let rules = inner.rules.guard();
        inner
            .buckets
            .iter(&guard)
            .filter(|(_, b)| !b.is_dead())
            .map(|(key, b)| {
                let idle_ms = now_ms.saturating_sub(b.last_used_ms());
                let until = b.denied_until();
                BucketStatus {
                    user_identifier: key.user.to_string(),
                    rule_id: inner
                        .rules
                        .get(&key.slot, &rules)
                        .map(|e| e.id.to_string())
                        .unwrap_or_default(),
                    tokens: b.tokens(),
                    idle_for: Duration::from_millis(idle_ms),
                    expired: idle_ms >= inner.bucket_ttl_ms,
                    denied_for: (until > now.as_nanos())
                        .then(|| Duration::from_nanos(until - now.as_nanos())),
                }
            })
            .collect()
    }

    /// Removes idle buckets and stale cache entries now (this also happens on its own).
    pub fn sweep(&self) {
        self.inner.sweep();
    }

    /// Removes every local bucket; their tokens are lost (counted in `expired_tokens`).
    /// Learned rules and the target cache are kept.
    pub fn reset(&self) {
        let inner = &*self.inner;
        let guard = inner.buckets.guard();
        for (_, bucket) in inner.buckets.iter(&guard) {
            bump(&inner.counters.expired_tokens, bucket.kill());
            bump(&inner.counters.retired_hits, bucket.hits());
        }
        inner.buckets.clear(&guard);
    }
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        f.debug_struct("Limiter")
            .field("lease_size", &inner.lease_size)
            .field("bucket_ttl_ms", &inner.bucket_ttl_ms)
            .field("rule_ttl_ms", &inner.rule_ttl_ms)
            .field("refill_ahead", &inner.refill_ahead)
            .field("low_water", &inner.low_water)
            .field("lease_default_rule", &inner.lease_default_rule)
            .field("on_unavailable", &inner.on_unavailable)
            .field("live_buckets", &inner.buckets.len())
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// The denial cache: `Some` while no token can exist for this bucket yet.
    fn denied_locally(&self, bucket: &LocalBucket) -> Option<Decision> {
        let until = bucket.denied_until();
        if until == 0 {
            return None;
        }
        let now = self.clock.now();
        if now.as_nanos() >= until {
            return None;
        }
        bucket.touch(millis(now));
        bump(&self.counters.denied_by_denial_cache, 1);
        Some(Decision::denied(
            DecisionSource::DenialCache,
            Duration::from_nanos(until - now.as_nanos()),
            bucket.source_remaining(),
            bucket.rule,
        ))
    }

    /// Starts a background lease for a bucket that fell to its low-water mark.
    #[cold]
    fn refill_ahead(self: &Arc<Self>, user: &str, bucket: &Arc<LocalBucket>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if let Gate::Blocked { .. } = self.breaker.gate(self.clock.now()) {
            return;
        }
        let flight = {
            let mut slot = bucket.flight_slot();
            if slot.as_ref().is_some_and(|f| !f.is_done()) {
                return;
            }
            let flight = Flight::new();
            *slot = Some(flight.clone());
            flight
        };
        let lease = self.clone().lease(
            user.into(),
            bucket.lease_target.clone(),
            Lease::Batch {
                tokens: self.lease_size,
                cost: 1,
            },
            FlightGuard::new(flight),
            FlightHome::Bucket(bucket.clone()),
        );
        runtime.spawn(lease);
    }

    async fn check_slow(
        self: Arc<Self>,
        user: Box<str>,
        target: Target<'static>,
        cost: u64,
    ) -> Result<Decision, Error> {
        if user.trim().is_empty() || user.len() > MAX_USER_IDENTIFIER_BYTES {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "the user identifier must be non-blank and at most 1024 bytes",
            ));
        }
        self.maybe_sweep();
        let mut waited = false;
        // Rules can change under us (a lease answers with another rule than the cache said);
        // a few rounds settle it, and waiting for a lease never leads to a second lease.
        for _ in 0..4 {
            let now = self.clock.now();
            let now_ms = millis(now);
            let Some(rule) = self.resolve(&target, now_ms) else {
                let key: PendingKey = (user.clone(), TargetKey::from_target(&target));
                let (flight, inline) = {
                    let mut pending = lock(&self.pending);
                    match pending.get(&key) {
                        Some(flight) if !flight.is_done() => (flight.clone(), None),
                        _ => {
                            if let Gate::Blocked { error, retry_after } = self.breaker.gate(now) {
                                drop(pending);
                                return self.unavailable(error, retry_after);
                            }
                            // A user who already holds tokens gets a probe that charges
                            // only this request: leasing a batch on top would charge the
                            // user for tokens that may never be used (a stream of new
                            // concrete paths under one rule).
                            let size = if self.holds_tokens(&user, cost, now_ms) {
                                Lease::Probe(cost)
                            } else {
                                Lease::Batch {
                                    tokens: self.lease_size.max(cost),
                                    cost,
                                }
                            };
                            let flight = Flight::new();
                            pending.insert(key.clone(), flight.clone());
                            let target = Arc::new(key.1.clone());
                            let home = FlightHome::Pending(key);
                            let inline = self.start(user.clone(), target, size, &flight, home);
                            (flight, inline)
                        }
                    }
                };
                if let Some(lease) = inline {
                    lease.await;
                }
                match self.after_flight(&user, &flight, cost).await {
                    Some(result) => return result,
                    None => {
                        waited = true;
                        continue;
                    }
                }
            };
            if rule.is_default && !self.lease_default_rule {
                return self.per_request(&user, &target, cost, now).await;
            }
            let bucket = self.bucket(&user, rule, &target, now_ms);
            match bucket.try_take(cost, now_ms, self.bucket_ttl_ms) {
                Take::Taken(left) => {
                    return Ok(Decision::local(
                        left,
                        bucket.source_remaining(),
                        bucket.rule,
                    ));
                }
                Take::Expired => {
                    self.retire(&user, &bucket);
                    continue;
                }
                Take::Empty => {}
            }
            if let Some(decision) = self.denied_locally(&bucket) {
                return Ok(decision);
            }
            if waited {
                // Our lease was shared out before we got a token: never lease twice.
                return Ok(self.shared_out(&bucket));
            }
            let (flight, inline) = {
                let mut slot = bucket.flight_slot();
                match slot.as_ref() {
                    Some(flight) if !flight.is_done() => (flight.clone(), None),
                    _ => {
                        if let Gate::Blocked { error, retry_after } = self.breaker.gate(now) {
                            drop(slot);
                            return self.unavailable(error, retry_after);
                        }
                        let flight = Flight::new();
                        *slot = Some(flight.clone());
                        drop(slot);
                        let home = FlightHome::Bucket(bucket.clone());
                        let target = bucket.lease_target.clone();
                        let size = Lease::Batch {
                            tokens: self.lease_size.max(cost),
                            cost,
                        };
                        let inline = self.start(user.clone(), target, size, &flight, home);
                        (flight, inline)
                    }
                }
            };
            if let Some(lease) = inline {
                lease.await;
            }
            match self.after_flight(&user, &flight, cost).await {
                Some(result) => return result,
                None => waited = true,
            }
        }
        self.unavailable(
            Error::new(
                ErrorKind::Unavailable,
                "the source's rules kept changing during this request",
            ),
            Duration::from_secs(1),
        )
    }

    /// What a request that waited for `flight` gets; `None` to go round again (a per-request
    /// grant someone else claimed).
    async fn after_flight(
        &self,
        user: &str,
        flight: &Flight,
        cost: u64,
    ) -> Option<Result<Decision, Error>> {
        match flight.wait().await {
            Outcome::Leased {
                rule,
                granted,
                source_remaining,
                retry_after,
            } => {
                let now_ms = millis(self.clock.coarse_now());
                let guard = self.buckets.guard();
                let key = BucketRef {
                    user,
                    slot: rule.slot,
                };
                let taken = self
                    .buckets
                    .get(&key, &guard)
                    .map(|b| (b.take_after_lease(cost, now_ms, self.bucket_ttl_ms), b));
                Some(Ok(match taken {
                    Some((Take::Taken(left), bucket)) => {
                        bump(&self.counters.allowed_by_source, 1);
                        Decision {
                            source: DecisionSource::TokenSource,
                            ..Decision::local(left, bucket.source_remaining(), bucket.rule)
                        }
                    }
                    _ => {
                        bump(&self.counters.denied_by_source, 1);
                        let retry_after = if granted == 0 {
                            retry_after
                        } else if source_remaining >= cost {
                            Duration::ZERO
                        } else {
                            time_for(rule, cost, self.bucket_ttl_ms)
                        };
                        Decision::denied(
                            DecisionSource::TokenSource,
                            retry_after,
                            source_remaining,
                            rule,
                        )
                    }
                }))
            }
            Outcome::PerRequest {
                rule,
                granted,
                source_remaining,
                retry_after,
            } => {
                if granted >= cost && flight.claim() {
                    return Some(Ok(self.per_request_decision(
                        rule,
                        granted,
                        cost,
                        source_remaining,
                        retry_after,
                    )));
                }
                // Now that the rule is known, tokens already held for it serve the request.
                let now_ms = millis(self.clock.coarse_now());
                let guard = self.buckets.guard();
                let key = BucketRef {
                    user,
                    slot: rule.slot,
                };
                if let Some(bucket) = self.buckets.get(&key, &guard) {
                    if let Take::Taken(left) =
                        bucket.take_after_lease(cost, now_ms, self.bucket_ttl_ms)
                    {
                        bump(&self.counters.allowed_by_source, 1);
                        return Some(Ok(Decision {
                            source: DecisionSource::TokenSource,
                            ..Decision::local(left, bucket.source_remaining(), bucket.rule)
                        }));
                    }
                }
                if granted >= cost {
                    // Someone else claimed the grant: go round and ask for ourselves.
                    return None;
                }
                Some(Ok(self.per_request_decision(
                    rule,
                    granted,
                    cost,
                    source_remaining,
                    retry_after,
                )))
            }
            Outcome::Failed(error) => {
                let retry_after = error.retry_after().unwrap_or(Duration::from_secs(1));
                Some(self.unavailable(error, retry_after))
            }
        }
    }

    fn per_request_decision(
        &self,
        rule: RuleSummary,
        granted: u64,
        cost: u64,
        source_remaining: u64,
        retry_after: Duration,
    ) -> Decision {
        if granted >= cost {
            bump(&self.counters.allowed_by_source, 1);
            Decision {
                source: DecisionSource::TokenSource,
                ..Decision::local(0, source_remaining, rule)
            }
        } else {
            bump(&self.counters.denied_by_source, 1);
            Decision::denied(
                DecisionSource::TokenSource,
                retry_after,
                source_remaining,
                rule,
            )
        }
    }

    /// A request that waited for a lease that others used up.
    fn shared_out(&self, bucket: &LocalBucket) -> Decision {
        bump(&self.counters.denied_by_source, 1);
        let remaining = bucket.source_remaining();
        let retry_after = if remaining > 0 {
            Duration::ZERO
        } else {
            time_for(bucket.rule, 1, self.bucket_ttl_ms)
        };
        Decision::denied(
            DecisionSource::TokenSource,
            retry_after,
            remaining,
            bucket.rule,
        )
    }

    /// The SDKs' behaviour for the default rule: one call per request, no local bucket.
    async fn per_request(
        &self,
        user: &str,
        target: &Target<'_>,
        cost: u64,
        now: Timestamp,
    ) -> Result<Decision, Error> {
        if let Gate::Blocked { error, retry_after } = self.breaker.gate(now) {
            return self.unavailable(error, retry_after);
        }
        match self.call(user, target, cost, Some(cost)).await {
            Ok(answer) => {
                let now_ms = millis(self.clock.now());
                let rule = self.learn(&answer.rule, now_ms);
                self.remember(target, rule, now_ms);
                let granted = answer.tokens_consumed.min(cost);
                bump(&self.counters.per_request_tokens, granted);
                let retry_after = time_for(rule, cost, self.bucket_ttl_ms);
                Ok(self.per_request_decision(
                    rule,
                    granted,
                    cost,
                    answer.tokens_remaining,
                    retry_after,
                ))
            }
            Err(error) => {
                let retry_after = error.retry_after().unwrap_or(Duration::from_secs(1));
                self.unavailable(error, retry_after)
            }
        }
    }

    /// Starts a lease: spawned on the current tokio runtime when there is one (so that a
    /// cancelled request does not cancel what other requests wait for); without a runtime, the
    /// lease is returned for the caller to drive.
    #[must_use]
    fn start(
        self: &Arc<Self>,
        user: Box<str>,
        target: Arc<TargetKey>,
        size: Lease,
        flight: &Arc<Flight>,
        home: FlightHome,
    ) -> Option<InlineLease> {
        let lease = self
            .clone()
            .lease(user, target, size, FlightGuard::new(flight.clone()), home);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(lease);
                None
            }
            Err(_) => Some(Box::pin(lease)),
        }
    }

    /// One lease: ask the source for tokens, learn the rule, file the grant, wake waiters.
    async fn lease(
        self: Arc<Self>,
        user: Box<str>,
        target: Arc<TargetKey>,
        size: Lease,
        guard: FlightGuard,
        home: FlightHome,
    ) {
        let tokens = size.tokens();
        let default_match = size.default_match(self.lease_default_rule);
        let target_ref = target.as_target();
        let outcome = match self
            .call(&user, &target_ref, tokens, Some(default_match))
            .await
        {
            Err(error) => Outcome::Failed(error),
            Ok(mut answer) => {
                // A server that does not grant partially answers 0 while it still has some:
                // ask again for what remains.
                let retry = matches!(size, Lease::Batch { .. })
                    && answer.tokens_consumed == 0
                    && answer.tokens_remaining > 0
                    && answer.tokens_remaining < tokens
                    && (!answer.rule.is_default || self.lease_default_rule);
                if retry {
                    let again = answer.tokens_remaining;
                    if let Ok(second) = self.call(&user, &target_ref, again, Some(again)).await {
                        answer = second;
                        answer.tokens_consumed = answer.tokens_consumed.min(again);
                    }
                }
                self.file(&user, &target, size, answer)
            }
        };
        match &home {
            FlightHome::Bucket(bucket) => {
                let mut slot = bucket.flight_slot();
                if slot
                    .as_ref()
                    .is_some_and(|f| f.is_done() || Arc::ptr_eq(f, guard.flight()))
                {
                    *slot = None;
                }
            }
            FlightHome::Pending(key) => {
                let mut pending = lock(&self.pending);
                if pending
                    .get(key)
                    .is_some_and(|f| Arc::ptr_eq(f, guard.flight()))
                {
                    pending.remove(key);
                }
            }
        }
        guard.finish(outcome);
    }

    /// Whether `user` holds at least `cost` tokens in any live bucket.
    fn holds_tokens(&self, user: &str, cost: u64, now_ms: u64) -> bool {
        let rules = self.rules.guard();
        let guard = self.buckets.guard();
        self.rules.iter(&rules).any(|(slot, _)| {
            self.buckets
                .get(&BucketRef { user, slot: *slot }, &guard)
                .is_some_and(|b| {
                    !b.is_dead()
                        && b.tokens() >= cost
                        && now_ms.saturating_sub(b.last_used_ms()) < self.bucket_ttl_ms
                })
        })
    }

    /// Files a lease's answer: learns the rule and the target, deposits the tokens, sets the
    /// denial cache.
    fn file(
        &self,
        user: &str,
        target: &Arc<TargetKey>,
        size: Lease,
        answer: ConsumeTokensResponse,
    ) -> Outcome {
        let now = self.clock.now();
        let now_ms = millis(now);
        let rule = self.learn(&answer.rule, now_ms);
        self.remember(&target.as_target(), rule, now_ms);
        let granted = answer.tokens_consumed.min(size.tokens());
        let retry_after = time_for(rule, 1, self.bucket_ttl_ms);
        // The SDKs' way for the default rule: no local bucket at all.
        let sdk_default = rule.is_default && !self.lease_default_rule;
        if sdk_default || matches!(size, Lease::Probe(_)) {
            bump(&self.counters.per_request_tokens, granted);
            if granted == 0 && !sdk_default {
                let bucket = self.bucket(user, rule, &target.as_target(), now_ms);
                bucket.set_source_remaining(answer.tokens_remaining);
                bucket.set_denied_until((now + retry_after).as_nanos().max(1));
            }
            return Outcome::PerRequest {
                rule,
                granted,
                source_remaining: answer.tokens_remaining,
                retry_after,
            };
        }
        let mut bucket = self.bucket(user, rule, &target.as_target(), now_ms);
        let mut deposit = granted;
        loop {
            match bucket.deposit(deposit, now_ms) {
                Ok(dropped) => {
                    bump(&self.counters.expired_tokens, dropped);
                    break;
                }
                Err(back) => {
                    // Swept between lookup and deposit: file into a fresh bucket.
                    deposit = back;
                    self.retire(user, &bucket);
                    bucket = self.bucket(user, rule, &target.as_target(), now_ms);
                }
            }
        }
        bump(&self.counters.leased_tokens, granted);
        bucket.set_source_remaining(answer.tokens_remaining);
        if granted == 0 {
            let until = now + retry_after;
            bucket.set_denied_until(until.as_nanos().max(1));
        } else {
            bucket.set_denied_until(0);
        }
        Outcome::Leased {
            rule,
            granted,
            source_remaining: answer.tokens_remaining,
            retry_after,
        }
    }

    /// One call to the source, counted, with the breaker told how it went.
    async fn call(
        &self,
        user: &str,
        target: &Target<'_>,
        tokens: u64,
        default_match: Option<u64>,
    ) -> Result<ConsumeTokensResponse, Error> {
        bump(&self.counters.source_calls, 1);
        let mut request = ConsumeRequest::new(user, target, tokens);
        request.tokens_requested_for_default_bucket_match = default_match;
        let call = self.source.consume_tokens_boxed(request);
        let result = match self.source_timeout {
            Some(limit) => match tokio::time::timeout(limit, call).await {
                Ok(result) => result,
                Err(_) => Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "the token source did not answer within {} ms",
                        limit.as_millis()
                    ),
                )),
            },
            None => call.await,
        };
        let now = self.clock.now();
        match result {
            Ok(answer) if answer.tokens_consumed > tokens => {
                // An answer that contradicts the request cannot be trusted at all.
                let error = Error::new(
                    ErrorKind::Decode,
                    format!(
                        "the token source granted {} tokens for a request of {tokens}",
                        answer.tokens_consumed
                    ),
                );
                self.failed(&error, now);
                Err(error)
            }
            Ok(answer) => {
                self.breaker.success();
                Ok(answer)
            }
            Err(error) => {
                self.failed(&error, now);
                Err(error)
            }
        }
    }

    /// Counts and reports a failed call.
    fn failed(&self, error: &Error, now: Timestamp) {
        let counter = if error.is_configuration() {
            &self.counters.configuration_errors
        } else if error.is_outage() {
            &self.counters.outage_errors
        } else {
            &self.counters.other_errors
        };
        bump(counter, 1);
        if !error.is_configuration() {
            tracing::debug!(target: "lightrate::limiter", error = %error, "token source call failed");
        }
        self.breaker.failure(error, now);
    }

    /// The outage policy.
    fn unavailable(&self, error: Error, retry_after: Duration) -> Result<Decision, Error> {
        match self.on_unavailable {
            OnUnavailable::Allow => {
                bump(&self.counters.allowed_unavailable, 1);
                Ok(Decision::unavailable(true, error.kind(), Duration::ZERO))
            }
            OnUnavailable::Deny => {
                bump(&self.counters.denied_unavailable, 1);
                Ok(Decision::unavailable(false, error.kind(), retry_after))
            }
            OnUnavailable::Error => {
                bump(&self.counters.denied_unavailable, 1);
                Err(error)
            }
        }
    }

    /// The rule for `target`, if known: the exact cache, else a single fresh rule whose
    /// matcher matches it.
    fn resolve(&self, target: &Target<'_>, now_ms: u64) -> Option<RuleSummary> {
        {
            let guard = self.buckets.guard();
            if let Some(entry) = self.targets.get(&TargetRef(target), &guard) {
                if now_ms < entry.expires_ms {
                    return Some(entry.rule);
                }
            }
        }
        let guard = self.rules.guard();
        let mut found: Option<RuleSummary> = None;
        for (_, entry) in self.rules.iter(&guard) {
            let fresh = now_ms < entry.learned_ms.load(Ordering::Relaxed) + self.rule_ttl_ms;
            let matches = if entry.rule.is_default {
                matches!(target, Target::Default)
            } else {
                entry.compiled.matches(target)
            };
            if fresh && matches {
                if found.is_some() {
                    // Two known rules match: only the source knows which comes first.
                    return None;
                }
                found = Some(entry.summary);
            }
        }
        if let Some(rule) = found {
            self.remember(target, rule, now_ms);
        }
        found
    }

    /// Caches target → rule.
    fn remember(&self, target: &Target<'_>, rule: RuleSummary, now_ms: u64) {
        let guard = self.buckets.guard();
        if self.targets.len() >= self.max_cached_targets {
            self.trim_targets(now_ms);
        }
        self.targets.insert(
            TargetKey::from_target(target),
            TargetEntry {
                rule,
                expires_ms: now_ms.saturating_add(self.rule_ttl_ms),
            },
            &guard,
        );
    }

    /// Makes room in the target cache: stale entries first, then a tenth of the rest.
    #[cold]
    fn trim_targets(&self, now_ms: u64) {
        let guard = self.buckets.guard();
        self.targets.retain(|_, e| now_ms < e.expires_ms, &guard);
        let excess = (self.targets.len() + 1).saturating_sub(self.max_cached_targets);
        if excess > 0 {
            let drop = excess.max(self.max_cached_targets / 10);
            let victims: Vec<TargetKey> = self
                .targets
                .iter(&guard)
                .take(drop)
                .map(|(k, _)| k.clone())
                .collect();
            for key in victims {
                self.targets.remove(&key, &guard);
            }
        }
    }

    /// Learns a rule from an answer: its slot, refreshed.
    fn learn(&self, rule: &Rule, now_ms: u64) -> RuleSummary {
        let mut slots = lock(&self.rule_slots);
        let guard = self.rules.guard();
        let slot = match slots.get(&rule.id) {
            Some(&slot) => {
                if let Some(entry) = self.rules.get(&slot, &guard) {
                    if entry.rule == *rule {
                        entry.learned_ms.fetch_max(now_ms, Ordering::Relaxed);
                        return entry.summary;
                    }
                }
                slot
            }
            None => {
                let slot = self.next_slot.fetch_add(1, Ordering::Relaxed);
                slots.insert(rule.id.clone(), slot);
                slot
            }
        };
        let summary = RuleSummary {
            slot,
            burst_rate: rule.burst_rate,
            refill_rate: rule.refill_rate,
            is_default: rule.is_default,
        };
        self.rules.insert(
            slot,
            Arc::new(RuleEntry {
                id: rule.id.as_str().into(),
                rule: rule.clone(),
                compiled: CompiledRule::new(rule.clone()),
                summary,
                learned_ms: AtomicU64::new(now_ms),
            }),
            &guard,
        );
        summary
    }

    /// The live bucket of (user, rule), created empty if there is none.
    fn bucket(
        &self,
        user: &str,
        rule: RuleSummary,
        target: &Target<'_>,
        now_ms: u64,
    ) -> Arc<LocalBucket> {
        let guard = self.buckets.guard();
        let key = BucketRef {
            user,
            slot: rule.slot,
        };
        if let Some(bucket) = self.buckets.get(&key, &guard) {
            // An idle bucket past its TTL must not be revived by a deposit: retire it.
            match bucket.kill_if_idle(now_ms, self.bucket_ttl_ms) {
                None => return bucket.clone(),
                Some(lost) => {
                    bump(&self.counters.expired_tokens, lost);
                    self.remove_dead(user, bucket);
                }
            }
        }
        let fresh = Arc::new(LocalBucket::new(
            rule,
            Arc::new(TargetKey::from_target(target)),
            now_ms,
        ));
        let computed = self.buckets.compute(
            BucketKey {
                user: user.into(),
                slot: rule.slot,
            },
            |existing| match existing {
                Some((_, bucket)) if !bucket.is_dead() => Operation::Abort(bucket.clone()),
                _ => Operation::Insert(fresh.clone()),
            },
            &guard,
        );
        match computed {
            Compute::Aborted(bucket) => bucket,
            _ => fresh,
        }
    }

    /// Removes `bucket` from the map if it is still the one there, counting what it loses.
    fn retire(&self, user: &str, bucket: &Arc<LocalBucket>) {
        let lost = bucket.kill();
        bump(&self.counters.expired_tokens, lost);
        self.remove_dead(user, bucket);
    }

    /// Removes a dead `bucket` from the map if it is still the one there.
    fn remove_dead(&self, user: &str, bucket: &Arc<LocalBucket>) {
        let guard = self.buckets.guard();
        let removed = self.buckets.compute(
            BucketKey {
                user: user.into(),
                slot: bucket.rule.slot,
            },
            |existing| match existing {
                Some((_, current)) if Arc::ptr_eq(current, bucket) => Operation::Remove,
                _ => Operation::Abort(()),
            },
            &guard,
        );
        if matches!(removed, Compute::Removed(..)) {
            bump(&self.counters.retired_hits, bucket.hits());
        }
    }

    /// Sweeps when one is due: inline for small maps, on the blocking pool for large ones.
    fn maybe_sweep(self: &Arc<Self>) {
        let now_ms = millis(self.clock.coarse_now());
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        if now_ms < last.saturating_add(self.sweep_interval_ms) {
            return;
        }
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        self.last_sweep_ms.store(now_ms, Ordering::Relaxed);
        let large = self.buckets.len() > 10_000;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if large => {
                let inner = self.clone();
                runtime.spawn_blocking(move || {
                    inner.sweep();
                    inner.sweeping.store(false, Ordering::Release);
                });
            }
            _ => {
                self.sweep();
                self.sweeping.store(false, Ordering::Release);
            }
        }
    }

    fn sweep(&self) {
        let now_ms = millis(self.clock.now());
        let guard = self.buckets.guard();
        self.buckets.retain(
            |_, bucket| match bucket.kill_if_idle(now_ms, self.bucket_ttl_ms) {
                Some(lost) => {
                    bump(&self.counters.expired_tokens, lost);
                    bump(&self.counters.retired_hits, bucket.hits());
                    false
                }
                None => true,
            },
            &guard,
        );
        self.targets.retain(|_, e| now_ms < e.expires_ms, &guard);
        self.last_sweep_ms.fetch_max(now_ms, Ordering::Relaxed);
    }
}

/// How long `cost` tokens of `rule` take to accrue; the bucket TTL when the rule never
/// refills.
fn time_for(rule: RuleSummary, cost: u64, ttl_ms: u64) -> Duration {
    match rule.refill_rate.time_per_token() {
        Some(per_token) => {
            let nanos = duration_to_nanos(per_token).saturating_mul(cost.max(1));
            Duration::from_nanos(nanos)
        }
        None => Duration::from_millis(ttl_ms),
    }
}

#[cfg(test)]
mod tests;
