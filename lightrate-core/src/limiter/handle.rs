//! [`Limiter`], the handle every caller holds, and [`BucketStatus`].

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::bucket::LocalBucket;
use super::counters::{Counted, NO_RULE};
use super::decision::{Decision, RuleSummary};
use super::inner::Inner;
use super::keys::{Probe, UserProbe};
use super::settings::OnUnavailable;
use super::stats::Stats;
use crate::clock::Timestamp;
use crate::{Error, Target};

/// Local token buckets over a [`TokenSource`](crate::TokenSource): what the web adapters ask for every request.
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
    pub(super) inner: Arc<Inner>,
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
    /// Decides without calling the source, when it can: `Some` for a local hit or a denial
    /// from the denial cache, `None` when the source must be asked
    /// ([`check_with_source`](Self::check_with_source)).
    ///
    /// This is the hot path. A local hit takes no lock, allocates nothing and reads only the
    /// coarse clock (one atomic load). Off the hit: a denial from the denial cache reads the
    /// precise clock; a take that crosses a busy bucket's low-water mark starts a lease in the
    /// background (a locked shard, an allocation), and so does moving a hot user's bucket to
    /// this thread's memo the first time.
    #[inline]
    pub fn check_local(&self, user: &str, target: &Target<'_>, cost: u64) -> Option<Decision> {
        // Written in place: inlined, this is the caller's own variable.
        let mut decided = None;
        self.decide_locally(user.as_bytes(), target, cost, false, &mut decided);
        decided
    }

    /// [`check_local`](Self::check_local) for a user and a target as the caller has them:
    /// an identifier's bytes (UTF-8, as every identifier is) or a client's address, and a
    /// `Target` or a method and path (what the web adapters' default path has, compared with
    /// the memos without being made text or a `Target`). Writes the decision to `decided` (the
    /// caller's variable: a decision returned is copied out), leaving it `None` when the
    /// source must be asked. A denial counts as shadow mode's when `shadow`.
    ///
    /// Writing into the caller's variable rather than returning the decision is the one
    /// write-into form at the limiter's boundary: the web adapters' default path keeps the
    /// decision where it was written (BENCHMARKS.md, "the hit", measures what a returned
    /// `Decision` costs).
    #[inline]
    pub(crate) fn decide_locally(
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
        self.decide_with_source(user, target, cost, false)
    }

    /// [`check_with_source`](Self::check_with_source), counting a denial as shadow mode's
    /// when `shadow`.
    pub(crate) fn decide_with_source(
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

    /// [`decide_with_source`](Self::decide_with_source), and for a request a lease granted
    /// its tokens, until when they are spendable (ms; 0 otherwise): where they go back if a
    /// middleware stacked under the caller's refuses the request.
    pub(crate) fn decide_with_source_granting(
        &self,
        user: impl Into<Box<str>>,
        target: Target<'static>,
        cost: u64,
        shadow: bool,
    ) -> impl Future<Output = Result<(Decision, u64), Error>> + Send + 'static {
        let inner = self.inner.clone();
        let user = user.into();
        async move {
            let checked = inner
                .clone()
                .check_slow_granting(user, target, cost.max(1))
                .await;
            inner.count(&checked.as_ref().map(|(d, _)| *d), shadow);
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
        let now_ms = now.as_millis();
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
