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
//! # Where the state lives
//!
//! | file | type | what it owns |
//! |---|---|---|
//! | `mod.rs` | [`Limiter`] | the public API, over one `Arc<Inner>` |
//! | `inner.rs` | `Inner` | the parts below, and the path of a request: the local hit, the slow path |
//! | `settings.rs` | `Settings` | every knob, set by [`LimiterBuilder`] and moved in whole |
//! | `routes.rs` | `Routes` | targets → rules (the map), the learned rules |
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
mod decision;
mod flight;
mod inner;
mod keys;
mod latency;
mod learned;
mod lease;
mod memo;
#[cfg(feature = "metrics")]
mod publish;
mod routes;
mod settings;
mod sizing;
mod stats;
mod upstream;

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub use self::breaker::BreakerState;
pub use self::builder::{
    LimiterBuilder, OnUnavailable, DEFAULT_LEASE_SIZE, DEFAULT_MAX_LOCAL_BUCKETS,
    DEFAULT_TOKEN_HORIZON, MAX_LEASE_SIZE,
};
pub use self::decision::{Decision, DecisionSource, RuleSummary};
pub use self::stats::Stats;

use self::breaker::Gate;
use self::bucket::LocalBucket;
use self::counters::{Counted, NO_RULE};
use self::inner::Inner;
pub(crate) use self::keys::{PathProbe, Probe, UserProbe};
use crate::clock::Timestamp;
use crate::{Error, Target, TokenSource};

type Hasher = foldhash::fast::RandomState;

/// A map of the hot path (buckets, targets): on `collector`, which the two share so that one
/// epoch guard serves a hit, and resized blocking, not by papaya's default increments: a
/// table left part-copied (no writes after a burst of new keys) makes every read search both
/// tables to the old one's probe limit: ~3 900 instructions a hit instead of ~350.
fn hot_map<K: Send + 'static, V: Send + 'static>(
    collector: std::sync::Arc<seize::Collector>,
) -> papaya::HashMap<K, V, Hasher> {
    papaya::HashMap::builder()
        .hasher(Hasher::default())
        .shared_collector(collector)
        .resize_mode(papaya::ResizeMode::Blocking)
        .build()
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
/// // Leases follow the demand and what the source has left, never past it; once the source
/// // says none is left, the denial cache answers without calls.
/// let stats = limiter.stats();
/// assert!(stats.source_calls <= 10);
/// assert!(stats.denied_by_denial_cache >= 4);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
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
        // Written in place: inlined, this is the caller's own variable.
        let mut decided = None;
        self.check_local_into(user.as_bytes(), target, cost, false, &mut decided);
        decided
    }

    /// [`check_local`](Self::check_local) for a user and a target as the caller has them:
    /// an identifier's bytes (UTF-8, as every identifier is) or a client's address, and a
    /// `Target` or a method and path (what the web adapters' default path has, compared with
    /// the memos without being made text or a `Target`). Writes the decision to `decided` (the
    /// caller's variable: a decision returned is copied out), leaving it `None` when the
    /// source must be asked. A denial counts as shadow mode's when `shadow`.
    #[inline]
    pub(crate) fn check_local_into(
        &self,
        user: &(impl UserProbe + ?Sized),
        target: &impl Probe,
        cost: u64,
        shadow: bool,
        decided: &mut Option<Decision>,
    ) {
        self.inner.check_local(user, target, cost, shadow, decided);
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
            inner.count(&checked.as_ref().copied(), shadow);
            checked
        }
    }

    /// Counts a request refused for its user identifier before it reached the limiter (the
    /// web policy's 400s), for the `metrics` feature.
    pub(crate) fn count_invalid(&self) {
        self.inner.counters.decision(NO_RULE, Counted::Invalid);
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
        self.inner.settings.on_unavailable
    }

    /// The id of a rule a decision names.
    pub fn rule_id(&self, rule: &RuleSummary) -> Option<Arc<str>> {
        self.inner.routes.id_of(rule.slot)
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        Stats::of(&self.inner)
    }

    /// Tokens held in local buckets, alive or not yet counted lost (for accounting in tests:
    /// leased = admitted + held + expired).
    #[cfg(test)]
    pub(crate) fn held_tokens(&self) -> u64 {
        self.inner.buckets.held().0.values().sum()
    }

    /// Every live bucket.
    pub fn bucket_statuses(&self) -> Vec<BucketStatus> {
        let inner = &*self.inner;
        let now = inner.clock.now();
        let mut statuses = Vec::new();
        inner.buckets.for_each_live(|user, slot, bucket| {
            statuses.push(BucketStatus::of(
                user,
                inner.routes.id_of(slot),
                bucket,
                now,
            ));
        });
        statuses
    }

    /// The bucket of (user, rule), if there is a live one.
    pub fn bucket_status(&self, user: &str, rule: &RuleSummary) -> Option<BucketStatus> {
        let inner = &*self.inner;
        let guard = inner.buckets.guard();
        let bucket = inner.buckets.get(user.as_bytes(), rule.slot, &guard)?;
        let now = inner.clock.now();
        (!bucket.is_dead())
            .then(|| BucketStatus::of(user, inner.routes.id_of(rule.slot), bucket, now))
    }

    /// Removes idle buckets and stale cache entries now (this also happens on its own).
    pub fn sweep(&self) {
        self.inner.sweep();
    }

    /// Removes every local bucket; their tokens are lost (counted in `expired_tokens`).
    /// Learned rules and the target cache are kept.
    pub fn reset(&self) {
        self.inner.buckets.clear(&self.inner.counters);
    }
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.inner.settings;
        f.debug_struct("Limiter")
            .field("lease_size", &s.sizing.cap)
            .field("min_lease_size", &s.sizing.floor)
            .field("token_horizon", &s.sizing.horizon)
            .field("bucket_ttl_ms", &s.bucket_ttl_ms)
            .field("rule_ttl_ms", &s.rule_ttl_ms)
            .field("refill_ahead", &s.refill_ahead)
            .field("lease_default_rule", &s.lease_default_rule)
            .field("on_unavailable", &s.on_unavailable)
            .field("live_buckets", &self.inner.buckets.len())
            .finish_non_exhaustive()
    }
}

impl BucketStatus {
    fn of(user: &str, rule_id: Option<Arc<str>>, bucket: &LocalBucket, now: Timestamp) -> Self {
        let now_ms = millis(now);
        let until = bucket.denied_until();
        BucketStatus {
            user_identifier: user.to_owned(),
            rule_id: rule_id.map(|id| id.to_string()).unwrap_or_default(),
            tokens: bucket.live_tokens(now_ms),
            idle_for: Duration::from_millis(now_ms.saturating_sub(bucket.touched_ms())),
            expired: now_ms >= bucket.deadline_ms(),
            denied_for: (until > now.as_nanos())
                .then(|| Duration::from_nanos(until - now.as_nanos())),
        }
    }
}

#[cfg(test)]
mod tests;
