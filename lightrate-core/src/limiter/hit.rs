//! The local hit: the target's rule and the (user, rule) bucket from this thread's memos or
//! the maps, one compare-and-swap, or the denial cache; nothing else. What it cannot decide
//! goes to the slow path (`slow.rs`).

use std::num::NonZeroU64;
use std::sync::Arc;

use super::bucket::{LocalBucket, Take};
use super::buckets::Held;
use super::decision::{Decision, RuleSummary};
use super::inner::Inner;
use super::keys::{Probe, UserProbe};
use super::lease::Lease;
use super::memo;

/// What a bucket said to a hit.
#[derive(Clone, Copy, Debug)]
pub(super) enum Tap {
    /// Served: this many left, what the source said it had left, and until when the tokens
    /// taken were spendable.
    Served {
        left: u32,
        remaining: u64,
        until_ms: u64,
    },
    /// Fewer tokens than the cost (the denial cache may answer), or the bucket died (the map
    /// has the user's bucket).
    Empty,
    /// The source must be asked (tokens past their deadline).
    Ask,
}

/// Where a local hit hands the bucket it took from, when a memo held it: nowhere (`()`, the
/// hit), or a reservation's `Option<Arc<LocalBucket>>`.
pub(super) trait Keep {
    /// Keeps `bucket`.
    fn keep(&mut self, bucket: &Arc<LocalBucket>);
}

impl Keep for () {
    #[inline(always)]
    fn keep(&mut self, _: &Arc<LocalBucket>) {}
}

impl Keep for Option<Arc<LocalBucket>> {
    #[inline]
    fn keep(&mut self, bucket: &Arc<LocalBucket>) {
        *self = Some(Arc::clone(bucket));
    }
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

/// A request's cost as the hit takes it: at least one token (a cost of 0 is 1). Clamped
/// where the cost is known, so that a constant cost costs nothing.
#[inline(always)]
pub(super) fn at_least_one(cost: u64) -> NonZeroU64 {
    NonZeroU64::new(cost).unwrap_or(NonZeroU64::MIN)
}

impl Inner {
    /// The local hit: the target's rule and the (user, rule) bucket (this thread's memos, else
    /// the maps), one compare-and-swap; or the denial cache. Writes what is decided to
    /// `decided` (left `None` when the source must be asked): the caller's own variable, so
    /// that the decision is not copied out. What it costs: [`Limiter::check_local`](super::Limiter::check_local).
    #[inline]
    pub(super) fn check_local(
        self: &Arc<Self>,
        user: &(impl UserProbe + ?Sized),
        target: &impl Probe,
        cost: u64,
        shadow: bool,
        decided: &mut Option<Decision>,
    ) {
        // A function of its own rather than every caller passing `&mut ()`: without it, the
        // hit through the map (10 000 users in turn) was laid out again and took 21
        // instructions more (BENCHMARKS.md).
        self.check_local_keeping(user, target, at_least_one(cost), shadow, decided, &mut ());
    }

    /// [`check_local`](Self::check_local), handing the bucket of a local take to `kept` when a
    /// memo held it (a reservation gives its unused tokens back to it without a look-up).
    #[inline]
    pub(super) fn check_local_keeping(
        self: &Arc<Self>,
        user: &(impl UserProbe + ?Sized),
        target: &impl Probe,
        cost: NonZeroU64,
        shadow: bool,
        decided: &mut Option<Decision>,
        kept: &mut impl Keep,
    ) {
        let cost = cost.get();
        let now_ms = self.clock.coarse_now().as_millis();
        let (limiter, generation) = self.routes.memo_key();
        // A bucket to memoize once the memos are free.
        let mut shared = None;
        let known = memo::hit(limiter, generation, now_ms, target, user, |rule, bucket| {
            if let Some(bucket) = bucket {
                match self.tap(bucket, user, target, rule.slot, cost, now_ms) {
                    Tap::Served {
                        left,
                        remaining,
                        until_ms,
                    } => {
                        let left = u64::from(left);
                        *decided = Some(Decision::local(left, remaining, *rule, until_ms));
                        kept.keep(bucket);
                        return true;
                    }
                    Tap::Ask => return true,
                    // The denial cache is read on the way through the map (the same bucket):
                    // answered here instead, the hit took 3 instructions more (BENCHMARKS.md).
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
            Tap::Served {
                left,
                remaining,
                until_ms,
            } => {
                *decided = Some(Decision::local(u64::from(left), remaining, *rule, until_ms));
            }
            Tap::Ask => return,
            Tap::Empty => {
                *decided = self.denied_here(held, *rule, cost, shadow);
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
    pub(super) fn tap(
        self: &Arc<Self>,
        bucket: &LocalBucket,
        user: &(impl UserProbe + ?Sized),
        target: &impl Probe,
        slot: u32,
        cost: u64,
        now_ms: u64,
    ) -> Tap {
        match bucket.try_take(cost, now_ms) {
            Take::Taken(left, until_ms) => {
                if self.settings.refill_ahead && bucket.crosses_low_water(left, cost) {
                    user.with_bytes(|user| {
                        target.with_target(|t| Lease::refill_ahead(self, user, slot, t));
                    });
                }
                Tap::Served {
                    // A bucket holds at most 2^24 - 1 tokens.
                    left: u32::try_from(left).unwrap_or(u32::MAX),
                    remaining: bucket.source_remaining(),
                    until_ms,
                }
            }
            Take::Empty => Tap::Empty,
            // A memoized bucket that died (replaced in the map, or swept): the map has the
            // user's bucket, as for an empty one.
            Take::Expired if bucket.is_dead() => Tap::Empty,
            Take::Expired | Take::Stale | Take::Busy => Tap::Ask,
        }
    }

    /// A local denial from the denial cache, counted.
    #[cold]
    fn denied_here(
        &self,
        bucket: &LocalBucket,
        rule: RuleSummary,
        cost: u64,
        shadow: bool,
    ) -> Option<Decision> {
        let denied = self.denied_locally(bucket, rule, cost)?;
        self.count(&Ok(denied), shadow);
        Some(denied)
    }
}
