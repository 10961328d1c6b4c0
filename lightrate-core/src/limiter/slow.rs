//! The slow path of a request: the bucket again, the denial cache, then a lease (joined or
//! started), and the answer it brings.
//!
//! A bucket lives inline in the map and is borrowed under an epoch guard, which cannot be held
//! across an `.await`: every block that borrows a bucket ends before the next await.
//!
//! A request that finds no token registers on the lease in flight for its bucket (or starts
//! one) and waits for its own answer ([`Answer`]): its tokens handed over from the grant, a
//! denial because the source had less than was asked, or the source's failure (the outage
//! policy decides). A request is denied only then, or by the denial cache.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::breaker::Gate;
use super::bucket::Take;
use super::decision::{Decision, DecisionSource, RuleSummary};
use super::flight::{Answer, FlightKey, Joined, Waiter};
use super::keys::TargetKey;
use super::lease::{next_token, wait_for, InlineLease};
use super::stats::bump;
use super::{millis, Inner, OnUnavailable};
use crate::clock::Timestamp;
use crate::{Error, ErrorKind, Target, MAX_USER_IDENTIFIER_BYTES};

/// How many times a request may go round (the SDKs' per-request mode, where a grant serves one
/// request, or a rule that keeps changing) before it is denied.
const ROUNDS: usize = 16;

impl Inner {
    pub(super) async fn check_slow(
        self: Arc<Self>,
        user: Box<str>,
        target: Target<'static>,
        cost: u64,
    ) -> Result<Decision, Error> {
        if user.trim().is_empty() || user.len() > MAX_USER_IDENTIFIER_BYTES {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "the user identifier must be non-blank and at most \
                     {MAX_USER_IDENTIFIER_BYTES} bytes"
                ),
            ));
        }
        self.maybe_sweep();
        let mut last_rule = None;
        for _ in 0..ROUNDS {
            let now = self.clock.now();
            let now_ms = millis(now);
            let (key, lease_target, rule) = match self.resolve(&target, now_ms) {
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
                    if rule.is_default && !self.lease_default_rule {
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
            match self.join_or_start(key, &lease_target, rule, waiter, now) {
                Ok(Some(lease)) => lease.await,
                Ok(None) => {}
                Err((error, retry_after)) => return self.unavailable(error, retry_after),
            }
            if let Some(result) = self.answered(answer.await) {
                return result;
            }
        }
        // The rule kept changing under this request: denied, never admitted without a token.
        bump(&self.counters.denied_by_source, 1);
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
        let bucket = self.bucket(user, rule, now_ms, &guard);
        loop {
            match bucket.try_take(cost, now_ms) {
                Take::Taken(left) => {
                    return Some(Decision::local(left, bucket.source_remaining(), rule))
                }
                Take::Stale => self.lose(rule.slot, bucket.drop_stale(now_ms)),
                Take::Expired => {
                    if bucket.is_dead() {
                        return None;
                    }
                    self.lose(rule.slot, bucket.expire(now_ms));
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
        target: &Arc<TargetKey>,
        rule: Option<RuleSummary>,
        waiter: Waiter,
        now: Timestamp,
    ) -> Result<Option<InlineLease>, (Error, Duration)> {
        let mut blocked = None;
        let joined = self
            .flights
            .join(&key, vec![waiter], || match self.breaker.gate(now) {
                Gate::Call => true,
                Gate::Blocked { error, retry_after } => {
                    blocked = Some((error, retry_after));
                    false
                }
            });
        match joined {
            Joined::Waiting => Ok(None),
            Joined::Started(flight) => Ok(self.start(key, target.clone(), rule, flight)),
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
                let next = next_token(&answer, rule);
                let retry_after = wait_for(rule, cost, answer.tokens_remaining, next);
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
