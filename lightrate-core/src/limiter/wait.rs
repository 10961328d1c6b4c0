//! Waiting instead of refusing: [`Limiter::acquire`], and the queues of the requests that wait
//! for their tokens.
//!
//! A request that its limits refuse, and whose tokens can exist within its wait, joins the
//! queue of its first limit's (user, target), first come first served. Only the queue's head
//! is awake: it sleeps (on the limiter's clock) until the refusal's `Retry-After`, which the
//! rule's refill rate and the source's answers give, then asks again; the others are parked
//! in the queue's lock, woken one by one as the head before them is served. So waiting costs
//! no CPU and no calls: the source is asked once per wake of the head, when its tokens should
//! exist. A request that would have to wait past its wait (the refusal's `Retry-After`, plus
//! the tokens the requests queued before it need, at the rule's rate) is refused at once with
//! that time. A waiter that goes away (its future dropped) leaves the queue and takes nothing.

use std::time::Duration;

use super::decision::{Decision, DecisionSource, RuleSummary};
use super::handle::Limiter;
use super::queues::QueueKey;
use super::reserve::Reservation;
use super::several::{Decisions, Limit};
use crate::clock::duration_to_nanos;
use crate::sync::lock;
use crate::Error;

impl Limiter {
    /// Reserves a request's limits as [`reserve`](Self::reserve) does, waiting up to
    /// `max_wait` for their tokens instead of being refused: first come, first served among
    /// the requests that wait on the same (user, target) of their first limit. Refused at
    /// once, without waiting, when the tokens cannot exist within `max_wait`: the refusal's
    /// `retry_after` is then the time they can.
    ///
    /// Cancel-safe: dropped while it waits, it leaves the queue and takes nothing. Waiting
    /// costs no CPU and no calls to the source: it sleeps on the limiter's clock until the
    /// tokens should exist (with a little jitter, so that a fleet's waiters do not all ask at
    /// once), then asks.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lightrate_core::{EmbeddedSource, Limit, Limiter, RefillRate, RuleSet, Target};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lightrate_core::Error> {
    /// let rules = RuleSet::builder()
    ///     .default_rule(RefillRate::per_second(1), 5)
    ///     .operation("jobs", "^jobs$", RefillRate::per_second(50), 1)
    ///     .build()?;
    /// let limiter = Limiter::new(EmbeddedSource::new(rules));
    /// let limits = [Limit::new("alice", Target::operation("jobs"))];
    /// for _ in 0..3 {
    ///     // The burst is 1: the next ones wait about 20 ms each for theirs.
    ///     let reservation = limiter.acquire(&limits, Duration::from_secs(1)).await?;
    ///     assert!(reservation.is_allowed());
    ///     reservation.settle(&[]);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn acquire(
        &self,
        limits: &[Limit<'_>],
        max_wait: Duration,
    ) -> Result<Reservation, Error> {
        let Some(first) = limits.first() else {
            return self.reserve(limits).await;
        };
        // Written out only when a queue is looked for: a request that nobody waits before and
        // that is admitted at once (the common case) allocates nothing for it.
        let queue_key =
            || -> QueueKey { (Box::from(first.user()), format!("{:?}", first.target())) };
        let clock = &self.inner.clock;
        let deadline = clock
            .now()
            .as_nanos()
            .saturating_add(duration_to_nanos(max_wait));
        // Ahead of no one: tried at once. Behind others: it takes its turn, first come first
        // served, even if tokens exist now (they are the head's).
        let busy = self.inner.waiting.any() && self.inner.waiting.busy(&queue_key());
        let (mut refused, rule) = if busy {
            (None, None)
        } else {
            let tried = self.reserve(limits).await?;
            if tried.is_allowed() || max_wait.is_zero() {
                return Ok(tried);
            }
            let Some((index, refusal)) = deciding_refusal(&tried) else {
                // Not a rate limit (the source is down and the policy refuses): no wait helps.
                return Ok(tried);
            };
            (Some(tried), refusal.rule().map(|rule| (rule, index)))
        };
        let key = queue_key();
        // What it needs of the limit its queue waits on (the head's refusal says which).
        let known = rule.or_else(|| self.inner.waiting.rule_of(&key));
        let cost = known
            .and_then(|(_, index)| limits.get(index))
            .map_or(first.cost(), Limit::cost);
        let (place, before) = self.inner.waiting.join(key, cost);
        if let Some((rule, index)) = known {
            *lock(&place.queue.rule) = Some((rule, index));
            // What it waits for itself (tried now), then the tokens of those before it, at the
            // rule's rate; not tried (the queue was busy), the time for all of them and its own.
            let rate = rule.refill_rate;
            let estimate = match &refused {
                Some(tried) => tried
                    .retry_after()
                    .saturating_add(rate.time_for(before).unwrap_or(Duration::MAX)),
                None => rate
                    .time_for(before.saturating_add(cost))
                    .unwrap_or(Duration::MAX),
            };
            let now = clock.now().as_nanos();
            if now.saturating_add(duration_to_nanos(estimate)) > deadline {
                return Ok(match refused {
                    Some(refused) => refused.waited(estimate),
                    None => self.refused_behind(limits, rule, estimate),
                });
            }
        }
        let _turn = place.queue.turn.lock().await;
        loop {
            let tried = match refused.take() {
                // Refused just now, before it queued: no need to ask again.
                Some(tried) if before == 0 => tried,
                _ => self.reserve(limits).await?,
            };
            if tried.is_allowed() {
                return Ok(tried);
            }
            let Some((index, refusal)) = deciding_refusal(&tried) else {
                return Ok(tried);
            };
            if let Some(rule) = refusal.rule() {
                *lock(&place.queue.rule) = Some((rule, index));
            }
            let wait = tried.retry_after().max(Duration::from_millis(1));
            let now = clock.now().as_nanos();
            // Once in the queue, a waiter whose tokens come a little late (those before it woke
            // a little after theirs, and a bucket that was full meanwhile lost some refill) is
            // served up to a sixteenth of its wait late rather than refused after waiting.
            let left = deadline
                .saturating_add(duration_to_nanos(max_wait) / 16)
                .saturating_sub(now);
            if duration_to_nanos(wait) > left {
                return Ok(tried);
            }
            // A little jitter (at most 1/32 of the wait, 2 ms), within the deadline.
            let spare = left - duration_to_nanos(wait);
            let most = (duration_to_nanos(wait) / 32).min(2_000_000).min(spare);
            let jitter = Duration::from_nanos(fastrand::u64(0..=most));
            drop(tried);
            // Until its tokens should exist, or tokens of its user come back (a reservation
            // settled below its estimate), whichever is first.
            tokio::select! {
                () = clock.sleep(wait + jitter) => {}
                () = place.queue.woken.notified() => {}
            }
        }
    }

    /// The refusal of a request that would wait `estimate` behind the queue of its first
    /// limit, where it was not tried (the tokens that exist are the queue's head's).
    fn refused_behind(
        &self,
        limits: &[Limit<'_>],
        rule: RuleSummary,
        estimate: Duration,
    ) -> Reservation {
        let mut decisions = Decisions::undecided(limits.len());
        decisions.set(
            0,
            Decision::denied(DecisionSource::LocalBucket, estimate, 0, rule),
        );
        let owned = limits.iter().map(Limit::to_owned_parts).collect();
        Reservation::new(self.clone(), owned, decisions, Vec::new())
    }
}

/// The refusal that speaks for a refused reservation, with its limit's place; `None` when it
/// is not a rate limit's (the outage policy).
fn deciding_refusal(reservation: &Reservation) -> Option<(usize, Decision)> {
    reservation
        .decisions()
        .refusing()
        .filter(|(_, d)| d.is_rate_limit_refusal())
        .max_by_key(|(_, d)| d.retry_after())
        .map(|(index, d)| (index, *d))
}
