//! [`Decision`]: the answer to "may this request go ahead?", as a value.

use std::time::Duration;

use crate::clock::{ceil_secs, duration_to_nanos};
use crate::{ErrorKind, RefillRate};

/// Where a [`Decision`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DecisionSource {
    /// A token already held in a local bucket: no call to the token source.
    LocalBucket,
    /// The token source answered: this request led a lease, or waited for one and shared it.
    TokenSource,
    /// Denied by the denial cache: the source said "no tokens" recently and none can exist
    /// yet. No call.
    DenialCache,
    /// The token source could not answer (timeout, network, 5xx, unreadable answer, circuit
    /// breaker open, or a configuration error such as a rejected API key); the
    /// [`OnUnavailable`](crate::OnUnavailable) policy decided.
    Unavailable,
}

/// What a [`Decision`] knows of the rule the request was charged to. `Copy`, so that a local
/// hit hands it out without touching shared memory; the rule's id is
/// [`Limiter::rule_id`](crate::Limiter::rule_id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleSummary {
    pub(crate) slot: u32,
    pub(crate) burst_rate: u64,
    pub(crate) refill_rate: RefillRate,
    pub(crate) is_default: bool,
}

impl RuleSummary {
    /// The rule's bucket capacity.
    pub fn burst_rate(&self) -> u64 {
        self.burst_rate
    }

    /// Tokens added per second.
    pub fn refill_rate(&self) -> RefillRate {
        self.refill_rate
    }

    /// Whether it is the application's default rule.
    pub fn is_default(&self) -> bool {
        self.is_default
    }

    /// The window of the IETF `RateLimit-Policy` field: seconds for an empty bucket to fill,
    /// `burst / refill`, rounded up, at least 1.
    pub fn window_secs(&self) -> u64 {
        match self.refill_rate.time_for(self.burst_rate) {
            Some(fill) => ceil_secs(fill).max(1),
            None => u64::from(u32::MAX),
        }
    }
}

/// The limiter's answer for one request: allowed or not, and why.
///
/// A denial is a value, not an error: `Err` from the limiter only means the token source failed
/// and the policy is [`OnUnavailable::Error`](crate::OnUnavailable::Error).
///
/// ```
/// # use lightrate_core::{DecisionSource, EmbeddedSource, Limiter, RefillRate, RuleSet, Target};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lightrate_core::Error> {
/// let rules = RuleSet::builder()
///     .default_rule(RefillRate::per_second(1000), 10_000)
///     .build()?;
/// let limiter = Limiter::builder(EmbeddedSource::new(rules))
///     .min_lease_size(10)
///     .build();
/// let search = Target::operation("search");
/// // The first request learns the rule (a lease of one request's cost).
/// let decision = limiter.check("alice", &search).await?;
/// assert!(decision.is_allowed());
/// assert_eq!(decision.source(), DecisionSource::TokenSource);
/// // The second leases at least ten (more if the demand it measured asks for more): one for
/// // itself, the rest for the local bucket...
/// assert_eq!(limiter.check("alice", &search).await?.source(), DecisionSource::TokenSource);
/// // ...which the next ones take without a call.
/// let decision = limiter.check("alice", &search).await?;
/// assert_eq!(decision.source(), DecisionSource::LocalBucket);
/// assert!(decision.tokens_left() >= 8);
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub(crate) allowed: bool,
    pub(crate) source: DecisionSource,
    pub(crate) tokens_left: u64,
    pub(crate) remaining: u64,
    /// A refusal's wait, in nanoseconds (a `Duration` would make the value larger than a hit
    /// should copy). Of an allowed local take (which waits for nothing): until when, in ms,
    /// the tokens it took were spendable, the deadline of their generation, which a give-back
    /// must not outlive. 0 otherwise.
    pub(crate) wait: u64,
    pub(crate) rule: Option<RuleSummary>,
    pub(crate) unavailable: Option<ErrorKind>,
}

impl Decision {
    /// A local take that left `left` tokens, of tokens spendable until `taken_until_ms`.
    pub(crate) fn local(
        left: u64,
        source_remaining: u64,
        rule: RuleSummary,
        taken_until_ms: u64,
    ) -> Self {
        Decision {
            allowed: true,
            source: DecisionSource::LocalBucket,
            tokens_left: left,
            remaining: left.saturating_add(source_remaining),
            wait: taken_until_ms,
            rule: Some(rule),
            unavailable: None,
        }
    }

    pub(crate) fn denied(
        source: DecisionSource,
        retry_after: Duration,
        source_remaining: u64,
        rule: RuleSummary,
    ) -> Self {
        Decision {
            allowed: false,
            source,
            tokens_left: 0,
            remaining: source_remaining,
            wait: duration_to_nanos(retry_after),
            rule: Some(rule),
            unavailable: None,
        }
    }

    pub(crate) fn unavailable(allowed: bool, kind: ErrorKind, retry_after: Duration) -> Self {
        Decision {
            allowed,
            source: DecisionSource::Unavailable,
            tokens_left: 0,
            remaining: 0,
            wait: if allowed {
                0
            } else {
                duration_to_nanos(retry_after)
            },
            rule: None,
            unavailable: Some(kind),
        }
    }

    /// Whether the request may go ahead.
    pub fn is_allowed(&self) -> bool {
        self.allowed
    }

    /// Where the answer came from.
    pub fn source(&self) -> DecisionSource {
        self.source
    }

    /// Tokens left in this process's local bucket for (user, rule) after this request.
    pub fn tokens_left(&self) -> u64 {
        self.tokens_left
    }

    /// An estimate of the tokens this user has left under the rule: those held locally plus
    /// what the source said remained at the last lease.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// How long until a request can be allowed again (zero when allowed). For
    /// [`DecisionSource::Unavailable`], how long until the source is tried again.
    pub fn retry_after(&self) -> Duration {
        if self.allowed {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.wait)
    }

    /// Of an allowed local take, until when (ms) the tokens it took were spendable; 0
    /// otherwise.
    pub(crate) fn taken_until_ms(&self) -> u64 {
        if self.allowed && self.source == DecisionSource::LocalBucket {
            self.wait
        } else {
            0
        }
    }

    /// `retry_after` in whole seconds for a `Retry-After` header: rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        ceil_secs(self.retry_after()).max(1)
    }

    /// The rule the request was charged to, when known.
    pub fn rule(&self) -> Option<RuleSummary> {
        self.rule
    }

    /// Whether it is a refusal by a rule (its tokens ran out), not by the outage policy.
    pub(crate) fn is_rate_limit_refusal(&self) -> bool {
        !self.allowed && self.rule.is_some() && self.unavailable.is_none()
    }

    /// When the source could not answer: what kind of failure it was.
    pub fn unavailable_kind(&self) -> Option<ErrorKind> {
        self.unavailable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_is_cheap_to_copy() {
        // One cache line.
        assert!(std::mem::size_of::<Decision>() <= 64);
    }

    #[test]
    fn retry_after_secs_rounds_up_to_at_least_one() {
        let d = |retry_after| Decision::unavailable(false, ErrorKind::Timeout, retry_after);
        assert_eq!(d(Duration::ZERO).retry_after_secs(), 1);
        assert_eq!(d(Duration::from_millis(1)).retry_after_secs(), 1);
        assert_eq!(d(Duration::from_millis(1000)).retry_after_secs(), 1);
        assert_eq!(d(Duration::from_millis(1001)).retry_after_secs(), 2);
        assert_eq!(d(Duration::from_secs(7)).retry_after_secs(), 7);
    }

    #[test]
    fn window_is_burst_over_refill() {
        let r = |burst, millis| RuleSummary {
            slot: 0,
            burst_rate: burst,
            refill_rate: RefillRate::from_millitokens_per_second(millis),
            is_default: false,
        };
        assert_eq!(r(20, 1000).window_secs(), 20);
        assert_eq!(r(10, 3000).window_secs(), 4);
        assert_eq!(r(1, 1_000_000).window_secs(), 1);
        assert_eq!(r(5, 500).window_secs(), 10);
        let hourly = RuleSummary {
            refill_rate: RefillRate::per_hour(10),
            ..r(10, 0)
        };
        assert_eq!(hourly.window_secs(), 3600);
    }
}
