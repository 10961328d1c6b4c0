//! The limiter's one set of counters, per rule: what [`Stats`](super::Stats) sums and what
//! the `metrics` feature publishes. Counted on the slow path only: an allowed local hit counts
//! nothing; it is derived from what a rule's buckets received, lost and hold.

use std::sync::atomic::{AtomicU64, Ordering};

use super::decision::{Decision, DecisionSource};
use crate::{Error, ErrorKind};

/// The rule slot of what is counted without a rule (an unavailable source, an unusable
/// identifier).
pub(crate) const NO_RULE: u32 = u32::MAX;

/// A decision that is counted (an allowed local hit is derived instead).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Counted {
    /// Allowed after a call to the source.
    AllowedBySource,
    /// Denied by the source's answer.
    DeniedBySource,
    /// Denied by the denial cache.
    DeniedByCache,
    /// Would have been denied by the source; let through by shadow mode.
    ShadowDeniedBySource,
    /// Would have been denied by the denial cache; let through by shadow mode.
    ShadowDeniedByCache,
    /// The source could not answer; the outage policy let the request through.
    AllowedUnavailable,
    /// The source could not answer; the outage policy refused the request (or its error was
    /// returned).
    DeniedUnavailable,
    /// No usable user identifier.
    Invalid,
}

impl Counted {
    /// Every counted kind, in the order of [`RuleCounters::decisions`].
    pub(crate) const ALL: [Counted; 8] = [
        Counted::AllowedBySource,
        Counted::DeniedBySource,
        Counted::DeniedByCache,
        Counted::ShadowDeniedBySource,
        Counted::ShadowDeniedByCache,
        Counted::AllowedUnavailable,
        Counted::DeniedUnavailable,
        Counted::Invalid,
    ];

    /// What a checked request counts as (`None`: an allowed local hit, derived instead).
    pub(crate) fn of(checked: &Result<Decision, &Error>, shadow: bool) -> Option<(u32, Counted)> {
        let decision = match checked {
            Ok(decision) => decision,
            Err(error) if error.kind() == ErrorKind::InvalidInput => {
                return Some((NO_RULE, Counted::Invalid))
            }
            Err(_) => return Some((NO_RULE, Counted::DeniedUnavailable)),
        };
        let counted = match (decision.source(), decision.is_allowed(), shadow) {
            (DecisionSource::LocalBucket, ..) => return None,
            (DecisionSource::Unavailable, true, _) => Counted::AllowedUnavailable,
            (DecisionSource::Unavailable, false, _) => Counted::DeniedUnavailable,
            (DecisionSource::TokenSource, true, _) => Counted::AllowedBySource,
            (DecisionSource::TokenSource, false, false) => Counted::DeniedBySource,
            (DecisionSource::TokenSource, false, true) => Counted::ShadowDeniedBySource,
            (DecisionSource::DenialCache, _, false) => Counted::DeniedByCache,
            (DecisionSource::DenialCache, _, true) => Counted::ShadowDeniedByCache,
        };
        let slot = decision.rule().map_or(NO_RULE, |rule| rule.slot);
        Some((slot, counted))
    }

    /// Its place in [`Counted::ALL`] (declared in that order).
    fn index(self) -> usize {
        self as usize
    }
}

/// The `result` label of each call counter: granted, denied, then every error kind (an API
/// error twice: as an outage, for a 5xx, and not).
pub(crate) const CALL_RESULTS: [&str; 17] = [
    "granted",
    "denied",
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "unprocessable",
    "too_many_requests",
    "internal",
    "unavailable",
    "api",
    "network",
    "timeout",
    "configuration",
    "decode",
    "invalid_input",
    "api",
];

/// The result of one call to the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallResult {
    /// Some tokens granted.
    Granted,
    /// Nothing granted.
    Denied,
    /// The call failed: the error's kind, and whether it was an outage (the source could not
    /// answer) rather than a rejection.
    Failed { kind: ErrorKind, outage: bool },
}

impl CallResult {
    pub(crate) fn failed(error: &Error) -> Self {
        CallResult::Failed {
            kind: error.kind(),
            outage: error.is_outage(),
        }
    }

    /// The counter of this result in [`CALL_RESULTS`].
    fn index(self) -> usize {
        match self {
            CallResult::Granted => 0,
            CallResult::Denied => 1,
            CallResult::Failed { kind, outage } => match kind {
                ErrorKind::BadRequest => 2,
                ErrorKind::Unauthorized => 3,
                ErrorKind::Forbidden => 4,
                ErrorKind::NotFound => 5,
                ErrorKind::Unprocessable => 6,
                ErrorKind::TooManyRequests => 7,
                ErrorKind::Internal => 8,
                ErrorKind::Unavailable => 9,
                ErrorKind::Api if outage => 10,
                ErrorKind::Api => 16,
                ErrorKind::Network => 11,
                ErrorKind::Timeout => 12,
                ErrorKind::Configuration => 13,
                ErrorKind::Decode => 14,
                ErrorKind::InvalidInput => 15,
            },
        }
    }
}

/// What failed calls were, by the counters of [`CALL_RESULTS`]: outages, configuration
/// errors (401, 403, 404), the rest.
fn failure_class(index: usize) -> Option<Failure> {
    match index {
        0 | 1 => None,
        3 | 4 | 5 | 13 => Some(Failure::Configuration),
        7..=12 | 14 => Some(Failure::Outage),
        _ => Some(Failure::Other),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    Outage,
    Configuration,
    Other,
}

/// The counts of one rule (or of [`NO_RULE`]).
#[derive(Debug, Default)]
pub(crate) struct RuleCounters {
    /// Decisions, by [`Counted::ALL`].
    pub(crate) decisions: [AtomicU64; Counted::ALL.len()],
    /// Tokens put into the rule's local buckets.
    pub(crate) deposited: AtomicU64,
    /// Tokens of leases handed straight to the requests that waited for them.
    pub(crate) served: AtomicU64,
    /// Tokens granted for one request, never held: learning a target's rule, the SDKs' way
    /// for the default rule.
    pub(crate) per_request: AtomicU64,
    /// Tokens that left the rule's local buckets unspent.
    pub(crate) expired: AtomicU64,
    /// Tokens the source granted to a request that another of its limits refused, put in the
    /// rule's local bucket instead of being spent.
    pub(crate) returned: AtomicU64,
}

impl RuleCounters {
    /// A decision's count.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn decided(&self, counted: Counted) -> u64 {
        read(&self.decisions[counted.index()])
    }
}

/// Every counter of a limiter.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    rules: papaya::HashMap<u32, RuleCounters>,
    calls: [AtomicU64; CALL_RESULTS.len()],
    evicted_buckets: AtomicU64,
}

/// The counters summed over rules, for [`Stats`](super::Stats).
#[derive(Debug, Default)]
pub(crate) struct Totals {
    pub(crate) decisions: [u64; Counted::ALL.len()],
    pub(crate) deposited: u64,
    pub(crate) served: u64,
    pub(crate) per_request: u64,
    pub(crate) expired: u64,
    pub(crate) returned: u64,
    pub(crate) calls: u64,
    pub(crate) outage_errors: u64,
    pub(crate) configuration_errors: u64,
    pub(crate) other_errors: u64,
    pub(crate) evicted_buckets: u64,
}

impl Totals {
    pub(crate) fn decided(&self, counted: Counted) -> u64 {
        self.decisions[counted.index()]
    }
}

fn add(counter: &AtomicU64, by: u64) {
    if by > 0 {
        counter.fetch_add(by, Ordering::Relaxed);
    }
}

pub(crate) fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Counters {
    fn with_rule(&self, slot: u32, count: impl FnOnce(&RuleCounters)) {
        let rules = self.rules.pin();
        count(rules.get_or_insert_with(slot, RuleCounters::default));
    }

    /// Counts a decision of the rule in `slot`.
    pub(crate) fn decision(&self, slot: u32, counted: Counted) {
        self.with_rule(slot, |r| add(&r.decisions[counted.index()], 1));
    }

    /// Counts tokens put into a local bucket of the rule in `slot`.
    pub(crate) fn deposited(&self, slot: u32, tokens: u64) {
        if tokens > 0 {
            self.with_rule(slot, |r| add(&r.deposited, tokens));
        }
    }

    /// Counts tokens of a lease handed to the requests that waited for it.
    pub(crate) fn served(&self, slot: u32, tokens: u64) {
        if tokens > 0 {
            self.with_rule(slot, |r| add(&r.served, tokens));
        }
    }

    /// Counts tokens granted for one request and never held.
    pub(crate) fn per_request(&self, slot: u32, tokens: u64) {
        if tokens > 0 {
            self.with_rule(slot, |r| add(&r.per_request, tokens));
        }
    }

    /// Counts tokens of the rule in `slot` lost unspent.
    pub(crate) fn expired(&self, slot: u32, tokens: u64) {
        if tokens > 0 {
            self.with_rule(slot, |r| add(&r.expired, tokens));
        }
    }

    /// Counts tokens granted to a request and put in a local bucket of the rule in `slot`
    /// instead (another limit of the request refused it).
    pub(crate) fn returned(&self, slot: u32, tokens: u64) {
        if tokens > 0 {
            self.with_rule(slot, |r| add(&r.returned, tokens));
        }
    }

    /// Counts a call's result.
    pub(crate) fn call(&self, result: CallResult) {
        add(&self.calls[result.index()], 1);
    }

    /// Counts buckets forgotten at the cap.
    pub(crate) fn evicted(&self, buckets: u64) {
        add(&self.evicted_buckets, buckets);
    }

    /// Calls `each` with every rule slot counted and its counters.
    pub(crate) fn for_each_rule(&self, mut each: impl FnMut(u32, &RuleCounters)) {
        for (slot, counters) in self.rules.pin().iter() {
            each(*slot, counters);
        }
    }

    /// Calls `each` with every call result's label and count.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn for_each_call(&self, mut each: impl FnMut(&'static str, u64)) {
        for (label, count) in CALL_RESULTS.iter().zip(&self.calls) {
            each(label, read(count));
        }
    }

    /// Everything summed over rules.
    pub(crate) fn totals(&self) -> Totals {
        let mut t = Totals {
            evicted_buckets: read(&self.evicted_buckets),
            ..Totals::default()
        };
        self.for_each_rule(|_, r| {
            for (sum, count) in t.decisions.iter_mut().zip(&r.decisions) {
                *sum += read(count);
            }
            t.deposited += read(&r.deposited);
            t.served += read(&r.served);
            t.per_request += read(&r.per_request);
            t.expired += read(&r.expired);
            t.returned += read(&r.returned);
        });
        for (index, count) in self.calls.iter().enumerate() {
            let count = read(count);
            t.calls += count;
            match failure_class(index) {
                Some(Failure::Outage) => t.outage_errors += count,
                Some(Failure::Configuration) => t.configuration_errors += count,
                Some(Failure::Other) => t.other_errors += count,
                None => {}
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn every_error_kind_has_a_call_counter_and_a_class() {
        let kinds = [
            ErrorKind::BadRequest,
            ErrorKind::Unauthorized,
            ErrorKind::Forbidden,
            ErrorKind::NotFound,
            ErrorKind::Unprocessable,
            ErrorKind::TooManyRequests,
            ErrorKind::Internal,
            ErrorKind::Unavailable,
            ErrorKind::Api,
            ErrorKind::Network,
            ErrorKind::Timeout,
            ErrorKind::Configuration,
            ErrorKind::Decode,
            ErrorKind::InvalidInput,
        ];
        for kind in kinds {
            let error = Error::new(kind, "x");
            let index = CallResult::failed(&error).index();
            let class = failure_class(index).unwrap();
            assert_eq!(class == Failure::Outage, error.is_outage(), "{kind:?}");
            assert_eq!(
                class == Failure::Configuration,
                error.is_configuration(),
                "{kind:?}"
            );
        }
        // An API error is an outage for a 5xx only.
        let teapot = Error::from_status(StatusCode::IM_A_TEAPOT, "x");
        let bad_gateway = Error::from_status(StatusCode::BAD_GATEWAY, "x");
        for error in [teapot, bad_gateway] {
            let class = failure_class(CallResult::failed(&error).index()).unwrap();
            assert_eq!(class == Failure::Outage, error.is_outage(), "{error}");
        }
        assert_eq!(CALL_RESULTS[CallResult::Granted.index()], "granted");
    }

    #[test]
    fn every_counted_kind_has_its_own_counter() {
        for (at, counted) in Counted::ALL.iter().enumerate() {
            assert_eq!(counted.index(), at);
        }
    }

    #[test]
    fn totals_sum_the_rules() {
        let c = Counters::default();
        c.decision(1, Counted::AllowedBySource);
        c.decision(2, Counted::AllowedBySource);
        c.decision(NO_RULE, Counted::Invalid);
        c.deposited(1, 5);
        c.expired(2, 3);
        c.call(CallResult::Granted);
        c.call(CallResult::failed(&Error::new(ErrorKind::Timeout, "slow")));
        let t = c.totals();
        assert_eq!(t.decided(Counted::AllowedBySource), 2);
        assert_eq!(t.decided(Counted::Invalid), 1);
        assert_eq!((t.deposited, t.expired, t.calls), (5, 3, 2));
        assert_eq!((t.outage_errors, t.configuration_errors), (1, 0));
    }
}
