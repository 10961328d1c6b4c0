//! [`Limiter`]: local token buckets over any [`TokenSource`].
//!
//! The limiter leases tokens from the source and keeps them in local buckets, one per (user,
//! rule), so that most requests never leave the process:
//!
//! - **Local hit**: a lock-free map lookup of the target's rule, one of the (user, rule)
//!   bucket, and one compare-and-swap. No lock, no allocation, no clock call (a cached
//!   millisecond clock serves expiry).
//! - **Target → rule cache**: exact targets first (an operation, or method + path), then the
//!   matchers of known rules for targets not seen yet; learned from the source's answers,
//!   expiring after `rule_ttl` (so rule changes on the server are picked up), bounded in size.
//! - **Leases sized by what is left and who takes it**: a lease asks for what the requests
//!   waiting for it need, plus what this process's demand uses in a span (up to three quarters
//!   of the token horizon, at most twice as long as the demand has lasted), but never more than
//!   its demand's share of what the source has left with the others' take (read from how fast
//!   the source's `tokensRemaining` falls beyond this process's own use) counted twice, and
//!   nothing speculative under 3 tokens: near the limit a lease is one request's cost
//!   (`sizing`). With nothing known, a lease asks for one request's cost; `lease_size` caps
//!   it.
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
//! # Bounds
//!
//! The limiter never admits more than the source granted. Every token admitted at time t was
//! granted after t − H, so per (user, rule), in any window T, any number of processes admit at
//! most `burst + refill·(T + H)`. Leased tokens not spent within H are lost (under-admission).

mod breaker;
mod bucket;
mod builder;
mod call;
mod decision;
mod flight;
mod keys;
mod latency;
mod learned;
mod lease;
mod memo;
#[cfg(feature = "metrics")]
mod publish;
mod routing;
mod sizing;
mod slow;
mod stats;
mod tally;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use papaya::{Compute, Operation};

pub use self::breaker::BreakerState;
pub use self::builder::{
    LimiterBuilder, OnUnavailable, DEFAULT_LEASE_SIZE, DEFAULT_MAX_LOCAL_BUCKETS,
    DEFAULT_TOKEN_HORIZON, MAX_LEASE_SIZE,
};
pub use self::decision::{Decision, DecisionSource, RuleSummary};
pub use self::stats::Stats;

use self::breaker::Breaker;
use self::bucket::{LocalBucket, Take};
use self::builder::ClockHandle;
use self::flight::Flights;
use self::keys::{BucketKey, BucketRef, TargetKey, TargetRef};
use self::latency::Latencies;
use self::routing::{RuleEntry, TargetEntry};
use self::sizing::Sizing;
use self::stats::{bump, read, Counters};
use self::tally::{DecidedBy, Outcome, Tally, NO_RULE};
use crate::clock::Timestamp;
use crate::source::DynTokenSource;
use crate::{Error, Target, TokenSource};

type Hasher = foldhash::fast::RandomState;

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
///     .lease_size(100) // the most one call to the source may lease
///     .build();
/// let email = Target::operation("send_email"); // burst 10 on the source
/// let mut allowed = 0;
/// for _ in 0..15 {
///     if limiter.check("alice", &email).await?.is_allowed() {
///         allowed += 1;
///     }
/// }
/// assert_eq!(allowed, 10);
/// // Near the limit every lease is one request's cost; the source's "none left" is cached.
/// assert_eq!(limiter.stats().source_calls, 10);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

struct Inner {
    /// Unique per limiter, for the per-thread memo of targets.
    id: u64,
    /// Bumped whenever a cached target → rule mapping may change (invalidates the memos).
    generation: AtomicU64,
    source: Arc<dyn DynTokenSource>,
    clock: ClockHandle,
    /// What lease sizing reads: the cap, the floor, the token horizon H.
    sizing: Sizing,
    /// How long a bucket the slow path has not used is kept (its demand estimate, its
    /// denial cache).
    bucket_ttl_ms: u64,
    rule_ttl_ms: u64,
    max_cached_targets: usize,
    refill_ahead: bool,
    lease_default_rule: bool,
    on_unavailable: OnUnavailable,
    source_timeout: Option<Duration>,
    sweep_interval_ms: u64,
    /// Target → rule. Shares its epoch collector with `buckets`: one guard serves a hit.
    targets: papaya::HashMap<TargetKey, TargetEntry, Hasher>,
    /// (user, rule) → bucket, inline in the entry.
    buckets: papaya::HashMap<BucketKey, LocalBucket, Hasher>,
    /// Rule slot → rule.
    rules: papaya::HashMap<u32, Arc<RuleEntry>>,
    /// Rule id → slot.
    rule_slots: Mutex<HashMap<String, u32>>,
    next_slot: AtomicU32,
    /// Leases in flight, per (user, rule) and per (user, target) while the rule is unknown.
    flights: Arc<Flights>,
    /// The source's recent latencies.
    latencies: Latencies,
    breaker: Breaker,
    counters: Counters,
    /// What the `metrics` feature publishes beyond the counters (nothing without it).
    tally: Tally,
    last_sweep_ms: AtomicU64,
    sweeping: AtomicBool,
    /// The most live buckets.
    max_buckets: usize,
    evicting: AtomicBool,
}

#[inline]
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
        self.check_local_in(user, target, cost, false)
    }

    /// [`check_local`](Self::check_local), counting a denial as shadow mode's when `shadow`.
    #[inline]
    pub(crate) fn check_local_in(
        &self,
        user: &str,
        target: &Target<'_>,
        cost: u64,
        shadow: bool,
    ) -> Option<Decision> {
        let inner = &*self.inner;
        let cost = cost.max(1);
        let now_ms = millis(inner.clock.coarse_now());
        let generation = inner.generation.load(Ordering::Acquire);
        let guard = inner.buckets.guard();
        // The routes this thread served last: no hashing of the target.
        let memoized = memo::with_memo(inner.id, generation, target, |resolved, key| {
            (now_ms < resolved.expires_ms)
                .then(|| self.take_local(user, resolved.rule, key, cost, now_ms, shadow, &guard))
        });
        if let Some(Some(decision)) = memoized {
            return decision;
        }
        let entry = inner.targets.get(&TargetRef(target), &guard)?;
        if now_ms >= entry.expires_ms {
            return None;
        }
        let resolved = memo::Resolved {
            rule: entry.rule,
            expires_ms: entry.expires_ms,
        };
        memo::remember(inner.id, generation, &resolved, &entry.key);
        self.take_local(user, entry.rule, &entry.key, cost, now_ms, shadow, &guard)
    }

    /// The local part of a hit, once the target's rule is known.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn take_local(
        &self,
        user: &str,
        rule: RuleSummary,
        target: &Arc<TargetKey>,
        cost: u64,
        now_ms: u64,
        shadow: bool,
        guard: &papaya::LocalGuard<'_>,
    ) -> Option<Decision> {
        let inner = &*self.inner;
        let key = BucketRef {
            user,
            slot: rule.slot,
        };
        let bucket = inner.buckets.get(&key, guard)?;
        match bucket.try_take(cost, now_ms) {
            Take::Taken(left) => {
                if inner.refill_ahead && bucket.crosses_low_water(left, cost) {
                    self.inner.refill_ahead(user, rule.slot, target);
                }
                Some(Decision::local(left, bucket.source_remaining(), rule))
            }
            Take::Empty => {
                let denied = inner.denied_locally(bucket, rule);
                if denied.is_some() {
                    inner.count(&Ok(denied), shadow);
                }
                denied
            }
            Take::Expired | Take::Stale => None,
        }
    }

    /// Decides, calling the source when needed. The future owns its arguments, so it can be
    /// stored or spawned; it tries the local bucket again first.
    ///
    /// `Err` only when the source failed and the policy is [`OnUnavailable::Error`], or for
    /// an unusable user identifier (blank or over
    /// [`MAX_USER_IDENTIFIER_BYTES`](crate::MAX_USER_IDENTIFIER_BYTES) bytes).
    pub fn check_with_source(
        &self,
        user: impl Into<Box<str>>,
        target: Target<'static>,
        cost: u64,
    ) -> impl Future<Output = Result<Decision, Error>> + Send + 'static {
        self.check_with_source_in(user, target, cost, false)
    }

    /// [`check_with_source`](Self::check_with_source), counting a denial as shadow mode's
    /// when `shadow`.
    pub(crate) fn check_with_source_in(
        &self,
        user: impl Into<Box<str>>,
        target: Target<'static>,
        cost: u64,
        shadow: bool,
    ) -> impl Future<Output = Result<Decision, Error>> + Send + 'static {
        let inner = self.inner.clone();
        let user = user.into();
        async move {
            let checked = inner.clone().check_slow(user, target, cost.max(1)).await;
            inner.count(&checked.as_ref().map(|d| Some(*d)), shadow);
            checked
        }
    }

    /// Counts a request refused for its user identifier before it reached the limiter (the
    /// web policy's 400s), for the `metrics` feature.
    pub(crate) fn count_invalid(&self) {
        self.inner
            .tally
            .decision(NO_RULE, Outcome::Invalid, DecidedBy::Local);
    }

    /// The limiter's clock, precisely.
    pub(crate) fn now(&self) -> crate::Timestamp {
        self.inner.clock.now()
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
        let (mut held, mut live) = (0u64, 0u64);
        for (_, bucket) in inner.buckets.iter(&guard) {
            held += bucket.tokens();
            live += 1;
        }
        let leased = read(&c.leased_tokens);
        let expired = read(&c.expired_tokens);
        Stats {
            // Every leased token is taken locally, taken by a request that waited for its
            // lease, held, or lost: no counter on the hot path.
            local_hits: leased
                .saturating_sub(held)
                .saturating_sub(expired)
                .saturating_sub(read(&c.taken_after_lease)),
            source_calls: read(&c.source_calls),
            leased_tokens: leased,
            per_request_tokens: read(&c.per_request_tokens),
            expired_tokens: expired,
            allowed_by_source: read(&c.allowed_by_source),
            denied_by_source: read(&c.denied_by_source),
            denied_by_denial_cache: read(&c.denied_by_denial_cache),
            allowed_unavailable: read(&c.allowed_unavailable),
            denied_unavailable: read(&c.denied_unavailable),
            outage_errors: read(&c.outage_errors),
            configuration_errors: read(&c.configuration_errors),
            other_errors: read(&c.other_errors),
            live_buckets: live,
            evicted_buckets: read(&c.evicted_buckets),
            cached_targets: inner.targets.len() as u64,
            known_rules: inner.rules.len() as u64,
            breaker: inner.breaker.state(inner.clock.now()),
        }
    }

    /// Tokens held in local buckets, alive or not yet counted lost (for accounting in tests:
    /// leased = admitted + held + expired).
    #[cfg(test)]
    pub(crate) fn held_tokens(&self) -> u64 {
        let guard = self.inner.buckets.guard();
        self.inner
            .buckets
            .iter(&guard)
            .map(|(_, b)| b.tokens())
            .sum()
    }

    /// Every live bucket.
    pub fn bucket_statuses(&self) -> Vec<BucketStatus> {
        let inner = &*self.inner;
        let guard = inner.buckets.guard();
        inner
            .buckets
            .iter(&guard)
            .filter(|(_, b)| !b.is_dead())
            .map(|(key, b)| inner.status(&key.user.to_str_lossy(), key.slot, b))
            .collect()
    }

    /// The bucket of (user, rule), if there is a live one.
    pub fn bucket_status(&self, user: &str, rule: &RuleSummary) -> Option<BucketStatus> {
        let inner = &*self.inner;
        let guard = inner.buckets.guard();
        let key = BucketRef {
            user,
            slot: rule.slot,
        };
        let bucket = inner.buckets.get(&key, &guard)?;
        (!bucket.is_dead()).then(|| inner.status(user, rule.slot, bucket))
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
        inner.buckets.retain(
            |key, bucket| {
                inner.lose(key.slot, bucket.kill());
                false
            },
            &guard,
        );
    }
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        f.debug_struct("Limiter")
            .field("lease_size", &inner.sizing.cap)
            .field("min_lease_size", &inner.sizing.floor)
            .field("token_horizon", &inner.sizing.horizon)
            .field("bucket_ttl_ms", &inner.bucket_ttl_ms)
            .field("rule_ttl_ms", &inner.rule_ttl_ms)
            .field("refill_ahead", &inner.refill_ahead)
            .field("lease_default_rule", &inner.lease_default_rule)
            .field("on_unavailable", &inner.on_unavailable)
            .field("live_buckets", &inner.buckets.len())
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// Counts `tokens` of the rule in `slot` lost unspent.
    fn lose(&self, slot: u32, tokens: u64) {
        bump(&self.counters.expired_tokens, tokens);
        self.tally.expired(slot, tokens);
    }

    /// Counts a decision handed out (`None`: none), for the `metrics` feature. An allowed
    /// local hit is not counted: it is derived from the tokens of the rule's buckets.
    fn count(&self, checked: &Result<Option<Decision>, &Error>, shadow: bool) {
        let denied = if shadow {
            Outcome::ShadowDenied
        } else {
            Outcome::Denied
        };
        let (outcome, by) = match checked {
            Ok(None) => return,
            Ok(Some(decision)) => match (decision.source(), decision.is_allowed()) {
                (DecisionSource::LocalBucket, _) => return,
                (DecisionSource::Unavailable, _) => (Outcome::Unavailable, DecidedBy::Source),
                (DecisionSource::TokenSource, true) => (Outcome::Allowed, DecidedBy::Source),
                (DecisionSource::TokenSource, false) => (denied, DecidedBy::Source),
                (DecisionSource::DenialCache, _) => (denied, DecidedBy::DenialCache),
            },
            Err(error) if error.kind() == crate::ErrorKind::InvalidInput => {
                (Outcome::Invalid, DecidedBy::Local)
            }
            Err(_) => (Outcome::Unavailable, DecidedBy::Source),
        };
        let slot = match checked {
            Ok(Some(decision)) => decision.rule().map_or(NO_RULE, |rule| rule.slot),
            _ => NO_RULE,
        };
        self.tally.decision(slot, outcome, by);
    }

    fn status(&self, user: &str, slot: u32, bucket: &LocalBucket) -> BucketStatus {
        let now = self.clock.now();
        let now_ms = millis(now);
        let idle_ms = now_ms.saturating_sub(bucket.touched_ms());
        let until = bucket.denied_until();
        let rules = self.rules.guard();
        BucketStatus {
            user_identifier: user.to_owned(),
            rule_id: self
                .rules
                .get(&slot, &rules)
                .map(|e| e.id.to_string())
                .unwrap_or_default(),
            tokens: bucket.live_tokens(now_ms),
            idle_for: Duration::from_millis(idle_ms),
            expired: now_ms >= bucket.deadline_ms(),
            denied_for: (until > now.as_nanos())
                .then(|| Duration::from_nanos(until - now.as_nanos())),
        }
    }

    /// The denial cache: `Some` while no token can exist for this bucket yet.
    fn denied_locally(&self, bucket: &LocalBucket, rule: RuleSummary) -> Option<Decision> {
        let until = bucket.denied_until();
        if until == 0 {
            return None;
        }
        let now = self.clock.now();
        if now.as_nanos() >= until {
            return None;
        }
        let now_ms = millis(now);
        if bucket.touched_ms() < now_ms {
            bucket.touch(now_ms);
        }
        bump(&self.counters.denied_by_denial_cache, 1);
        Some(Decision::denied(
            DecisionSource::DenialCache,
            Duration::from_nanos(until - now.as_nanos()),
            bucket.source_remaining(),
            rule,
        ))
    }

    /// The bucket of (user, rule), created empty if there is none (or only a removed one).
    fn bucket<'g>(
        &self,
        user: &str,
        rule: RuleSummary,
        now_ms: u64,
        guard: &'g papaya::LocalGuard<'_>,
    ) -> &'g LocalBucket {
        let key = BucketRef {
            user,
            slot: rule.slot,
        };
        if let Some(bucket) = self.buckets.get(&key, guard) {
            if !bucket.is_dead() {
                return bucket;
            }
            self.remove_dead(user, rule.slot, bucket, guard);
        }
        if self.buckets.len() >= self.max_buckets {
            self.make_room(now_ms);
        }
        let computed = self.buckets.compute(
            BucketKey::new(user, rule.slot),
            |existing| match existing {
                Some((_, bucket)) if !bucket.is_dead() => Operation::Abort(bucket),
                _ => Operation::Insert(LocalBucket::new(now_ms)),
            },
            guard,
        );
        match computed {
            Compute::Aborted(bucket) => bucket,
            Compute::Inserted(_, bucket) => bucket,
            Compute::Updated {
                new: (_, bucket), ..
            } => bucket,
            Compute::Removed(..) => unreachable!("the computation never removes"),
        }
    }

    /// Kills the bucket of (user, slot), counting what it loses, and removes it if it is
    /// still the one there.
    fn retire(&self, user: &str, slot: u32, bucket: &LocalBucket, guard: &papaya::LocalGuard<'_>) {
        self.lose(slot, bucket.kill());
        self.remove_dead(user, slot, bucket, guard);
    }

    /// Removes the dead bucket of (user, slot) from the map if it is still the one there.
    fn remove_dead(
        &self,
        user: &str,
        slot: u32,
        bucket: &LocalBucket,
        guard: &papaya::LocalGuard<'_>,
    ) {
        self.buckets.compute(
            BucketKey::new(user, slot),
            |existing| match existing {
                Some((_, current)) if std::ptr::eq(current, bucket) => Operation::Remove,
                _ => Operation::Abort(()),
            },
            guard,
        );
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

    /// At the cap of live buckets: forgets buckets until 90% of the cap is used, those safe to
    /// forget first. Forgetting a bucket never admits anything: what it loses is a demand
    /// estimate, a denial (the source is asked again, and says no again), or leased tokens
    /// (counted lost).
    #[cold]
    fn make_room(&self, now_ms: u64) {
        if self.evicting.swap(true, Ordering::AcqRel) {
            // Another request is making room; this one may go a little past the cap.
            return;
        }
        let target = self.max_buckets - self.max_buckets / 10;
        let before = self.buckets.len();
        // Idle buckets first: what a sweep removes.
        self.sweep();
        let now_nanos = self.clock.now().as_nanos();
        let guard = self.buckets.guard();
        // Then, at random, buckets holding no live token and no denial, then those holding no
        // live token, then any. At random: removing a run of neighbouring entries leaves a run
        // of tombstones that papaya (0.2.5) can fail to copy past, spinning forever.
        let passes: [&dyn Fn(&LocalBucket) -> bool; 3] = [
            &|b| b.live_tokens(now_ms) == 0 && b.denied_until() <= now_nanos,
            &|b| b.live_tokens(now_ms) == 0,
            &|_| true,
        ];
        let mut rng = fastrand::Rng::new();
        for forget in passes {
            for _ in 0..4 {
                let len = self.buckets.len();
                if len <= target {
                    break;
                }
                let mut excess = len - target;
                let odds = (1.5 * excess as f64 / len as f64).min(1.0);
                self.buckets.retain(
                    |key, bucket| {
                        if excess == 0 || rng.f64() >= odds || !forget(bucket) {
                            return true;
                        }
                        excess -= 1;
                        self.lose(key.slot, bucket.kill());
                        false
                    },
                    &guard,
                );
            }
        }
        let evicted = before.saturating_sub(self.buckets.len());
        bump(&self.counters.evicted_buckets, evicted as u64);
        tracing::debug!(
            target: "lightrate::limiter",
            evicted,
            max_buckets = self.max_buckets,
            "at the cap of live buckets: forgot some to make room"
        );
        self.evicting.store(false, Ordering::Release);
    }

    fn sweep(&self) {
        let now = self.clock.now();
        let now_ms = millis(now);
        let guard = self.buckets.guard();
        self.buckets.retain(
            |key, bucket| match bucket.kill_if_idle(now_ms, now.as_nanos(), self.bucket_ttl_ms) {
                Some(lost) => {
                    self.lose(key.slot, lost);
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

#[cfg(test)]
mod tests;
