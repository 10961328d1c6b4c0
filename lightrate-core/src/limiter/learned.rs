//! What a bucket learns on the slow path, lease after lease: this process's demand for it,
//! what the other consumers of the source's bucket take, and the source's level as last heard.
//!
//! The others' take is read from the source's answers: between two answers the source's level
//! rises by its refill and falls by what every consumer took. This process knows its own part
//! (the grant of the second answer), so the rest is what the others took: the fleet's demand
//! shows in `tokensRemaining`, with no coordination between processes.

use std::time::Duration;

use super::decision::RuleSummary;

/// The time constants (seconds) with which the demand estimate rises to a higher sample and
/// falls to a lower one: a hot key is served within a few leases, a pause between bursts is
/// not forgotten at once, demand that stops is forgotten within seconds.
const DEMAND_RISE_TAU_S: f64 = 0.05;
const DEMAND_FALL_TAU_S: f64 = 1.0;

/// The same (seconds) for the others' take: quick to see them come (so this process leaves them their
/// share), slow to believe they left.
const OTHERS_RISE_TAU_S: f64 = 0.1;
const OTHERS_FALL_TAU_S: f64 = 2.0;

/// This process's demand for a bucket, as a lease starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Demand {
    /// The estimate, in tokens per second: quick to rise, slow to fall.
    pub(crate) rate: f64,
    /// What this lease's sample measured alone (tokens per second; 0 when it measured
    /// nothing): the requests that waited for the rule's first answer, over the round trip,
    /// are a measurement, not noise (but a burst may show as one too).
    pub(crate) measured: f64,
    /// How long the demand has lasted.
    pub(crate) age: Duration,
}

/// The last answer of the source: what it had left after granting, and when it made the
/// answer (ms; the middle of the call). `at_ms == NEVER`: nothing heard yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Heard {
    remaining: u64,
    at_ms: u64,
}

const NEVER: u64 = u64::MAX;

/// The estimates of one bucket (slow path only: behind the bucket's mutex).
#[derive(Clone, Debug)]
pub(crate) struct Learned {
    /// This process's demand, in tokens per second (`f32`: estimates, kept small).
    demand: f32,
    /// When the current run of demand began (ms).
    demand_since_ms: u64,
    /// When the last lease started (ms; the bucket's creation before that), and the tokens
    /// this process had consumed from the bucket by then, less those handed since to waiters
    /// who joined a lease after it was sized (not in the bucket's consumption, nor in that
    /// lease's count: counted into the next sample so).
    lease_started_ms: u64,
    consumed_mark: i64,
    /// What the bucket's other consumers take, in tokens per second (NaN before two answers).
    others: f32,
    last: Heard,
}

/// An exponential average: `previous` moved towards `sample` over `elapsed_s`, with time
/// constant `rise_tau_s` when the sample is higher, `fall_tau_s` when it is lower.
fn smooth(previous: f64, sample: f64, elapsed_s: f64, rise_tau_s: f64, fall_tau_s: f64) -> f64 {
    let tau = if sample > previous {
        rise_tau_s
    } else {
        fall_tau_s
    };
    let keep = (-elapsed_s / tau).exp();
    previous * keep + sample * (1.0 - keep)
}

impl Learned {
    pub(crate) fn new(now_ms: u64) -> Self {
        Learned {
            demand: 0.0,
            demand_since_ms: now_ms,
            lease_started_ms: now_ms,
            consumed_mark: 0,
            others: f32::NAN,
            last: Heard {
                remaining: 0,
                at_ms: NEVER,
            },
        }
    }

    /// At the start of a lease: updates the demand estimate with what was `consumed` (in all,
    /// from this bucket) since the last lease started, plus what is `waiting` for this lease
    /// (waiting since `waited_since_ms`: when they began to gather, which may be before this
    /// bucket existed, for the requests that waited for the rule's first answer), plus what
    /// waiters who joined the last lease late took, and returns it (tokens per second) with
    /// how long the demand has lasted and what this sample measured. A gap longer than
    /// `horizon` (nothing leased for that long) starts a new run of demand.
    pub(crate) fn observe_demand(
        &mut self,
        now_ms: u64,
        consumed: u64,
        waiting: u64,
        waited_since_ms: u64,
        horizon: Duration,
    ) -> Demand {
        let since = self.lease_started_ms.min(waited_since_ms);
        let mut measured = 0.0;
        if now_ms > since {
            let gap = now_ms.saturating_sub(self.lease_started_ms);
            let taken = (i128::from(consumed) - i128::from(self.consumed_mark)).max(0);
            let taken = u64::try_from(taken)
                .unwrap_or(u64::MAX)
                .saturating_add(waiting);
            self.consumed_mark = i64::try_from(consumed).unwrap_or(i64::MAX);
            self.lease_started_ms = now_ms;
            if u128::from(gap) > horizon.as_millis() {
                self.demand_since_ms = waited_since_ms.min(now_ms);
            }
            let elapsed_s = (now_ms - since) as f64 / 1000.0;
            let sample = taken as f64 / elapsed_s;
            let demand = smooth(
                f64::from(self.demand),
                sample,
                elapsed_s,
                DEMAND_RISE_TAU_S,
                DEMAND_FALL_TAU_S,
            );
            self.demand = demand as f32;
            measured = sample;
        }
        self.demand_since_ms = self.demand_since_ms.min(waited_since_ms);
        // (Leases less than a millisecond apart keep counting until one has passed.)
        let age = Duration::from_millis(now_ms.saturating_sub(self.demand_since_ms));
        Demand {
            rate: f64::from(self.demand),
            measured,
            age,
        }
    }

    /// Counts `tokens` handed to waiters who joined a lease after it was sized into the next
    /// sample of the demand.
    pub(crate) fn served_late(&mut self, tokens: u64) {
        let tokens = i64::try_from(tokens).unwrap_or(i64::MAX);
        self.consumed_mark = self.consumed_mark.saturating_sub(tokens);
    }

    /// Files an answer made at `at_ms` that granted this process `granted` and left
    /// `remaining`, learning from the one before it what the others took meanwhile.
    pub(crate) fn heard(&mut self, at_ms: u64, granted: u64, remaining: u64, rule: RuleSummary) {
        let previous = self.last;
        if previous.at_ms != NEVER && at_ms > previous.at_ms {
            let elapsed = Duration::from_millis(at_ms - previous.at_ms);
            let expected = previous
                .remaining
                .saturating_add(rule.refill_rate.tokens_in(elapsed))
                .min(rule.burst_rate);
            // The source counts whole tokens: a fraction it held may show as one more.
            let level = remaining.saturating_add(granted).saturating_add(1);
            let taken = expected.saturating_sub(level);
            let elapsed_s = elapsed.as_secs_f64();
            let sample = taken as f64 / elapsed_s;
            let others = match self.others() {
                Some(others) => smooth(
                    others,
                    sample,
                    elapsed_s,
                    OTHERS_RISE_TAU_S,
                    OTHERS_FALL_TAU_S,
                ),
                None => sample,
            };
            self.others = others as f32;
        }
        if previous.at_ms == NEVER || at_ms >= previous.at_ms {
            self.last = Heard { remaining, at_ms };
        }
    }

    /// What the others take (tokens per second), once two answers have shown it.
    pub(crate) fn others(&self) -> Option<f64> {
        (!self.others.is_nan()).then_some(f64::from(self.others))
    }

    /// What the source is thought to have left at `now_ms`: the last answer, plus what the
    /// rule refilled since, less what the others are thought to have taken since (the burst
    /// when nothing was heard).
    pub(crate) fn remaining(&self, now_ms: u64, rule: RuleSummary) -> u64 {
        let last = self.last;
        if last.at_ms == NEVER {
            return rule.burst_rate;
        }
        let since = Duration::from_millis(now_ms.saturating_sub(last.at_ms));
        let refilled = last
            .remaining
            .saturating_add(rule.refill_rate.tokens_in(since))
            .min(rule.burst_rate);
        let taken = self.others().unwrap_or(0.0) * since.as_secs_f64();
        let taken = if taken.is_finite() && taken > 0.0 {
            taken.min(u64::MAX as f64) as u64
        } else {
            0
        };
        refilled.saturating_sub(taken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RefillRate;

    const H: Duration = Duration::from_secs(5);

    fn rule(refill: RefillRate, burst: u64) -> RuleSummary {
        RuleSummary {
            slot: 0,
            burst_rate: burst,
            refill_rate: refill,
            is_default: false,
        }
    }

    #[test]
    fn demand_follows_consumption_and_forgets() {
        let mut l = Learned::new(0);
        // A second request 50 ms after the bucket was made: one token in 50 ms.
        let Demand {
            rate,
            age,
            measured,
        } = l.observe_demand(50, 0, 1, 50, H);
        assert!((10.0..20.0).contains(&rate), "{rate}");
        assert!((19.9..20.1).contains(&measured), "{measured}");
        assert_eq!(age, Duration::from_millis(50));
        // 20 tokens and 20 waiting in 20 ms: 2000/s, reached within a few leases.
        let Demand { rate, .. } = l.observe_demand(70, 20, 20, 70, H);
        assert!((600.0..2000.0).contains(&rate), "{rate}");
        let Demand { rate, .. } = l.observe_demand(120, 120, 0, 120, H);
        assert!(rate > 1400.0, "{rate}");
        // A pause of 100 ms keeps most of it.
        let Demand { rate, age, .. } = l.observe_demand(220, 120, 0, 220, H);
        assert!(rate > 1250.0, "{rate}");
        assert_eq!(age, Duration::from_millis(220));
        // Nothing for a minute: forgotten, and the next demand is a new run.
        let Demand { rate, age, .. } = l.observe_demand(60_220, 120, 0, 60_220, H);
        assert!(rate < 1.0, "{rate}");
        assert_eq!(age, Duration::ZERO);
        let Demand { age, .. } = l.observe_demand(60_320, 130, 0, 60_320, H);
        assert_eq!(age, Duration::from_millis(100));
    }

    #[test]
    fn the_requests_that_waited_for_the_first_answer_measure_the_demand() {
        // The bucket is made when the rule's first answer lands (at 1 020); 31 requests
        // gathered behind it since 1 000: 1 550 a second, from a demand 20 ms old.
        let mut l = Learned::new(1_020);
        let Demand { measured, age, .. } = l.observe_demand(1_020, 0, 31, 1_000, H);
        assert!((1_549.0..1_551.0).contains(&measured), "{measured}");
        assert_eq!(age, Duration::from_millis(20));
        // The next lease, 20 ms later: 40 consumed from the bucket, and 20 handed to waiters
        // who joined the lease in flight after it was sized: 3 000 a second.
        l.served_late(20);
        let Demand { measured, age, .. } = l.observe_demand(1_040, 40, 0, 1_040, H);
        assert!((2_999.0..3_001.0).contains(&measured), "{measured}");
        assert_eq!(age, Duration::from_millis(40));
        // Counted once.
        let Demand { measured, .. } = l.observe_demand(1_060, 40, 0, 1_060, H);
        assert_eq!(measured, 0.0);
    }

    #[test]
    fn the_others_take_converges_to_what_the_source_shows() {
        // 100/minute, burst 100. This process takes 5 a second, the others 15: every second
        // the source's level falls by 20 and rises by 1.67.
        let r = rule(RefillRate::per_minute(100), 100);
        let mut l = Learned::new(0);
        let mut level = 100.0f64;
        let mut estimates = Vec::new();
        for second in 1..=4u64 {
            level += 100.0 / 60.0 - 15.0; // refill, then the others
            level -= 5.0; // this process's lease
            l.heard(second * 1000, 5, level.floor() as u64, r);
            estimates.push(l.others());
        }
        assert_eq!(estimates[0], None, "one answer shows nothing yet");
        for others in &estimates[1..] {
            let others = others.unwrap();
            assert!((13.0..=15.5).contains(&others), "{estimates:?}");
        }
        // What is left now: the last answer, plus refill, less the others' take since.
        let last = level.floor() as u64;
        assert_eq!(l.remaining(4_000, r), last);
        let later = l.remaining(5_000, r);
        assert!(
            (last - 15..=last - 12).contains(&later),
            "{later} of {last}"
        );
    }

    #[test]
    fn alone_the_others_take_nothing() {
        // 10/second, burst 20, this process alone at 20/s: the source's level falls by what
        // it granted, less the refill.
        let r = rule(RefillRate::per_second(10), 20);
        let mut l = Learned::new(0);
        l.heard(10, 1, 19, r);
        l.heard(60, 1, 18, r);
        l.heard(110, 4, 14, r);
        l.heard(300, 6, 9, r);
        assert_eq!(l.others(), Some(0.0));
        assert_eq!(l.remaining(300, r), 9);
        assert_eq!(l.remaining(400, r), 10);
        assert_eq!(l.remaining(10_000, r), 20, "at most the burst");
    }

    #[test]
    fn answers_out_of_order_are_not_mistaken_for_takes() {
        let r = rule(RefillRate::per_hour(10), 10);
        let mut l = Learned::new(0);
        l.heard(2_000, 1, 5, r);
        l.heard(1_000, 1, 7, r);
        assert_eq!(l.others(), None);
        assert_eq!(l.remaining(2_000, r), 5);
    }
}
