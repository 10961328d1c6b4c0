//! [`Inner`]: what a [`Limiter`](super::Limiter) is behind its `Arc`: each part of its state
//! in the type that owns it, and what the paths of a request share (the denial cache, one call
//! to the source, counting, sweeping). The paths themselves: `hit.rs` (the local hit) and
//! `slow.rs` (the slow path); a lease: `lease.rs`.

use std::sync::Arc;
use std::time::Duration;

use super::bucket::LocalBucket;
use super::buckets::Buckets;
use super::counters::{Counted, Counters};
use super::debts::Debts;
use super::decision::{Decision, DecisionSource, RuleSummary};
use super::flight::Flights;
use super::queues::Waiting;
use super::routes::Routes;
use super::settings::Settings;
use super::upstream::Upstream;
use crate::clock::{ClockHandle, Timestamp};
use crate::source::DynTokenSource;
use crate::{ConsumeRequest, ConsumeTokensResponse, Error, Target};

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
    /// What reservations settled above their estimate owe.
    pub(super) debts: Debts,
    /// The requests waiting for their tokens.
    pub(super) waiting: Waiting,
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
            debts: Debts::default(),
            waiting: Waiting::default(),
        }
    }

    /// The denial cache: `Some` while no token can exist for this bucket yet. A request of
    /// `cost` waits for the tokens it needs beyond what the bucket holds too, at the rule's
    /// rate (a reservation of 500 refused when 450 came back to the bucket waits for 50, not
    /// for one).
    pub(super) fn denied_locally(
        &self,
        bucket: &LocalBucket,
        rule: RuleSummary,
        cost: u64,
    ) -> Option<Decision> {
        let until = bucket.denied_until();
        if until == 0 {
            return None;
        }
        let now = self.clock.now();
        if now.as_nanos() >= until {
            return None;
        }
        let now_ms = now.as_millis();
        if bucket.touched_ms() < now_ms {
            bucket.touch(now_ms);
        }
        let next = Duration::from_nanos(until - now.as_nanos());
        let wait = wait_with(rule, cost, bucket.tokens(), bucket.deadline_ms(), now, next);
        Some(Decision::denied(
            DecisionSource::DenialCache,
            wait,
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
    pub(super) fn maybe_sweep(self: &Arc<Self>) {
        let now_ms = self.clock.coarse_now().as_millis();
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
        self.routes.sweep(now.as_millis(), &guard);
    }
}

/// How long a request of `cost` waits for its tokens when the source's next one comes in
/// `next`: for those it needs beyond the `held` tokens of its bucket, if they live (until
/// `deadline_ms`) that long; else for all of them.
pub(super) fn wait_with(
    rule: RuleSummary,
    cost: u64,
    held: u64,
    deadline_ms: u64,
    now: Timestamp,
    next: Duration,
) -> Duration {
    let for_rest = |have: u64| {
        let more = cost.saturating_sub(have.saturating_add(1));
        next.saturating_add(rule.refill_rate.time_for(more).unwrap_or(Duration::ZERO))
    };
    let wait = for_rest(held);
    let done_ms = (now + wait).as_millis();
    if held > 0 && done_ms >= deadline_ms {
        // The bucket's tokens die first: they do not count.
        return for_rest(0);
    }
    wait
}
