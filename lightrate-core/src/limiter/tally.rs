//! What the `metrics` feature publishes beyond [`Stats`](super::Stats): decisions by outcome
//! and rule, the tokens that entered and left each rule's local buckets (so that local hits
//! per rule are derived, as `Stats::local_hits` is, with no count on the hot path), and the
//! results of calls to the source. Counted on the slow path only. Without the feature a
//! `Tally` holds nothing and every method is empty.

use crate::ErrorKind;

/// What became of a request, as `lightrate_decisions_total{outcome}` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Let through.
    Allowed,
    /// Refused: no token.
    Denied,
    /// Would have been refused; let through by shadow mode.
    ShadowDenied,
    /// The source could not answer: the outage policy decided.
    Unavailable,
    /// No usable user identifier.
    Invalid,
}

/// Who decided, as `lightrate_decisions_total{decided_by}` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DecidedBy {
    /// In process, without the source (a local bucket; an identifier refused).
    Local,
    /// After a call to the source (or its failure).
    Source,
    /// The denial cache.
    DenialCache,
}

/// The rule slot of decisions made without a rule (unavailable, invalid).
pub(crate) const NO_RULE: u32 = u32::MAX;

/// The result of one call to the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallResult {
    /// Some tokens granted.
    Granted,
    /// Nothing granted.
    Denied,
    /// The call failed.
    Failed(ErrorKind),
}

#[cfg(feature = "metrics")]
pub(crate) use counting::*;

#[cfg(not(feature = "metrics"))]
pub(crate) use empty::*;

#[cfg(not(feature = "metrics"))]
mod empty {
    use super::{CallResult, DecidedBy, Outcome};

    /// Nothing: the `metrics` feature is off.
    #[derive(Debug, Default)]
    pub(crate) struct Tally;

    impl Tally {
        #[inline(always)]
        pub(crate) fn decision(&self, _slot: u32, _outcome: Outcome, _by: DecidedBy) {}
        #[inline(always)]
        pub(crate) fn deposited(&self, _slot: u32, _tokens: u64) {}
        #[inline(always)]
        pub(crate) fn expired(&self, _slot: u32, _tokens: u64) {}
        #[inline(always)]
        pub(crate) fn call(&self, _result: CallResult) {}
    }
}

#[cfg(feature = "metrics")]
mod counting {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::{CallResult, DecidedBy, Outcome};
    use crate::ErrorKind;

    /// The (outcome, decided by) pairs counted; an allowed local hit is derived instead.
    pub(crate) const DECISIONS: [(Outcome, DecidedBy); 7] = [
        (Outcome::Allowed, DecidedBy::Source),
        (Outcome::Denied, DecidedBy::Source),
        (Outcome::Denied, DecidedBy::DenialCache),
        (Outcome::ShadowDenied, DecidedBy::Source),
        (Outcome::ShadowDenied, DecidedBy::DenialCache),
        (Outcome::Unavailable, DecidedBy::Source),
        (Outcome::Invalid, DecidedBy::Local),
    ];

    /// The `result` label of each call counter: granted, denied, then every error kind.
    pub(crate) const CALL_RESULTS: [&str; 16] = [
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
    ];

    /// The counter of a call's result in [`CALL_RESULTS`].
    fn call_index(result: CallResult) -> usize {
        match result {
            CallResult::Granted => 0,
            CallResult::Denied => 1,
            CallResult::Failed(kind) => match kind {
                ErrorKind::BadRequest => 2,
                ErrorKind::Unauthorized => 3,
                ErrorKind::Forbidden => 4,
                ErrorKind::NotFound => 5,
                ErrorKind::Unprocessable => 6,
                ErrorKind::TooManyRequests => 7,
                ErrorKind::Internal => 8,
                ErrorKind::Unavailable => 9,
                ErrorKind::Api => 10,
                ErrorKind::Network => 11,
                ErrorKind::Timeout => 12,
                ErrorKind::Configuration => 13,
                ErrorKind::Decode => 14,
                ErrorKind::InvalidInput => 15,
            },
        }
    }

    /// The counts of one rule (or of [`NO_RULE`](super::NO_RULE)).
    #[derive(Debug, Default)]
    pub(crate) struct RuleTally {
        pub(crate) decisions: [AtomicU64; DECISIONS.len()],
        /// Tokens put into the rule's local buckets.
        pub(crate) deposited: AtomicU64,
        /// Tokens that left them unspent.
        pub(crate) expired: AtomicU64,
    }

    /// The per-rule counts, and the results of source calls (granted, denied, each error
    /// kind).
    #[derive(Debug, Default)]
    pub(crate) struct Tally {
        pub(crate) rules: papaya::HashMap<u32, RuleTally>,
        pub(crate) calls: [AtomicU64; CALL_RESULTS.len()],
    }

    fn add(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }

    impl Tally {
        fn with_rule(&self, slot: u32, f: impl FnOnce(&RuleTally)) {
            let rules = self.rules.pin();
            f(rules.get_or_insert_with(slot, RuleTally::default));
        }

        /// Counts a decision.
        pub(crate) fn decision(&self, slot: u32, outcome: Outcome, by: DecidedBy) {
            if let Some(at) = DECISIONS.iter().position(|d| *d == (outcome, by)) {
                self.with_rule(slot, |r| add(&r.decisions[at], 1));
            }
        }

        /// Counts tokens put into a local bucket of the rule in `slot`.
        pub(crate) fn deposited(&self, slot: u32, tokens: u64) {
            if tokens > 0 {
                self.with_rule(slot, |r| add(&r.deposited, tokens));
            }
        }

        /// Counts tokens of the rule in `slot` lost unspent.
        pub(crate) fn expired(&self, slot: u32, tokens: u64) {
            if tokens > 0 {
                self.with_rule(slot, |r| add(&r.expired, tokens));
            }
        }

        /// Counts a call's result.
        pub(crate) fn call(&self, result: CallResult) {
            if let Some(counter) = self.calls.get(call_index(result)) {
                add(counter, 1);
            }
        }
    }
}
