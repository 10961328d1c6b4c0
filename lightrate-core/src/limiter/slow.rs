//! The slow path of a request: the identifier checked, then round by round the bucket, the
//! denial cache, a lease joined or started, and the answer it brings; the SDKs' one call per
//! request for the default rule; the outage policy.
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

use super::breaker::Gate;
use super::bucket::Take;
use super::decision::{Decision, DecisionSource, RuleSummary};
use super::flight::{Answer, FlightKey, Joined, Waiter};
use super::inner::Inner;
use super::keys::TargetKey;
use super::lease::{next_token, wait_for, InlineLease, Lease};
use super::settings::OnUnavailable;
use crate::clock::Timestamp;
use crate::{Error, ErrorKind, Target};

/// How many times a request may go round (the SDKs' per-request mode, where a grant serves one
/// request, or a rule that keeps changing) before it is denied.
const ROUNDS: usize = 16;

impl Inner {
    /// The slow path: the identifier checked, then round by round the bucket, the denial
    /// cache, a lease.
    pub(super) async fn check_slow(
        self: Arc<Self>,
        user: Box<str>,
        target: Target<'static>,
        cost: u64,
    ) -> Result<Decision, Error> {
        self.check_slow_granting(user, target, cost)
            .await
            .map(|(decision, _)| decision)
    }

    /// [`check_slow`](Self::check_slow), and for a request a lease granted its tokens, until
    /// when the lease's tokens are spendable (ms; 0 otherwise): where they go back if another
    /// limit refuses the request.
    pub(super) async fn check_slow_granting(
        self: Arc<Self>,
        user: Box<str>,
        target: Target<'static>,
        cost: u64,
    ) -> Result<(Decision, u64), Error> {
        crate::protocol::check_user_identifier(&user)?;
        self.maybe_sweep();
        let mut last_rule = None;
        for _ in 0..ROUNDS {
            let now = self.clock.now();
            let resolved = {
                let guard = self.buckets.guard();
                self.routes.resolve(
                    &target,
                    now.as_millis(),
                    self.settings.rule_ttl_ms,
                    self.settings.max_cached_targets,
                    &guard,
                )
            };
            let (key, lease_target, rule) = match resolved {
                None => {
                    if let Some(rule) = self.debts.rule_of(&user, &target) {
                        if let Some(refused) = self.repay(&user, rule, cost).await {
                            return Ok((refused, 0));
                        }
                    }
                    (
                        FlightKey::Target {
                            user: user.clone(),
                            target: TargetKey::from_target(&target),
                        },
                        Arc::new(TargetKey::from_target(&target)),
                        None,
                    )
                }
                Some((rule, target_key)) => {
                    last_rule = Some(rule);
                    // What a reservation used beyond its estimate is charged first.
                    if let Some(refused) = self.repay(&user, rule, cost).await {
                        return Ok((refused, 0));
                    }
                    if !self.settings.leases(rule.is_default) {
                        return self
                            .per_request(&user, &target, cost, now)
                            .await
                            .map(|d| (d, 0));
                    }
                    if let Some(decision) = self.take_or_deny(&user, rule, cost, now) {
                        return Ok((decision, 0));
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
                Err((error, retry_after)) => {
                    return self.unavailable(error, retry_after).map(|d| (d, 0))
                }
            }
            if let Some(result) = self.answered(answer.await) {
                return result;
            }
        }
        // The rule kept changing under this request: denied, never admitted without a token.
        Ok((
            match last_rule {
                Some(rule) => {
                    Decision::denied(DecisionSource::TokenSource, Duration::ZERO, 0, rule)
                }
                None => {
                    Decision::unavailable(false, ErrorKind::Unavailable, Duration::from_secs(1))
                }
            },
            0,
        ))
    }

    /// What a request that waited for a lease gets from its answer; `None` to go round again.
    fn answered(
        &self,
        answer: Result<Answer, oneshot::error::RecvError>,
    ) -> Option<Result<(Decision, u64), Error>> {
        let decided = match answer {
            Ok(Answer::Granted {
                rule,
                source_remaining,
                tokens_left,
                deadline_ms,
            }) => {
                return Some(Ok((
                    Decision {
                        source: DecisionSource::TokenSource,
                        ..Decision::local(tokens_left, source_remaining, rule, 0)
                    },
                    deadline_ms,
                )))
            }
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
        };
        decided.map(|checked| checked.map(|d| (d, 0)))
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
        let now_ms = now.as_millis();
        let guard = self.buckets.guard();
        let bucket = self.bucket(user, rule.slot, now, &guard);
        loop {
            match bucket.try_take(cost, now_ms) {
                Take::Taken(left, until_ms) => {
                    let remaining = bucket.source_remaining();
                    return Some(Decision::local(left, remaining, rule, until_ms));
                }
                Take::Stale => self.counters.expired(rule.slot, bucket.drop_stale(now_ms)),
                // A deposit is changing the bucket, for a few instructions.
                Take::Busy => bucket.wait_for_deposit(),
                Take::Expired => {
                    if bucket.is_dead() {
                        return None;
                    }
                    self.counters.expired(rule.slot, bucket.expire(now_ms));
                }
                Take::Empty => return self.denied_locally(bucket, rule, cost),
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
                let now_ms = self.clock.now().as_millis();
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
                        ..Decision::local(0, remaining, rule, 0)
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
