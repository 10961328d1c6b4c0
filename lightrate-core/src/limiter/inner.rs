//! [`Inner`]: what a [`Limiter`](super::Limiter) is behind its `Arc`, and the path of a
//! request through it: the local hit, then the slow path (the bucket again, the denial cache, a
//! lease joined or started, and the answer it brings).
//!
//! A bucket lives inline in the map (or, once hot, shared with the memos) and is borrowed under
//! an epoch guard, which cannot be held across an `.await`: every block that borrows a bucket
//! ends before the next await.
//!
//! A request that finds no token registers on the lease in flight for its bucket (or starts
//! one) and waits for its own [`Answer`]: its tokens handed over from the grant, a denial
//! because the source had less than was asked, or the source's failure (the outage policy
//! decides). A request is denied only then, or by the denial cache.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::bucket::{LocalBucket, Take};
use super::buckets::{Buckets, Held};
use super::builder::{ClockHandle, OnUnavailable};
use super::counters::{Counted, Counters};
use super::decision::{Decision, DecisionSource, RuleSummary};
use super::flight::{Answer, FlightKey, Flights, Joined, Waiter};
use super::keys::{Probe, TargetKey, UserProbe};
use super::lease::{next_token, wait_for, InlineLease, Lease};
use super::memo;
use super::routes::Routes;
use super::settings::Settings;
use super::upstream::Upstream;
use super::{millis, Gate};
use crate::clock::Timestamp;
use crate::source::DynTokenSource;
use crate::{ConsumeRequest, ConsumeTokensResponse, Error, ErrorKind, Target};

/// What a bucket said to a hit.
#[derive(Clone, Copy, Debug)]
enum Tap {
    /// Taken: this many left, and what the source said it had left.
    Taken { left: u32, remaining: u64 },
    /// Fewer tokens than the cost (the denial cache may answer).
    Empty,
    /// The source must be asked (tokens past their deadline).
    Ask,
}

/// What a local hit is asked: the user, the target, the cost, the time (the coarse clock's
/// milliseconds), and whether a denial counts as shadow mode's.
struct Hit<'a, P: ?Sized> {
    user: &'a [u8],
    target: &'a P,
    cost: u64,
    now_ms: u64,
    shadow: bool,
}

impl<P: ?Sized> Clone for Hit<'_, P> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<P: ?Sized> Copy for Hit<'_, P> {}

impl<'a, P: ?Sized> Hit<'a, P> {
    #[inline(always)]
    fn new(user: &'a [u8], target: &'a P, cost: u64, now_ms: u64, shadow: bool) -> Self {
        Hit {
            user,
            target,
            cost,
            now_ms,
            shadow,
        }
    }
}

/// How many times a request may go round (the SDKs' per-request mode, where a grant serves one
/// request, or a rule that keeps changing) before it is denied.
const ROUNDS: usize = 16;

/// A limiter's state, each part in the type that owns it.
pub(super) struct Inner {
    /// Every knob, as the builder set them.
    pub(super) settings: Settings,
    pub(super) clock: ClockHandle,
    /// What targets fall to which rules.
    pub(super) routes: Routes,
    /// The local buckets.
    pub(super) buckets: Buckets,
    /// The token source, its breaker and latency.
    pub(super) upstream: Upstream,
    /// Leases in flight, per (user, rule) and per (user, target) while the rule is unknown.
    pub(super) flights: Arc<Flights>,
    /// What Stats and the metrics read.
    pub(super) counters: Counters,
}

impl Inner {
    pub(super) fn new(
        source: Arc<dyn DynTokenSource>,
        clock: ClockHandle,
        settings: Settings,
    ) -> Self {
        // The two maps of the hot path share one epoch collector: one guard serves a hit.
        let collector = Arc::new(seize::Collector::new());
        Inner {
            upstream: Upstream::new(source, &settings.breaker),
            settings,
            clock,
            routes: Routes::new(collector.clone()),
            buckets: Buckets::new(collector),
            flights: Arc::new(Flights::new()),
            counters: Counters::default(),
        }
    }

    /// The local hit: the target's rule and the (user, rule) bucket (this thread's memos, else
    /// the maps), one compare-and-swap; or the denial cache. Writes what is decided to
    /// `decided` (left `None` when the source must be asked): the caller's own variable, so
    /// that the decision is not copied out. No lock, no allocation, no clock call.
    #[inline]
    pub(super) fn check_local(
        self: &Arc<Self>,
        user: &(impl UserProbe + ?Sized),
        target: &impl Probe,
        cost: u64,
        shadow: bool,
        decided: &mut Option<Decision>,
    ) {
        let cost = cost.max(1);
        let now_ms = millis(self.clock.coarse_now());
        let (limiter, generation) = self.routes.memo_key();
        // A bucket to memoize once the memos are free.
        let mut shared = None;
        let known = memo::hit(limiter, generation, now_ms, target, user, |rule, bucket| {
            if let Some(bucket) = bucket {
                match self.tap(bucket, user, target, rule.slot, cost, now_ms) {
                    Tap::Taken { left, remaining } => {
                        *decided = Some(Decision::local(u64::from(left), remaining, *rule));
                        return true;
                    }
                    Tap::Ask => return true,
                    // The denial cache is read on the way through the map (the same bucket).
                    Tap::Empty => {}
                }
            }
            user.with_bytes(|user| {
                let guard = self.buckets.guard();
                let hit = Hit::new(user, target, cost, now_ms, shadow);
                self.from_map(rule, &hit, &guard, decided, &mut shared);
            });
            true
        });
        if !known {
            user.with_bytes(|user| {
                let guard = self.buckets.guard();
                let rule = target.with_target(|t| self.routes.lookup(t, now_ms, &guard));
                if let Some(rule) = rule {
                    let hit = Hit::new(user, target, cost, now_ms, shadow);
                    self.from_map(&rule, &hit, &guard, decided, &mut shared);
                }
            });
        }
        if let Some((slot, bucket)) = shared {
            user.with_bytes(|user| memo::memoize(limiter, user, slot, bucket));
        }
    }

    /// The hit through the map: the (user, rule) bucket, one take, or the denial cache; and
    /// the bucket shared to be memoized if this thread served its user twice in a row.
    #[inline(always)]
    fn from_map(
        self: &Arc<Self>,
        rule: &RuleSummary,
        hit: &Hit<'_, impl Probe>,
        guard: &papaya::LocalGuard<'_>,
        decided: &mut Option<Decision>,
        shared: &mut Option<(u32, Arc<LocalBucket>)>,
    ) {
        let Hit {
            user,
            target,
            cost,
            now_ms,
            shadow,
        } = *hit;
        let Some(held) = self.buckets.get(user, rule.slot, guard) else {
            return;
        };
        match self.tap(held, user, target, rule.slot, cost, now_ms) {
            Tap::Taken { left, remaining } => {
                *decided = Some(Decision::local(u64::from(left), remaining, *rule));
            }
            Tap::Ask => return,
            Tap::Empty => {
                *decided = self.denied_here(held, *rule, shadow);
                return;
            }
        }
        if memo::found_again(held) && memo::fits(user) {
            *shared = self.share(user, rule.slot, held, guard);
        }
    }

    /// The bucket of a user this thread served twice in a row, shared (moved out of its entry,
    /// if it is inline), with its rule slot.
    #[cold]
    fn share(
        &self,
        user: &[u8],
        slot: u32,
        held: &Held,
        guard: &papaya::LocalGuard<'_>,
    ) -> Option<(u32, Arc<LocalBucket>)> {
        self.buckets
            .share(user, slot, held, &self.counters, guard)
            .map(|bucket| (slot, bucket))
    }

    /// One take: what the bucket says, small enough to come back in registers (the hit's
    /// `Decision` is built once, by the caller).
    #[inline(always)]
    fn tap(
        self: &Arc<Self>,
        bucket: &LocalBucket,
        user: &(impl UserProbe + ?Sized),
        target: &impl Probe,
        slot: u32,
        cost: u64,
        now_ms: u64,
    ) -> Tap {
        match bucket.try_take(cost, now_ms) {
            Take::Taken(left) => {
                if self.settings.refill_ahead && bucket.crosses_low_water(left, cost) {
                    user.with_bytes(|user| {
                        target.with_target(|t| Lease::refill_ahead(self, user, slot, t));
                    });
                }
                Tap::Taken {
                    // A bucket holds at most 2^24 - 1 tokens.
                    left: u32::try_from(left).unwrap_or(u32::MAX),
                    remaining: bucket.source_remaining(),
                }
            }
            Take::Empty => Tap::Empty,
            Take::Expired | Take::Stale => Tap::Ask,
        }
    }

    /// A local denial from the denial cache, counted.
    #[cold]
    fn denied_here(
        &self,
        bucket: &LocalBucket,
        rule: RuleSummary,
        shadow: bool,
    ) -> Option<Decision> {
        let denied = self.denied_locally(bucket, rule)?;
        self.count(&Ok(denied), shadow);
        Some(denied)
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
        Some(Decision::denied(
            DecisionSource::DenialCache,
            Duration::from_nanos(until - now.as_nanos()),
            bucket.source_remaining(),
            rule,
        ))
    }

    /// Counts a decision handed out (an allowed local hit is derived instead).
    pub(super) fn count(&self, checked: &Result<Decision, &Error>, shadow: bool) {
        if let Some((slot, counted)) = Counted::of(checked, shadow) {
            self.counters.decision(slot, counted);
        }
    }

    /// The bucket of (user, slot), created empty if there is none.
    pub(super) fn bucket<'g>(
        &self,
        user: &str,
        slot: u32,
        now: Timestamp,
        guard: &'g papaya::LocalGuard<'_>,
    ) -> &'g LocalBucket {
        self.buckets
            .get_or_insert(user, slot, now, &self.settings, &self.counters, guard)
    }

    /// One call to the source for `tokens` of (user, target), charging the default rule
    /// `default_match`.
    pub(super) async fn call(
        &self,
        user: &str,
        target: &Target<'_>,
        tokens: u64,
        default_match: u64,
    ) -> Result<ConsumeTokensResponse, Error> {
        let request =
            ConsumeRequest::new(user, target, tokens).with_default_bucket_match(default_match);
        self.upstream
            .call(
                request,
                self.settings.source_timeout,
                &self.clock,
                &self.counters,
            )
            .await
    }

    /// Sweeps when one is due: inline for small maps, on the blocking pool for large ones.
    fn maybe_sweep(self: &Arc<Self>) {
        let now_ms = millis(self.clock.coarse_now());
        if !self
            .buckets
            .claim_sweep(now_ms, self.settings.sweep_interval_ms)
        {
            return;
        }
        let large = self.buckets.len() > 10_000;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if large => {
                let inner = self.clone();
                runtime.spawn_blocking(move || {
                    inner.sweep();
                    inner.buckets.swept();
                });
            }
            _ => {
                self.sweep();
                self.buckets.swept();
            }
        }
    }

    /// Removes idle buckets and stale targets.
    pub(super) fn sweep(&self) {
        let now = self.clock.now();
        self.buckets
            .sweep(now, self.settings.bucket_ttl_ms, &self.counters);
        let guard = self.buckets.guard();
        self.routes.sweep(millis(now), &guard);
    }

    /// The slow path: the identifier checked, then round by round the bucket, the denial
    /// cache, a lease.
    pub(super) async fn check_slow(
        self: Arc<Self>,
        user: Box<str>,
        target: Target<'static>,
        cost: u64,
    ) -> Result<Decision, Error> {
        crate::protocol::check_user_identifier(&user)?;
        self.maybe_sweep();
        let mut last_rule = None;
        for _ in 0..ROUNDS {
            let now = self.clock.now();
            let resolved = {
                let guard = self.buckets.guard();
                self.routes.resolve(
                    &target,
                    millis(now),
                    self.settings.rule_ttl_ms,
                    self.settings.max_cached_targets,
                    &guard,
                )
            };
            let (key, lease_target, rule) = match resolved {
                None => (
                    FlightKey::Target {
                        user: user.clone(),
                        target: TargetKey::from_target(&target),
                    },
                    Arc::new(TargetKey::from_target(&target)),
                    None,
                ),
                Some((rule, target_key)) => {
                    last_rule = Some(rule);
                    if rule.is_default && !self.settings.lease_default_rule {
                        return self.per_request(&user, &target, cost, now).await;
                    }
                    if let Some(decision) = self.take_or_deny(&user, rule, cost, now) {
                        return Ok(decision);
                    }
                    let key = FlightKey::Bucket {
                        user: user.clone(),
                        slot: rule.slot,
                    };
                    (key, target_key, Some(rule))
                }
            };
            let (reply, answer) = oneshot::channel();
            let waiter = Waiter { cost, reply };
            match self.join_or_start(key, lease_target, rule, waiter, now) {
                Ok(Some(lease)) => lease.await,
                Ok(None) => {}
                Err((error, retry_after)) => return self.unavailable(error, retry_after),
            }
            if let Some(result) = self.answered(answer.await) {
                return result;
            }
        }
        // The rule kept changing under this request: denied, never admitted without a token.
        Ok(match last_rule {
            Some(rule) => Decision::denied(DecisionSource::TokenSource, Duration::ZERO, 0, rule),
            None => Decision::unavailable(false, ErrorKind::Unavailable, Duration::from_secs(1)),
        })
    }

    /// What a request that waited for a lease gets from its answer; `None` to go round again.
    fn answered(
        &self,
        answer: Result<Answer, oneshot::error::RecvError>,
    ) -> Option<Result<Decision, Error>> {
        match answer {
            Ok(Answer::Granted {
                rule,
                source_remaining,
                tokens_left,
            }) => Some(Ok(Decision {
                source: DecisionSource::TokenSource,
                ..Decision::local(tokens_left, source_remaining, rule)
            })),
            Ok(Answer::Denied {
                rule,
                source_remaining,
                retry_after,
            }) => Some(Ok(Decision::denied(
                DecisionSource::TokenSource,
                retry_after,
                source_remaining,
                rule,
            ))),
            Ok(Answer::Failed(error)) => {
                let retry_after = error.retry_after().unwrap_or(Duration::from_secs(1));
                Some(self.unavailable(error, retry_after))
            }
            Ok(Answer::Again) => None,
            // The lease's task was dropped (a runtime shutting down) before it answered.
            Err(_) => Some(self.unavailable(
                Error::new(
                    ErrorKind::Network,
                    "the lease was abandoned before the source answered",
                ),
                Duration::from_secs(1),
            )),
        }
    }

    /// Takes from the bucket of (user, rule), or denies from the denial cache; `None` when the
    /// source must be asked.
    fn take_or_deny(
        &self,
        user: &str,
        rule: RuleSummary,
        cost: u64,
        now: Timestamp,
    ) -> Option<Decision> {
        let now_ms = millis(now);
        let guard = self.buckets.guard();
        let bucket = self.bucket(user, rule.slot, now, &guard);
        loop {
            match bucket.try_take(cost, now_ms) {
                Take::Taken(left) => {
                    return Some(Decision::local(left, bucket.source_remaining(), rule))
                }
                Take::Stale => self.counters.expired(rule.slot, bucket.drop_stale(now_ms)),
                Take::Expired => {
                    if bucket.is_dead() {
                        return None;
                    }
                    self.counters.expired(rule.slot, bucket.expire(now_ms));
                }
                Take::Empty => return self.denied_locally(bucket, rule),
            }
        }
    }

    /// Registers `waiter` on the lease in flight for `key`, or starts one (returned for the
    /// caller to drive when there is no runtime). `Err` when the breaker forbids calling.
    fn join_or_start(
        self: &Arc<Self>,
        key: FlightKey,
        target: Arc<TargetKey>,
        rule: Option<RuleSummary>,
        waiter: Waiter,
        now: Timestamp,
    ) -> Result<Option<InlineLease>, (Error, Duration)> {
        let mut blocked = None;
        let joined = self
            .flights
            .join(&key, vec![waiter], || match self.upstream.gate(now) {
                Gate::Call => true,
                Gate::Blocked { error, retry_after } => {
                    blocked = Some((error, retry_after));
                    false
                }
            });
        match joined {
            Joined::Waiting => Ok(None),
            Joined::Started(flight) => Ok(Lease::start(self, key, target, rule, flight)),
            Joined::Refused => Err(blocked.unwrap_or_else(|| {
                (
                    Error::new(
                        ErrorKind::Unavailable,
                        "the token source is not being called",
                    ),
                    Duration::from_secs(1),
                )
            })),
        }
    }

    /// The SDKs' behaviour for the default rule: one call per request, no local bucket.
    async fn per_request(
        &self,
        user: &str,
        target: &Target<'_>,
        cost: u64,
        now: Timestamp,
    ) -> Result<Decision, Error> {
        if let Gate::Blocked { error, retry_after } = self.upstream.gate(now) {
            return self.unavailable(error, retry_after);
        }
        match self.call(user, target, cost, cost).await {
            Ok(answer) => {
                let now_ms = millis(self.clock.now());
                let rule = self.routes.learn(&answer.rule, now_ms);
                {
                    let guard = self.buckets.guard();
                    self.routes.remember(
                        Arc::new(TargetKey::from_target(target)),
                        rule,
                        now_ms,
                        self.settings.rule_ttl_ms,
                        self.settings.max_cached_targets,
                        &guard,
                    );
                }
                let granted = answer.tokens_consumed.min(cost);
                self.counters.per_request(rule.slot, granted);
                let remaining = answer.tokens_remaining;
                Ok(if granted >= cost {
                    Decision {
                        source: DecisionSource::TokenSource,
                        ..Decision::local(0, remaining, rule)
                    }
                } else {
                    let retry_after = wait_for(rule, cost, remaining, next_token(&answer, rule));
                    Decision::denied(DecisionSource::TokenSource, retry_after, remaining, rule)
                })
            }
            Err(error) => {
                let retry_after = error.retry_after().unwrap_or(Duration::from_secs(1));
                self.unavailable(error, retry_after)
            }
        }
    }

    /// The outage policy.
    fn unavailable(&self, error: Error, retry_after: Duration) -> Result<Decision, Error> {
        match self.settings.on_unavailable {
            OnUnavailable::Allow => Ok(Decision::unavailable(true, error.kind(), Duration::ZERO)),
            OnUnavailable::Deny => Ok(Decision::unavailable(false, error.kind(), retry_after)),
            OnUnavailable::Error => Err(error),
        }
    }
}
