//! The slow path: asking the token source, single flight, filing what it grants.
//!
//! A bucket lives inline in the map and is borrowed under an epoch guard, which cannot be held
//! across an `.await`: every block that borrows a bucket ends before the next await, and a
//! request that waited finds its bucket again by key.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::breaker::Gate;
use super::bucket::{LocalBucket, Take};
use super::decision::{Decision, DecisionSource, RuleSummary};
use super::flight::{Flight, FlightGuard, FlightKey, Outcome};
use super::keys::{BucketRef, TargetKey};
use super::stats::bump;
use super::{millis, Inner, OnUnavailable};
use crate::clock::{duration_to_nanos, Timestamp};
use crate::MAX_USER_IDENTIFIER_BYTES;
use crate::{ConsumeRequest, ConsumeTokensResponse, Error, ErrorKind, Target};

/// How much a lease asks for.
#[derive(Clone, Copy, Debug)]
pub(super) enum Lease {
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

impl Inner {
    /// Starts a background lease for a bucket that fell to its low-water mark.
    #[cold]
    pub(super) fn refill_ahead(self: &Arc<Self>, user: &str, slot: u32, target: &Arc<TargetKey>) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let key = FlightKey::Bucket {
            user: user.into(),
            slot,
        };
        let size = Lease::Batch {
            tokens: self.lease_size,
            cost: 1,
        };
        // Already in flight, or the breaker says no: nothing to do.
        let _ = self.join_or_start(key, || size, target, self.clock.now());
    }

    pub(super) async fn check_slow(
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
            let Some((rule, target_key)) = self.resolve(&target, now_ms) else {
                let key = FlightKey::Target {
                    user: user.clone(),
                    target: TargetKey::from_target(&target),
                };
                let lease_target = Arc::new(TargetKey::from_target(&target));
                // A user who already holds tokens gets a probe that charges only this
                // request: leasing a batch on top would charge the user for tokens that may
                // never be used (a stream of new concrete paths under one rule).
                let size = || {
                    if self.holds_tokens(&user, cost, now_ms) {
                        Lease::Probe(cost)
                    } else {
                        Lease::Batch {
                            tokens: self.lease_size.max(cost),
                            cost,
                        }
                    }
                };
                let (flight, inline) = match self.join_or_start(key, size, &lease_target, now) {
                    Ok(joined) => joined,
                    Err((error, retry_after)) => return self.unavailable(error, retry_after),
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
            {
                let guard = self.buckets.guard();
                let bucket = self.bucket(&user, rule, now_ms, &guard);
                match bucket.try_take(cost, now_ms, self.bucket_ttl_ms) {
                    Take::Taken(left) => {
                        return Ok(Decision::local(left, bucket.source_remaining(), rule));
                    }
                    Take::Expired => {
                        self.retire(&user, rule.slot, bucket, &guard);
                        continue;
                    }
                    Take::Empty => {}
                }
                if let Some(decision) = self.denied_locally(bucket, rule) {
                    return Ok(decision);
                }
                if waited {
                    // Our lease was shared out before we got a token: never lease twice.
                    return Ok(self.shared_out(bucket, rule));
                }
            }
            let key = FlightKey::Bucket {
                user: user.clone(),
                slot: rule.slot,
            };
            let size = || Lease::Batch {
                tokens: self.lease_size.max(cost),
                cost,
            };
            let (flight, inline) = match self.join_or_start(key, size, &target_key, now) {
                Ok(joined) => joined,
                Err((error, retry_after)) => return self.unavailable(error, retry_after),
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

    /// Joins the lease in flight for `key`, or starts one of `size()` sending `target`.
    /// `Err` when the breaker forbids calling.
    #[allow(clippy::type_complexity)]
    fn join_or_start(
        self: &Arc<Self>,
        key: FlightKey,
        size: impl FnOnce() -> Lease,
        target: &Arc<TargetKey>,
        now: Timestamp,
    ) -> Result<(Arc<Flight>, Option<InlineLease>), (Error, Duration)> {
        let mut flights = self.flights.lock(&key);
        if let Some(flight) = flights.get(&key).filter(|f| !f.is_done()) {
            return Ok((flight.clone(), None));
        }
        if let Gate::Blocked { error, retry_after } = self.breaker.gate(now) {
            return Err((error, retry_after));
        }
        let flight = Flight::new();
        flights.insert(key.clone(), flight.clone());
        drop(flights);
        let user = match &key {
            FlightKey::Bucket { user, .. } | FlightKey::Target { user, .. } => user.clone(),
        };
        let inline = self.start(user, target.clone(), size(), &flight, key);
        Ok((flight, inline))
    }

    /// What a request that waited for `flight` gets; `None` to go round again (a per-request
    /// grant someone else claimed).
    async fn after_flight(
        &self,
        user: &str,
        flight: &Flight,
        cost: u64,
    ) -> Option<Result<Decision, Error>> {
        let outcome = flight.wait().await;
        let (rule, granted, source_remaining, retry_after, per_request) = match outcome {
            Outcome::Failed(error) => {
                let retry_after = error.retry_after().unwrap_or(Duration::from_secs(1));
                return Some(self.unavailable(error, retry_after));
            }
            Outcome::Leased {
                rule,
                granted,
                source_remaining,
                retry_after,
            } => (rule, granted, source_remaining, retry_after, false),
            Outcome::PerRequest {
                rule,
                granted,
                source_remaining,
                retry_after,
            } => (rule, granted, source_remaining, retry_after, true),
        };
        if per_request && granted >= cost && flight.claim() {
            return Some(Ok(self.per_request_decision(
                rule,
                granted,
                cost,
                source_remaining,
                retry_after,
            )));
        }
        // Take from the bucket of the rule the source named (tokens the lease filed, or, after
        // a probe, tokens already held for that rule).
        if let Some(decision) = self.take_after_lease(user, rule, cost) {
            return Some(Ok(decision));
        }
        if per_request {
            if granted >= cost {
                // Someone else claimed the grant: go round and ask for ourselves.
                return None;
            }
            return Some(Ok(self.per_request_decision(
                rule,
                granted,
                cost,
                source_remaining,
                retry_after,
            )));
        }
        bump(&self.counters.denied_by_source, 1);
        let retry_after = if granted == 0 {
            retry_after
        } else if source_remaining >= cost {
            Duration::ZERO
        } else {
            time_for(rule, cost, self.bucket_ttl_ms)
        };
        Some(Ok(Decision::denied(
            DecisionSource::TokenSource,
            retry_after,
            source_remaining,
            rule,
        )))
    }

    /// A request that waited for a lease takes its tokens from the bucket.
    fn take_after_lease(&self, user: &str, rule: RuleSummary, cost: u64) -> Option<Decision> {
        let now_ms = millis(self.clock.coarse_now());
        let guard = self.buckets.guard();
        let key = BucketRef {
            user,
            slot: rule.slot,
        };
        let bucket = self.buckets.get(&key, &guard)?;
        match bucket.try_take(cost, now_ms, self.bucket_ttl_ms) {
            Take::Taken(left) => {
                bump(&self.counters.allowed_by_source, 1);
                bump(&self.counters.taken_after_lease, cost);
                Some(Decision {
                    source: DecisionSource::TokenSource,
                    ..Decision::local(left, bucket.source_remaining(), rule)
                })
            }
            _ => None,
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
    fn shared_out(&self, bucket: &LocalBucket, rule: RuleSummary) -> Decision {
        bump(&self.counters.denied_by_source, 1);
        let remaining = bucket.source_remaining();
        let retry_after = if remaining > 0 {
            Duration::ZERO
        } else {
            time_for(rule, 1, self.bucket_ttl_ms)
        };
        Decision::denied(DecisionSource::TokenSource, retry_after, remaining, rule)
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
                self.remember(Arc::new(TargetKey::from_target(target)), rule, now_ms);
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
        key: FlightKey,
    ) -> Option<InlineLease> {
        let lease = self
            .clone()
            .lease(user, target, size, FlightGuard::new(flight.clone()), key);
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
        key: FlightKey,
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
                    }
                }
                self.file(&user, &target, size, answer)
            }
        };
        self.flights.remove(&key, guard.flight());
        guard.finish(outcome);
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
        self.remember(target.clone(), rule, now_ms);
        // `call` refuses answers granting more than asked; a second ask asks for less.
        let granted = answer.tokens_consumed.min(size.tokens());
        let retry_after = time_for(rule, 1, self.bucket_ttl_ms);
        // The SDKs' way for the default rule: no local bucket at all.
        let sdk_default = rule.is_default && !self.lease_default_rule;
        let guard = self.buckets.guard();
        if sdk_default || matches!(size, Lease::Probe(_)) {
            bump(&self.counters.per_request_tokens, granted);
            if granted == 0 && !sdk_default {
                let bucket = self.bucket(user, rule, now_ms, &guard);
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
        let mut bucket = self.bucket(user, rule, now_ms, &guard);
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
                    self.retire(user, rule.slot, bucket, &guard);
                    bucket = self.bucket(user, rule, now_ms, &guard);
                }
            }
        }
        bump(&self.counters.leased_tokens, granted);
        bucket.set_source_remaining(answer.tokens_remaining);
        if granted == 0 {
            bucket.set_denied_until((now + retry_after).as_nanos().max(1));
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
}

/// How long `cost` tokens of `rule` take to accrue; the bucket TTL when the rule never
/// refills.
pub(super) fn time_for(rule: RuleSummary, cost: u64, ttl_ms: u64) -> Duration {
    match rule.refill_rate.time_per_token() {
        Some(per_token) => {
            let nanos = duration_to_nanos(per_token).saturating_mul(cost.max(1));
            Duration::from_nanos(nanos)
        }
        None => Duration::from_millis(ttl_ms),
    }
}
