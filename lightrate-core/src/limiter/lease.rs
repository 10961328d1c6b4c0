//! [`Lease`]: one call to the source for a bucket's tokens, and filing what it grants.
//!
//! A lease asks for what the waiting requests need plus, when the source has plenty next to
//! this process's demand and the others', a speculative part
//! ([`Sizing::plan`](super::sizing::Sizing::plan)). Its grant serves the waiters first, in the
//! order they came; the rest goes to the bucket with its deadline (the token horizon). Waiters
//! it could not serve while the source still had tokens move to a successor lease.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::breaker::Gate;
use super::bucket::LocalBucket;
use super::decision::RuleSummary;
use super::flight::{Answer, Flight, FlightGuard, FlightKey, Joined};
use super::inner::{wait_with, Inner};
use super::keys::TargetKey;
use super::sizing::{LeaseView, QUICK_REFILL};
use crate::clock::{duration_to_nanos, Timestamp};
use crate::{ConsumeTokensResponse, Target};

/// A lease that no runtime could take: driven by the request that started it.
pub(super) type InlineLease = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// A lease in progress: for a (user, rule) bucket, or for a (user, target) whose rule is not
/// known yet (then it asks for what the waiting requests need, and learns the rule).
pub(super) struct Lease {
    inner: Arc<Inner>,
    target: Arc<TargetKey>,
    rule: Option<RuleSummary>,
    guard: FlightGuard,
}

impl Lease {
    /// Starts a background lease for a bucket that crossed its low-water mark.
    #[cold]
    pub(super) fn refill_ahead(inner: &Arc<Inner>, user: &[u8], slot: u32, target: &Target<'_>) {
        let Ok(user) = std::str::from_utf8(user) else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let Some(rule) = inner.routes.summary(slot) else {
            return;
        };
        let now = inner.clock.now();
        let guard = inner.buckets.guard();
        let Some(target) = inner.routes.key(target, now.as_millis(), &guard) else {
            return;
        };
        drop(guard);
        let key = FlightKey::Bucket {
            user: user.into(),
            slot,
        };
        // Already in flight, or the breaker says no: nothing to do.
        let joined = inner.flights.join(&key, Vec::new(), || {
            matches!(inner.upstream.gate(now), Gate::Call)
        });
        if let Joined::Started(flight) = joined {
            let inline = Lease::start(inner, key, target, Some(rule), flight);
            debug_assert!(inline.is_none(), "a runtime is running");
        }
    }

    /// Starts the lease of a registered flight: spawned on the current tokio runtime when
    /// there is one (so that a cancelled request does not cancel what others wait for);
    /// without a runtime, returned for the caller to drive.
    #[must_use]
    pub(super) fn start(
        inner: &Arc<Inner>,
        key: FlightKey,
        target: Arc<TargetKey>,
        rule: Option<RuleSummary>,
        flight: Arc<Flight>,
    ) -> Option<InlineLease> {
        let lease = Lease {
            inner: inner.clone(),
            target,
            rule,
            guard: FlightGuard::new(flight, key, inner.flights.clone()),
        }
        .run();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(lease);
                None
            }
            Err(_) => Some(Box::pin(lease)),
        }
    }

    /// How many tokens a lease for (user, `rule`) asks for, with `waiting` tokens needed by the
    /// requests waiting for it (what the bucket has learned, sized by
    /// [`Sizing::plan`](super::sizing::Sizing::plan)); also sets the bucket's refill-ahead
    /// mark.
    fn size(
        &self,
        user: &str,
        rule: RuleSummary,
        waiting: u64,
        first_cost: u64,
        waited_since_ms: u64,
    ) -> u64 {
        let inner = &*self.inner;
        let now = inner.clock.now();
        let now_ms = now.as_millis();
        let guard = inner.buckets.guard();
        let bucket = inner.bucket(user, rule.slot, now, &guard);
        let sizing = &inner.settings.sizing;
        let view = {
            let mut learned = bucket.learned();
            let demand = learned.observe_demand(
                now_ms,
                bucket.consumed(),
                waiting,
                waited_since_ms,
                sizing.horizon,
            );
            LeaseView {
                waiting,
                first_cost,
                held: bucket.live_tokens(now_ms),
                demand: demand.rate,
                measured: demand.measured,
                demand_age: demand.age,
                others: learned.others(),
                remaining: learned.remaining(now_ms, rule),
                slow_latency: inner.upstream.slow_latency(),
                quick_refill: rule.refill_rate.tokens_in(QUICK_REFILL),
            }
        };
        let plan = sizing.plan(&view);
        bucket.set_refill_below(plan.refill_below);
        plan.ask
    }

    /// Asks the source, learns the rule, serves the waiters, files the rest, moves the waiters
    /// it cannot serve to a successor.
    async fn run(self) {
        let inner = &*self.inner;
        let user: Box<str> = self.guard.key().user().into();
        let started = inner.clock.now();
        let waiting = self.guard.flight().count_waiting();
        let first_cost = self.guard.flight().first_cost().unwrap_or(1);
        let since_ms = self.waited_since(started);
        let asked = match self.rule {
            Some(rule) => self.size(&user, rule, waiting, first_cost, since_ms),
            // Nothing known yet: just what the waiting requests need.
            None => waiting.max(1),
        };
        if asked == 0 {
            // A refill-ahead lease that found nothing worth asking for; anyone who came
            // meanwhile gets a lease of their own.
            let waiters = self.guard.close();
            if !waiters.is_empty() {
                let key = self.guard.key();
                if let Joined::Started(flight) = inner.flights.join(key, waiters, || true) {
                    let next = Lease::start(
                        &self.inner,
                        key.clone(),
                        self.target.clone(),
                        self.rule,
                        flight,
                    );
                    if let Some(lease) = next {
                        lease.await;
                    }
                }
            }
            return;
        }
        // What the default rule is charged (`tokensRequestedForDefaultBucketMatch`): the lease
        // when the default rule is leased, else one request's cost, as the SDKs do.
        let default_match = if inner.settings.lease_default_rule {
            asked
        } else {
            first_cost
        };
        let target = self.target.as_target();
        let mut answer = match inner.call(&user, &target, asked, default_match).await {
            Ok(answer) => answer,
            Err(error) => {
                for waiter in self.guard.close() {
                    let _ = waiter.reply.send(Answer::Failed(error.clone()));
                }
                return;
            }
        };
        // A server that does not grant partially answers 0 while it still has some: ask again
        // for what remains.
        let mut asked = asked;
        if answer.tokens_consumed == 0
            && answer.tokens_remaining > 0
            && answer.tokens_remaining < asked
            && inner.settings.leases(answer.rule.is_default)
        {
            let again = answer.tokens_remaining;
            if let Ok(second) = inner.call(&user, &target, again, again).await {
                answer = second;
                asked = again;
            }
        }
        if let Some(successor) = self.file(&user, asked, answer, started) {
            // No runtime: the request driving this lease drives its successor too.
            successor.await;
        }
    }

    /// Files the answer: learns the rule and the target, hands the waiters their tokens,
    /// deposits the rest with its deadline, sets the denial cache, and moves the waiters left
    /// over to a successor (returned to drive when there is no runtime) or denies them.
    fn file(
        &self,
        user: &str,
        asked: u64,
        answer: ConsumeTokensResponse,
        started: Timestamp,
    ) -> Option<InlineLease> {
        let inner = &*self.inner;
        let now = inner.clock.now();
        let now_ms = now.as_millis();
        let rule = inner.routes.learn(&answer.rule, now_ms);
        let buckets = inner.buckets.guard();
        inner.routes.remember(
            self.target.clone(),
            rule,
            now_ms,
            inner.settings.rule_ttl_ms,
            inner.settings.max_cached_targets,
            &buckets,
        );
        // `call` refuses answers granting more than asked; a second ask asks for less.
        let granted = answer.tokens_consumed.min(asked);
        let remaining = answer.tokens_remaining;
        let next = next_token(&answer, rule);
        let waiters = self.guard.close();
        if !inner.settings.leases(rule.is_default) {
            // The SDKs' way for the default rule: no local bucket; the grant is for the first
            // request, the others ask for themselves.
            inner.counters.per_request(rule.slot, granted);
            let mut waiters = waiters.into_iter();
            if let Some(first) = waiters.next() {
                let answer = if granted >= first.cost {
                    Answer::Granted {
                        rule,
                        source_remaining: remaining,
                        tokens_left: 0,
                        deadline_ms: 0,
                    }
                } else {
                    Answer::Denied {
                        rule,
                        source_remaining: remaining,
                        retry_after: wait_for(rule, first.cost, remaining, next),
                    }
                };
                let _ = first.reply.send(answer);
            }
            for waiter in waiters {
                let _ = waiter.reply.send(Answer::Again);
            }
            return None;
        }
        // The waiters first, in the order they came.
        let mut pool = granted;
        let mut served = Vec::new();
        let mut unserved = Vec::new();
        for waiter in waiters {
            if pool >= waiter.cost {
                pool -= waiter.cost;
                served.push(waiter);
            } else {
                unserved.push(waiter);
            }
        }
        // The rest is spendable for the horizon from the moment the call started (the source
        // granted it after that), less a margin for the coarse clock of the hot path.
        let deadline_ms = (started + token_life(inner.settings.sizing.horizon, rule))
            .as_millis()
            .saturating_sub(2);
        let bucket = self.file_tokens(user, rule, pool, deadline_ms, now, &buckets);
        bucket.set_source_remaining(remaining);
        bucket.touch(now_ms);
        // The source made its answer about half-way through the call.
        let answered_ms = started.as_millis() + now_ms.saturating_sub(started.as_millis()) / 2;
        {
            let mut learned = bucket.learned();
            learned.heard(answered_ms, granted, remaining, rule);
            // Served beyond what the lease was sized for: demand that came while it travelled.
            learned.served_late((granted - pool).saturating_sub(self.guard.flight().counted()));
        }
        if remaining == 0 {
            // No token can exist at the source before the next one accrues (a little before
            // it, to be safe: the source computed `next` at some time after `started`).
            let until = (started + next)
                .saturating_duration_since(Timestamp::ZERO)
                .saturating_sub(Duration::from_millis(1));
            bucket.set_denied_until(duration_to_nanos(until).max(1));
        } else {
            bucket.set_denied_until(0);
        }
        let tokens_left = bucket.live_tokens(now_ms);
        let mut returned = 0;
        for waiter in served {
            let answer = Answer::Granted {
                rule,
                source_remaining: remaining,
                tokens_left,
                deadline_ms,
            };
            match waiter.reply.send(answer) {
                Ok(()) => inner.counters.served(rule.slot, waiter.cost),
                // It stopped waiting: its tokens go to the bucket.
                Err(_) => returned += waiter.cost,
            }
        }
        if returned > 0 {
            self.file_tokens(user, rule, returned, deadline_ms, now, &buckets);
        }
        drop(buckets);
        if unserved.is_empty() {
            return None;
        }
        if granted < asked {
            // The source had less than was asked: nothing more for these. But what the bucket
            // held already, with this grant, may be enough for some (a request costing more
            // than either alone: a reservation's unused tokens came back to the bucket, say):
            // those go round again and take them (without a call, unless others took them
            // first).
            let mut held = tokens_left;
            for waiter in unserved {
                if waiter.cost <= held {
                    held -= waiter.cost;
                    let _ = waiter.reply.send(Answer::Again);
                    continue;
                }
                // What the bucket holds counts toward its cost (while it lives): it waits for
                // the rest.
                let retry_after = if remaining >= waiter.cost {
                    Duration::ZERO
                } else {
                    let cost = waiter.cost - remaining;
                    wait_with(rule, cost, held, deadline_ms, now, next)
                };
                let _ = waiter.reply.send(Answer::Denied {
                    rule,
                    source_remaining: remaining,
                    retry_after,
                });
            }
            return None;
        }
        // The source had all that was asked, but more came: a successor lease for them.
        let key = FlightKey::Bucket {
            user: user.into(),
            slot: rule.slot,
        };
        match inner.flights.join(&key, unserved, || true) {
            Joined::Started(flight) => {
                // They have waited since this lease's waiters began to: one measurement.
                flight.waited_since(self.waited_since(started));
                Lease::start(&self.inner, key, self.target.clone(), Some(rule), flight)
            }
            Joined::Waiting | Joined::Refused => None,
        }
    }

    /// Since when this lease's waiters have waited (ms): its own start, or earlier for a
    /// successor.
    fn waited_since(&self, started: Timestamp) -> u64 {
        let started_ms = started.as_millis();
        self.guard
            .flight()
            .since_ms()
            .map_or(started_ms, |since| since.min(started_ms))
    }

    /// Deposits `tokens` into the bucket of (user, rule) (a fresh one if it was swept
    /// meanwhile) and returns the bucket.
    fn file_tokens<'g>(
        &self,
        user: &str,
        rule: RuleSummary,
        tokens: u64,
        deadline_ms: u64,
        now: Timestamp,
        guard: &'g papaya::LocalGuard<'_>,
    ) -> &'g LocalBucket {
        let inner = &*self.inner;
        let now_ms = now.as_millis();
        let mut bucket = inner.bucket(user, rule.slot, now, guard);
        let mut deposit = tokens;
        loop {
            match bucket.deposit(deposit, deadline_ms, now_ms) {
                Ok(dropped) => {
                    // Counted once the bucket holds them: deposited = taken + held + lost.
                    inner.counters.deposited(rule.slot, deposit);
                    inner.counters.expired(rule.slot, dropped);
                    return bucket;
                }
                Err(back) => {
                    deposit = back;
                    inner
                        .buckets
                        .retire(user, rule.slot, bucket, &inner.counters, guard);
                    bucket = inner.bucket(user, rule.slot, now, guard);
                }
            }
        }
    }
}

/// How long a request costing `cost` waits for its tokens at a source that has `remaining` and
/// gets its next one in `next`.
pub(super) fn wait_for(rule: RuleSummary, cost: u64, remaining: u64, next: Duration) -> Duration {
    if remaining >= cost {
        return Duration::ZERO;
    }
    let more = cost - remaining - 1;
    next + rule.refill_rate.time_for(more).unwrap_or(Duration::ZERO)
}

/// How long until the source has one more token than it said: what it told us (lightrate's own
/// sources say), else a whole token's time (the hosted API does not say).
pub(super) fn next_token(answer: &ConsumeTokensResponse, rule: RuleSummary) -> Duration {
    match answer.retry_after_ms {
        Some(ms) => Duration::from_millis(ms),
        None => rule
            .refill_rate
            .time_per_token()
            .unwrap_or(Duration::from_secs(u64::from(u32::MAX))),
    }
}

/// The longest a leased token of a rule may live, however slowly it refills.
pub(crate) const MAX_TOKEN_LIFE: Duration = Duration::from_secs(3600);

/// How long a token of `rule` leased at some moment may be spent after it: the token
/// `horizon`; for a rule that refills less than one token within the horizon, the time it takes
/// to refill one (at most [`MAX_TOKEN_LIFE`]; a rule that never refills, that long).
///
/// Any number of processes then admit at most `burst + refill·T + max(refill·H, 1)` in any
/// window T: for such a rule, one token more than `burst + refill·T` at most, where a horizon of
/// a few seconds would have stranded a daily quota's tokens in processes that another limit
/// (a per-second one) held back, lost every few seconds for the rest of the day.
pub(crate) fn token_life(horizon: Duration, rule: RuleSummary) -> Duration {
    match rule.refill_rate.time_for(1) {
        Some(one) => one.clamp(horizon, MAX_TOKEN_LIFE.max(horizon)),
        None => MAX_TOKEN_LIFE.max(horizon),
    }
}
