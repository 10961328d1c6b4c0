//! Leases: how much to ask the token source for, and filing what it grants.
//!
//! A lease asks for what the waiting requests need plus, when the source has plenty next to
//! this process's demand and the others', a speculative part ([`Sizing::plan`](super::sizing::Sizing::plan)). Its grant
//! serves the waiters first, in the order they came; the rest goes to the bucket with its
//! deadline (the token horizon). Waiters it could not serve while the source still had tokens
//! move to a successor lease.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::bucket::LocalBucket;
use super::decision::RuleSummary;
use super::flight::{Answer, Flight, FlightGuard, FlightKey, Joined};
use super::keys::TargetKey;
use super::sizing::LeaseView;
use super::stats::bump;
use super::{millis, Inner};
use crate::clock::{duration_to_nanos, Timestamp};
use crate::ConsumeTokensResponse;

/// A lease that no runtime could take: driven by the request that started it.
pub(super) type InlineLease = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

impl Inner {
    /// Starts a background lease for a bucket that crossed its low-water mark.
    #[cold]
    pub(super) fn refill_ahead(self: &Arc<Self>, user: &str, slot: u32, target: &Arc<TargetKey>) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let Some(rule) = self.summary(slot) else {
            return;
        };
        let key = FlightKey::Bucket {
            user: user.into(),
            slot,
        };
        let now = self.clock.now();
        // Already in flight, or the breaker says no: nothing to do.
        let joined = self.flights.join(&key, Vec::new(), || {
            matches!(self.breaker.gate(now), super::breaker::Gate::Call)
        });
        if let Joined::Started(flight) = joined {
            let inline = self.start(key, target.clone(), Some(rule), flight);
            debug_assert!(inline.is_none(), "a runtime is running");
        }
    }

    /// Starts the lease of a registered flight: spawned on the current tokio runtime when
    /// there is one (so that a cancelled request does not cancel what others wait for);
    /// without a runtime, returned for the caller to drive.
    #[must_use]
    pub(super) fn start(
        self: &Arc<Self>,
        key: FlightKey,
        target: Arc<TargetKey>,
        rule: Option<RuleSummary>,
        flight: Arc<Flight>,
    ) -> Option<InlineLease> {
        let guard = FlightGuard::new(flight, key, self.flights.clone());
        let lease = self.clone().lease(target, rule, guard);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(lease);
                None
            }
            Err(_) => Some(Box::pin(lease)),
        }
    }

    /// How many tokens a lease for (user, `rule`) asks for, with `waiting` tokens needed by the
    /// requests waiting for it ([`Sizing::plan`](super::sizing::Sizing::plan) over what the bucket has learned); also sets
    /// the bucket's refill-ahead mark.
    fn lease_size(&self, user: &str, rule: RuleSummary, waiting: u64, first_cost: u64) -> u64 {
        let now_ms = millis(self.clock.now());
        let guard = self.buckets.guard();
        let bucket = self.bucket(user, rule, now_ms, &guard);
        let view = {
            let mut learned = bucket.learned();
            let (demand, demand_age) =
                learned.observe_demand(now_ms, bucket.consumed(), waiting, self.sizing.horizon);
            LeaseView {
                waiting,
                first_cost,
                held: bucket.live_tokens(now_ms),
                demand,
                demand_age,
                others: learned.others(),
                remaining: learned.remaining(now_ms, rule),
                slow_latency: self.latencies.slow(),
            }
        };
        let plan = self.sizing.plan(&view);
        bucket.set_refill_below(plan.refill_below);
        plan.ask
    }

    /// One lease: ask the source for tokens, learn the rule, serve the waiters, file the rest,
    /// move the waiters it cannot serve to a successor.
    async fn lease(
        self: Arc<Self>,
        target: Arc<TargetKey>,
        rule: Option<RuleSummary>,
        guard: FlightGuard,
    ) {
        let user: Box<str> = guard.key().user().into();
        let started = self.clock.now();
        let waiting = guard.flight().demand();
        let first_cost = guard.flight().first_cost().unwrap_or(1);
        let asked = match rule {
            Some(rule) => self.lease_size(&user, rule, waiting, first_cost),
            // Nothing known yet: just what the waiting requests need.
            None => waiting.max(1),
        };
        if asked == 0 {
            // A refill-ahead lease that found nothing worth asking for; anyone who came
            // meanwhile gets a lease of their own.
            let waiters = guard.close();
            if !waiters.is_empty() {
                if let Joined::Started(flight) = self.flights.join(guard.key(), waiters, || true) {
                    if let Some(lease) = self.start(guard.key().clone(), target, rule, flight) {
                        lease.await;
                    }
                }
            }
            return;
        }
        // What the default rule is charged (`tokensRequestedForDefaultBucketMatch`): the lease
        // when the default rule is leased, else one request's cost, as the SDKs do.
        let default_match = if self.lease_default_rule {
            asked
        } else {
            first_cost
        };
        let target_ref = target.as_target();
        let mut answer = match self
            .call(&user, &target_ref, asked, Some(default_match))
            .await
        {
            Ok(answer) => answer,
            Err(error) => {
                for waiter in guard.close() {
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
            && (!answer.rule.is_default || self.lease_default_rule)
        {
            let again = answer.tokens_remaining;
            if let Ok(second) = self.call(&user, &target_ref, again, Some(again)).await {
                answer = second;
                asked = again;
            }
        }
        if let Some(successor) = self.file(&user, &target, asked, answer, started, &guard) {
            // No runtime: the request driving this lease drives its successor too.
            successor.await;
        }
    }

    /// Files a lease's answer: learns the rule and the target, hands the waiters their tokens,
    /// deposits the rest with its deadline, sets the denial cache, and moves the waiters left
    /// over to a successor (returned to drive when there is no runtime) or denies them.
    fn file(
        self: &Arc<Self>,
        user: &str,
        target: &Arc<TargetKey>,
        asked: u64,
        answer: ConsumeTokensResponse,
        started: Timestamp,
        guard: &FlightGuard,
    ) -> Option<InlineLease> {
        let now = self.clock.now();
        let now_ms = millis(now);
        let rule = self.learn(&answer.rule, now_ms);
        self.remember(target.clone(), rule, now_ms);
        // `call` refuses answers granting more than asked; a second ask asks for less.
        let granted = answer.tokens_consumed.min(asked);
        let remaining = answer.tokens_remaining;
        let next = next_token(&answer, rule);
        let waiters = guard.close();
        if rule.is_default && !self.lease_default_rule {
            // The SDKs' way for the default rule: no local bucket; the grant is for the first
            // request, the others ask for themselves.
            bump(&self.counters.per_request_tokens, granted);
            let mut waiters = waiters.into_iter();
            if let Some(first) = waiters.next() {
                let answer = if granted >= first.cost {
                    bump(&self.counters.allowed_by_source, 1);
                    Answer::Granted {
                        rule,
                        source_remaining: remaining,
                        tokens_left: 0,
                    }
                } else {
                    bump(&self.counters.denied_by_source, 1);
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
        let deadline_ms = millis(started + self.sizing.horizon).saturating_sub(2);
        let buckets = self.buckets.guard();
        let bucket = self.file_tokens(user, rule, pool, deadline_ms, now_ms, &buckets);
        // Counted once the bucket holds its part: leased = admitted + held + lost, always.
        bump(&self.counters.leased_tokens, granted);
        bucket.set_source_remaining(remaining);
        // The source made its answer about half-way through the call.
        let answered_ms = millis(started) + now_ms.saturating_sub(millis(started)) / 2;
        bucket
            .learned()
            .heard(answered_ms, granted, remaining, rule);
        bucket.touch(now_ms);
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
            };
            match waiter.reply.send(answer) {
                Ok(()) => {
                    bump(&self.counters.allowed_by_source, 1);
                    bump(&self.counters.taken_after_lease, waiter.cost);
                }
                // It stopped waiting: its tokens go to the bucket.
                Err(_) => returned += waiter.cost,
            }
        }
        if returned > 0 {
            self.file_tokens(user, rule, returned, deadline_ms, now_ms, &buckets);
        }
        drop(buckets);
        if unserved.is_empty() {
            return None;
        }
        if granted < asked {
            // The source had less than was asked: nothing for these.
            for waiter in unserved {
                bump(&self.counters.denied_by_source, 1);
                let retry_after = wait_for(rule, waiter.cost, remaining, next);
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
        match self.flights.join(&key, unserved, || true) {
            Joined::Started(flight) => self.start(key, target.clone(), Some(rule), flight),
            Joined::Waiting | Joined::Refused => None,
        }
    }

    /// Deposits `tokens` into the bucket of (user, rule) (a fresh one if it was swept
    /// meanwhile) and returns the bucket.
    fn file_tokens<'g>(
        &self,
        user: &str,
        rule: RuleSummary,
        tokens: u64,
        deadline_ms: u64,
        now_ms: u64,
        guard: &'g papaya::LocalGuard<'_>,
    ) -> &'g LocalBucket {
        let mut bucket = self.bucket(user, rule, now_ms, guard);
        self.tally.deposited(rule.slot, tokens);
        let mut deposit = tokens;
        loop {
            match bucket.deposit(deposit, deadline_ms, now_ms) {
                Ok(dropped) => {
                    self.lose(rule.slot, dropped);
                    return bucket;
                }
                Err(back) => {
                    deposit = back;
                    self.retire(user, rule.slot, bucket, guard);
                    bucket = self.bucket(user, rule, now_ms, guard);
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
