//! Lease sizing: how many tokens one call to the source asks for, as a pure function of what
//! a bucket knows ([`LeaseView`]) and the limiter's settings ([`Sizing`]).
//!
//! A lease asks for what the requests waiting for it need, plus a *speculative* part for the
//! requests this process expects next, so that they are answered locally:
//!
//! - **Demand**: the speculative part is what this process's demand for the bucket uses in a
//!   *span*: at least `max(4 × the source's slow latency, 100 ms)` (a lease outlasts the call
//!   that fetches the next one), at most three quarters of the token horizon (so that steady
//!   demand spends every token before it expires), and at most twice as long as the demand has
//!   lasted so far
//!   (a short burst does not lease seconds of tokens it may never use). Less what the bucket
//!   still holds. Nothing, when either limit comes to fewer than 3 tokens: thin demand may be
//!   a coincidence, and a little left is left for the others (near the limit, a lease is one
//!   request's cost).
//!   Except for what the rule refills in a tenth of a second ([`QUICK_REFILL`]): a
//!   speculative part within that may cover the longest span of the demand however young it
//!   is, as leasing it costs the others nothing they would miss for long (the share below
//!   still bounds it). A young key on an ample rule is so sized at its first speculative
//!   lease, from the requests that waited for the rule's first answer, which are a demand
//!   measurement: a hot key needs no ramp of leases to reach full speed.
//! - **Scarcity**: never more than this process's share of what the source has left, by
//!   demand, with the other consumers' take (what the source's answers show beyond this
//!   process's own use) counted twice: `remaining × own / (own + 2 × others)`. Alone on a
//!   bucket a process may lease what is left; beside busy others, a small part of it; before
//!   two answers have shown how fast the source's level falls, an eighth of it.
//!   The refill rate alone never decides: scarcity is what is left next to who takes it.
//! - **Floor** (`min_lease_size`): a lease asks at least that many when the source has twice
//!   that left, whatever the demand.
//! - **Cap** (`lease_size`): a lease never asks for more, but always for the first waiting
//!   request's cost.
//!
//! The refill-ahead mark is set with it: when the bucket falls below two slow source
//! latencies of demand (the slow latency is a high percentile of recent calls, not their
//! average, so that a slower answer does not empty the bucket), the next lease starts in the
//! background.

use std::time::Duration;

/// The shortest span a speculative lease is sized to last.
const MIN_SPAN: Duration = Duration::from_millis(100);

/// A speculative lease lasts at most this many times as long as the demand has lasted...
const PERSISTENCE: u32 = 2;

/// ...unless it is within what the rule refills in this long: then it may last the longest
/// span, however young the demand.
pub(crate) const QUICK_REFILL: Duration = Duration::from_millis(100);

/// How many times their demand the other consumers of a bucket are left of what remains.
const OTHERS_WEIGHT: f64 = 2.0;

/// The share of what is left a process may lease before two answers have shown what the
/// others take.
const UNKNOWN_SHARE: f64 = 1.0 / 8.0;

/// A speculative part smaller than this is not worth its risk: the demand seen may be a
/// coincidence of two requests (sparse traffic would lose such tokens unspent), or what is
/// left too little to share.
const MIN_SPECULATION: u64 = 3;

/// The limiter's settings that sizing reads.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sizing {
    /// The most tokens one lease asks for (`lease_size`).
    pub(crate) cap: u64,
    /// The least a lease asks for when the source has room (`min_lease_size`).
    pub(crate) floor: u64,
    /// How long a leased token may be spent (H).
    pub(crate) horizon: Duration,
}

/// What a bucket knows when it starts a lease.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct LeaseView {
    /// Tokens the requests waiting for this lease need.
    pub(crate) waiting: u64,
    /// The first waiting request's cost (1 when none waits).
    pub(crate) first_cost: u64,
    /// Live tokens the bucket still holds.
    pub(crate) held: u64,
    /// This process's demand for the bucket, in tokens per second.
    pub(crate) demand: f64,
    /// What the lease's own sample of the demand measured (tokens per second): the requests
    /// that waited for it, over the time they waited, and what the bucket served since the
    /// last lease. Only the quick-refill part (below) may follow it past `demand`.
    pub(crate) measured: f64,
    /// How long that demand has lasted.
    pub(crate) demand_age: Duration,
    /// What the bucket's other consumers take, in tokens per second, as the source's answers
    /// show it; `None` before two answers.
    pub(crate) others: Option<f64>,
    /// What the source is thought to have left now.
    pub(crate) remaining: u64,
    /// A high percentile of the source's recent latency (zero when nothing is known).
    pub(crate) slow_latency: Duration,
    /// What the rule refills in [`QUICK_REFILL`].
    pub(crate) quick_refill: u64,
}

/// What a lease asks for, and when the next one starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LeasePlan {
    /// Tokens to ask the source for (0: nothing worth asking for, and nobody waits).
    pub(crate) ask: u64,
    /// Refill-ahead: a take that leaves fewer than this many tokens starts the next lease.
    pub(crate) refill_below: u64,
}

/// Whole tokens in `x` (0 for anything not finite and positive).
fn whole(x: f64) -> u64 {
    if x.is_finite() && x >= 1.0 {
        x.min(u64::MAX as f64) as u64
    } else {
        0
    }
}

impl Sizing {
    /// How long a speculative lease of `view` is sized to last.
    pub(crate) fn span(&self, view: &LeaseView) -> Duration {
        let longest = self.horizon * 3 / 4;
        let shortest = (view.slow_latency * 4).max(MIN_SPAN).min(longest);
        (view.demand_age * PERSISTENCE).clamp(shortest, longest)
    }

    /// The lease for `view`.
    pub(crate) fn plan(&self, view: &LeaseView) -> LeasePlan {
        let span = self.span(view);
        let longest = (self.horizon * 3 / 4).as_secs_f64();
        let by_span = whole(view.demand * span.as_secs_f64());
        // Within the quick refill, the demand measured now counts (a young estimate is still
        // low), for the lease and for when the next one starts.
        let quick_pace = view.demand.max(view.measured);
        let quick = whole(quick_pace * longest).min(view.quick_refill);
        let pace = if quick > by_span {
            quick_pace
        } else {
            view.demand
        };
        let want = by_span.max(quick).saturating_sub(view.held);
        let share = match view.others {
            _ if view.demand <= 0.0 => 0.0,
            Some(others) => view.demand / (view.demand + OTHERS_WEIGHT * others.max(0.0)),
            None => UNKNOWN_SHARE,
        };
        let room = whole(view.remaining as f64 * share).min(view.remaining);
        let floor = self
            .floor
            .saturating_sub(view.waiting.max(1))
            .min(view.remaining / 2);
        let speculative = match want.min(room) {
            worth if worth >= MIN_SPECULATION => worth,
            _ => 0,
        }
        .max(floor);
        if view.waiting == 0 && speculative == 0 {
            // A refill-ahead lease that finds nothing worth asking for.
            return LeasePlan {
                ask: 0,
                refill_below: 0,
            };
        }
        let ask = view
            .waiting
            .saturating_add(speculative)
            .min(self.cap)
            .max(view.first_cost.min(view.waiting.max(1)));
        // Armed only when the lease asks for more than its waiting requests: one the cap cut
        // down to them leaves nothing to spend before the next (found by the property
        // `leases_keep_their_bounds`: 34 waiting, a cap of 2, the floor's one token cut off).
        let refill_below = if ask > view.waiting {
            let travel = whole((pace * (view.slow_latency * 2).as_secs_f64()).ceil());
            (travel + 1).min(ask / 2)
        } else {
            0
        };
        LeasePlan { ask, refill_below }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H: Duration = Duration::from_secs(5);

    fn sizing() -> Sizing {
        Sizing {
            cap: 10_000,
            floor: 1,
            horizon: H,
        }
    }

    /// A bucket with steady demand for `age`, alone on the source (no other consumer seen),
    /// the source 20 ms away.
    fn alone(demand: f64, remaining: u64, age: Duration) -> LeaseView {
        LeaseView {
            waiting: 1,
            first_cost: 1,
            held: 0,
            demand,
            measured: 0.0,
            demand_age: age,
            others: Some(0.0),
            remaining,
            slow_latency: Duration::from_millis(20),
            quick_refill: 0,
        }
    }

    #[test]
    fn nothing_known_asks_for_the_waiting_requests() {
        let view = LeaseView {
            waiting: 3,
            first_cost: 2,
            remaining: 1_000,
            ..LeaseView::default()
        };
        assert_eq!(
            sizing().plan(&view),
            LeasePlan {
                ask: 3,
                refill_below: 0
            }
        );
        // A refill-ahead lease with nothing waiting and no demand: nothing worth asking for.
        let idle = LeaseView {
            waiting: 0,
            first_cost: 1,
            ..view
        };
        assert_eq!(sizing().plan(&idle).ask, 0);
    }

    #[test]
    fn slow_rules_far_from_the_limit_lease_seconds_of_demand() {
        // 100/minute, 1000/hour, 10 000/day, each far from its limit: 20 requests a second
        // for two seconds so far. The refill rate is not an input at all.
        for remaining in [99, 990, 9_990] {
            let plan = sizing().plan(&alone(20.0, remaining, Duration::from_secs(2)));
            // Three quarters of the horizon of demand (75), within what is left.
            assert_eq!(plan.ask, 1 + 75.min(remaining), "{remaining}");
            // Refill-ahead two slow latencies ahead: 20/s × 40 ms, rounded up, plus one.
            assert_eq!(plan.refill_below, 2);
        }
    }

    #[test]
    fn a_short_burst_leases_for_twice_its_length() {
        // 100 requests a second for 50 ms: 100 ms of demand, not 2.5 s.
        let plan = sizing().plan(&alone(100.0, 1_000, Duration::from_millis(50)));
        assert_eq!(plan.ask, 1 + 10);
    }

    #[test]
    fn the_span_outlasts_a_slow_source() {
        let view = LeaseView {
            slow_latency: Duration::from_millis(200),
            ..alone(100.0, 10_000, Duration::ZERO)
        };
        assert_eq!(sizing().span(&view), Duration::from_millis(800));
        assert_eq!(sizing().plan(&view).ask, 1 + 80);
        // Never past three quarters of the horizon.
        let slower = LeaseView {
            slow_latency: Duration::from_secs(2),
            ..view
        };
        assert_eq!(sizing().span(&slower), H * 3 / 4);
    }

    #[test]
    fn what_is_held_is_not_asked_for_again() {
        let view = LeaseView {
            held: 30,
            ..alone(20.0, 1_000, Duration::from_secs(10))
        };
        assert_eq!(sizing().plan(&view).ask, 1 + 45);
    }

    #[test]
    fn near_the_limit_leases_shrink_to_the_cost() {
        // Others take 30 a second, this process 10, 6 left: a share of 10/70 of 6 is 0.
        let view = LeaseView {
            others: Some(30.0),
            ..alone(10.0, 6, Duration::from_secs(10))
        };
        let plan = sizing().plan(&view);
        assert_eq!(
            plan,
            LeasePlan {
                ask: 1,
                refill_below: 0
            }
        );
        // The same demand with plenty left: a share of it.
        let plenty = LeaseView {
            remaining: 7_000,
            ..view
        };
        assert_eq!(sizing().plan(&plenty).ask, 1 + 37);
        // Before two answers have shown the others' take: an eighth of what is left, and
        // nothing when that is under three tokens.
        let unknown = LeaseView {
            others: None,
            ..plenty
        };
        assert_eq!(sizing().plan(&unknown).ask, 1 + 37);
        let little = LeaseView {
            remaining: 23,
            ..unknown
        };
        assert_eq!(sizing().plan(&little).ask, 1);
        // Under three tokens to share is not worth holding, alone or not.
        assert_eq!(
            sizing().plan(&alone(10.0, 2, Duration::from_secs(10))).ask,
            1
        );
    }

    #[test]
    fn a_lone_process_may_lease_what_is_left_of_its_demand() {
        let plan = sizing().plan(&alone(20.0, 12, Duration::from_secs(10)));
        assert_eq!(plan.ask, 1 + 12);
        assert_eq!(
            sizing().plan(&alone(20.0, 0, Duration::from_secs(10))).ask,
            1
        );
    }

    #[test]
    fn the_floor_applies_where_the_source_has_twice_it() {
        let floored = Sizing {
            floor: 10,
            ..sizing()
        };
        let view = LeaseView {
            others: None,
            ..alone(0.0, 100, Duration::ZERO)
        };
        assert_eq!(floored.plan(&view).ask, 10);
        let scarce = LeaseView {
            remaining: 8,
            ..view
        };
        assert_eq!(floored.plan(&scarce).ask, 1 + 4);
    }

    #[test]
    fn the_cap_bounds_every_lease_but_the_first_request() {
        let capped = Sizing { cap: 5, ..sizing() };
        assert_eq!(
            capped
                .plan(&alone(1_000.0, 1_000_000, Duration::from_secs(9)))
                .ask,
            5
        );
        let costly = LeaseView {
            waiting: 8,
            first_cost: 8,
            ..alone(1_000.0, 1_000_000, Duration::from_secs(9))
        };
        assert_eq!(capped.plan(&costly).ask, 8);
    }

    #[test]
    fn a_hot_key_arms_refill_ahead_from_the_slow_latency() {
        // 50 000 a second, answers slow at 100 ms: the next lease starts 10 000 tokens early,
        // capped at half the lease.
        let view = LeaseView {
            slow_latency: Duration::from_millis(100),
            ..alone(50_000.0, 1 << 40, Duration::from_secs(60))
        };
        let plan = sizing().plan(&view);
        assert_eq!(plan.ask, 10_000);
        assert_eq!(plan.refill_below, 5_000);
    }

    proptest! {
        /// Whatever a bucket knows: the first waiting request is always asked for; nothing
        /// speculative past the cap, past this process's share of what is left (but for the
        /// floor), or when the share is under 3 tokens; and the refill-ahead mark is within
        /// the lease.
        #[test]
        fn leases_keep_their_bounds(
            waiting in 0u64..50,
            first_cost in 1u64..10,
            held in 0u64..1_000,
            demand in 0.0f64..100_000.0,
            age_ms in 0u64..60_000,
            others in proptest::option::of(0.0f64..100_000.0),
            remaining in 0u64..10_000_000,
            latency_ms in 0u64..2_000,
            cap in 1u64..100_000,
            floor in 1u64..100,
            quick_refill in prop_oneof![Just(0u64), 0u64..1_000_000_000],
            measured in 0.0f64..1_000_000.0,
        ) {
            let sizing = Sizing { cap, floor, horizon: H };
            let view = LeaseView {
                waiting,
                first_cost: first_cost.min(waiting.max(1)),
                held,
                demand,
                measured,
                demand_age: Duration::from_millis(age_ms),
                others,
                remaining,
                slow_latency: Duration::from_millis(latency_ms),
                quick_refill,
            };
            let plan = sizing.plan(&view);
            let first = view.first_cost.min(waiting.max(1));
            if waiting > 0 {
                prop_assert!(plan.ask >= first);
            }
            prop_assert!(plan.ask <= cap.max(first));
            let speculative = plan.ask.saturating_sub(waiting);
            let share = match others {
                _ if demand <= 0.0 => 0.0,
                Some(o) => demand / (demand + OTHERS_WEIGHT * o),
                None => UNKNOWN_SHARE,
            };
            let room = (remaining as f64 * share).floor() as u64;
            let floored = floor.saturating_sub(waiting.max(1)).min(remaining / 2);
            let longest = (H * 3 / 4).as_secs_f64();
            let by_demand = ((demand * sizing.span(&view).as_secs_f64()) as u64)
                .max(((demand.max(measured) * longest) as u64).min(quick_refill));
            prop_assert!(speculative <= room.max(floored), "{speculative} > {room}");
            prop_assert!(speculative <= by_demand.saturating_sub(held).max(floored));
            if room < MIN_SPECULATION {
                prop_assert!(speculative <= floored);
            }
            prop_assert!(plan.refill_below <= plan.ask / 2);
            prop_assert!(plan.refill_below == 0 || speculative > 0);
        }
    }
}
