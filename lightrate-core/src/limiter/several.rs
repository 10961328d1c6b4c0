//! Several limits in one decision, all or nothing: [`Limit`], [`Decisions`], and what
//! [`Limiter::check_all`](super::Limiter::check_all) does.
//!
//! Each limit is first decided as one request is (`hit.rs`): a local take, a denial from the
//! denial cache, or "ask the source". A request that one limit refuses takes nothing from the
//! others: the tokens the others took go back to their local buckets (they stay leased: no
//! call). When no limit refused locally, the limits that must ask the source ask it
//! concurrently (two misses cost one round trip), each through its own single flight; if one
//! of them refuses, every token taken for the request goes back.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use super::decision::{Decision, DecisionSource, RuleSummary};
use super::handle::Limiter;
use super::hit::Tap;
use super::inner::Inner;
use super::memo;
use crate::{Error, Target};

/// How many times a request's limits may ask the source in turn (a local bucket emptied while
/// the others asked) before it is refused.
const ROUNDS: usize = 4;

/// How many limits a request keeps without allocating.
pub const INLINE_LIMITS: usize = 4;

/// One limit of a request: whose budget (the identifier: a user, an organisation, an IP), which
/// rule (the target: an operation, a method and path, or the default rule) and how many tokens.
///
/// ```
/// use lightrate_core::{Limit, Target};
///
/// let per_day = Limit::new("alice", Target::operation("search_per_day"));
/// let org = Limit::new("acme", Target::operation("org_reports")).with_cost(2);
/// assert_eq!((per_day.cost(), org.cost()), (1, 2));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit<'a> {
    user: &'a str,
    target: Target<'a>,
    cost: u64,
}

impl<'a> Limit<'a> {
    /// The limit of `target`'s rule on `user`'s budget, one token.
    pub fn new(user: &'a str, target: Target<'a>) -> Self {
        Limit {
            user,
            target,
            cost: 1,
        }
    }

    /// Sets how many tokens the request takes from this limit (at least 1).
    pub fn with_cost(mut self, cost: u64) -> Self {
        self.cost = cost.max(1);
        self
    }

    /// Whose budget.
    pub fn user(&self) -> &str {
        self.user
    }

    /// Which rule.
    pub fn target(&self) -> &Target<'a> {
        &self.target
    }

    /// Tokens per request.
    pub fn cost(&self) -> u64 {
        self.cost
    }
}

/// The answer for a request's limits, one [`Decision`] per limit, in the order they were
/// given: the request is allowed only if every limit allowed it.
///
/// A limit is left undecided (`None`) when another refused the request before the token
/// source was asked about it. Up to [`INLINE_LIMITS`] are kept without allocating.
///
/// ```
/// use lightrate_core::{EmbeddedSource, Limit, Limiter, RefillRate, RuleSet, Target};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lightrate_core::Error> {
/// let rules = RuleSet::builder()
///     .default_rule(RefillRate::per_second(1), 5)
///     .operation("per second", "^search_per_second$", RefillRate::per_second(2), 5)
///     .operation("per day", "^search_per_day$", RefillRate::per_day(12), 12)
///     .build()?;
/// let limiter = Limiter::new(EmbeddedSource::new(rules));
/// let limits = [
///     Limit::new("alice", Target::operation("search_per_second")),
///     Limit::new("alice", Target::operation("search_per_day")),
/// ];
/// let mut allowed = 0;
/// for _ in 0..8 {
///     if limiter.check_all(&limits).await?.is_allowed() {
///         allowed += 1;
///     }
/// }
/// // The per-second burst (5) refuses the rest, and those take nothing from the day's 12.
/// assert_eq!(allowed, 5);
/// let refused = limiter.check_all(&limits).await?;
/// assert!(!refused.is_allowed());
/// assert_eq!(refused.refusing().count(), 1);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decisions {
    len: usize,
    inline: [Option<Decision>; INLINE_LIMITS],
    more: Vec<Option<Decision>>,
}

impl Decisions {
    /// `len` limits, none decided yet.
    #[inline]
    pub(crate) fn undecided(len: usize) -> Self {
        Decisions {
            len,
            inline: [None; INLINE_LIMITS],
            more: if len > INLINE_LIMITS {
                vec![None; len - INLINE_LIMITS]
            } else {
                Vec::new()
            },
        }
    }

    /// Empties the decisions for `len` limits, none decided: what
    /// [`Limiter::check_all_local_in`] does first.
    #[inline]
    fn reset(&mut self, len: usize) {
        self.len = len;
        self.inline = [None; INLINE_LIMITS];
        self.more.clear();
        if len > INLINE_LIMITS {
            self.more.resize(len - INLINE_LIMITS, None);
        }
    }

    fn slot(&mut self, index: usize) -> &mut Option<Decision> {
        match index.checked_sub(INLINE_LIMITS) {
            None => &mut self.inline[index],
            Some(over) => &mut self.more[over],
        }
    }

    /// Sets the decision of the limit at `index`.
    pub(crate) fn set(&mut self, index: usize, decision: Decision) {
        if index < self.len {
            *self.slot(index) = Some(decision);
        }
    }

    /// Raises the wait of the refusal with the longest wait to `wait`, when it said less.
    pub(crate) fn wait_at_least(&mut self, wait: Duration) {
        let Some((index, _)) = self.refusing().max_by_key(|(_, d)| d.retry_after()) else {
            return;
        };
        if let Some(decision) = self.slot(index) {
            let nanos = crate::clock::duration_to_nanos(wait);
            decision.wait = decision.wait.max(nanos);
        }
    }

    /// How many limits the request had.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the request had no limit (it is then allowed).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The decision of the limit at `index`: `None` when it was not decided (another limit
    /// refused the request first) or there is no such limit.
    #[inline]
    pub fn get(&self, index: usize) -> Option<&Decision> {
        if index >= self.len {
            return None;
        }
        match index.checked_sub(INLINE_LIMITS) {
            None => self.inline[index].as_ref(),
            Some(over) => self.more[over].as_ref(),
        }
    }

    /// Every limit's decision, in order (`None` for those not decided).
    #[inline]
    pub fn iter(&self) -> impl Iterator<Item = Option<&Decision>> + '_ {
        (0..self.len).map(|index| self.get(index))
    }

    /// Whether every limit allowed the request.
    #[inline]
    pub fn is_allowed(&self) -> bool {
        self.iter().all(|d| d.is_some_and(Decision::is_allowed))
    }

    /// The limits that refused the request, with their places in the list.
    pub fn refusing(&self) -> impl Iterator<Item = (usize, &Decision)> + '_ {
        self.iter()
            .enumerate()
            .filter_map(|(index, d)| d.filter(|d| !d.is_allowed()).map(|d| (index, d)))
    }

    /// Whether a limit refused the request as a rate limit (its rule's tokens ran out), not
    /// by the outage policy: only then can waiting help.
    pub(crate) fn rate_limited(&self) -> bool {
        self.refusing().any(|(_, d)| d.is_rate_limit_refusal())
    }

    /// How long until the request can be allowed: the longest wait among the limits that
    /// refused it (zero when allowed).
    pub fn retry_after(&self) -> Duration {
        self.refusing()
            .map(|(_, d)| d.retry_after())
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// The decision that speaks for the request: when refused, the refusal with the longest
    /// wait; when allowed, the limit with the fewest tokens left.
    pub fn deciding(&self) -> Option<&Decision> {
        if self.is_allowed() {
            self.iter().flatten().min_by_key(|d| d.remaining())
        } else {
            self.refusing()
                .map(|(_, d)| d)
                .max_by_key(|d| d.retry_after())
        }
    }
}

/// The bit of the limit at `index` in a set of limits (a `u64`: more than 64 limits ask one by
/// one, the bit of the 64th serving them all).
#[inline]
fn bit(index: usize) -> u64 {
    1 << index.min(63)
}

/// What one limit's local phase came to.
#[derive(Clone, Copy)]
pub(super) enum Step {
    /// Its tokens taken.
    Taken,
    /// Refused (a local bucket, the denial cache).
    Refused,
    /// The source must be asked.
    Ask,
}

impl Step {
    /// Notes the step of the limit at `index`: its bit in `ask`, or `refused`.
    #[inline]
    fn note(self, index: usize, ask: &mut u64, refused: &mut bool) {
        match self {
            Step::Taken => {}
            Step::Refused => *refused = true,
            Step::Ask => *ask |= bit(index),
        }
    }
}

impl Inner {
    /// The local hit of the limit at `index` of a request's list, in its memo lane, written to
    /// its place in `decisions`: the one step of the local phase and of every retake after the
    /// source answered.
    #[inline]
    pub(super) fn check_at(
        self: &Arc<Self>,
        index: usize,
        user: &str,
        target: &Target<'_>,
        cost: u64,
        shadow: bool,
        decisions: &mut Decisions,
    ) -> Step {
        let slot = decisions.slot(index);
        let lane = memo::Lane::enter(index);
        self.check_local(user.as_bytes(), target, cost, shadow, slot);
        lane.leave();
        match slot {
            Some(decision) if !decision.is_allowed() => Step::Refused,
            Some(_) => Step::Taken,
            None => Step::Ask,
        }
    }

    /// The local hits of a request's limits whose targets and buckets this thread memoized,
    /// from the first, each written to its place in `decisions`, with one look at the memos
    /// (`memo::hit_list`). Returns how many were taken: the limit at that index (not
    /// memoized, or its bucket could not serve it) and those after go the per-limit way.
    #[inline]
    fn take_memoized(self: &Arc<Self>, limits: &[Limit<'_>], decisions: &mut Decisions) -> usize {
        let now_ms = self.clock.coarse_now().as_millis();
        let (limiter, generation) = self.routes.memo_key();
        memo::hit_list(
            limiter,
            generation,
            now_ms,
            limits,
            |index, limit, rule, bucket| {
                let user = limit.user.as_bytes();
                let (target, cost) = (&limit.target, limit.cost);
                match self.tap(bucket, user, target, rule.slot, cost, now_ms) {
                    Tap::Served {
                        left,
                        remaining,
                        until_ms,
                    } => {
                        let left = u64::from(left);
                        *decisions.slot(index) =
                            Some(Decision::local(left, remaining, *rule, until_ms));
                        true
                    }
                    Tap::Empty | Tap::Ask => false,
                }
            },
        )
    }
}

impl memo::Listed for Limit<'_> {
    #[inline]
    fn target(&self) -> &Target<'_> {
        &self.target
    }

    #[inline]
    fn user(&self) -> &[u8] {
        self.user.as_bytes()
    }
}

/// The refusal of a limit whose bucket others emptied at every round of a request's asking:
/// its rule's, for a tenth of a second; an outage's when no answer named the rule.
fn contended(rule: Option<RuleSummary>) -> Decision {
    let wait = Duration::from_millis(100);
    match rule {
        Some(rule) => Decision::denied(DecisionSource::LocalBucket, wait, 0, rule),
        None => Decision::unavailable(false, crate::ErrorKind::Unavailable, wait),
    }
}

/// A limit as the slow phase owns it.
pub(crate) type OwnedLimit = (Box<str>, Target<'static>, u64);

impl Limiter {
    /// Decides a request against several limits at once, all or nothing: allowed only if
    /// every limit allows it, and a request that one limit refuses takes nothing from the
    /// others (their tokens go back to their local buckets, still leased). Limits that must
    /// ask the token source ask it concurrently. [`Decisions::retry_after`] is the longest wait
    /// among the limits that refused.
    ///
    /// Every limit is a rule of this limiter's source, on its own (user, rule) bucket: so
    /// each keeps the bound it has alone, and the tokens of a refused request are never
    /// spent. `Err` as for [`check`](Self::check) (then nothing is taken from any limit).
    ///
    /// Answered locally (every limit a local hit, or a refusal from the local buckets and the
    /// denial cache), it takes no lock and allocates nothing for up to [`INLINE_LIMITS`].
    pub async fn check_all(&self, limits: &[Limit<'_>]) -> Result<Decisions, Error> {
        let mut decisions = Decisions::undecided(limits.len());
        match self.check_all_locally(limits, false, &mut decisions) {
            0 => Ok(decisions),
            ask => {
                let owned = limits.iter().map(Limit::to_owned_parts).collect();
                self.check_all_with_source(owned, decisions, ask, false)
                    .await
                    .map(|granted| granted.decisions)
            }
        }
    }

    /// [`check_all`](Self::check_all) without calling the source, when it can: `Some` when
    /// every limit is a local hit or one refuses locally (a local bucket, the denial cache),
    /// `None` when the source must be asked (and nothing is taken). Takes no lock and
    /// allocates nothing for up to [`INLINE_LIMITS`] limits.
    #[inline]
    pub fn check_all_local(&self, limits: &[Limit<'_>]) -> Option<Decisions> {
        let mut decisions = Decisions::undecided(limits.len());
        if self.check_all_locally(limits, false, &mut decisions) == 0 {
            return Some(decisions);
        }
        self.give_back_all(limits.iter().map(Limit::parts), &decisions, &[]);
        None
    }

    /// [`check_all_local`](Self::check_all_local) into `decisions` (emptied first, and reused:
    /// their room for more than [`INLINE_LIMITS`] limits is kept): `true` when decided, `false`
    /// when the source must be asked (and nothing is taken).
    ///
    /// The hot path's form: a server that keeps one `Decisions` per worker (or per request)
    /// copies none, where [`check_all_local`](Self::check_all_local) returns the list by
    /// value (BENCHMARKS.md: the copies are a fifth of a two-limit hit).
    ///
    /// ```
    /// use lightrate_core::{Decisions, EmbeddedSource, Limit, Limiter, RefillRate, RuleSet, Target};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lightrate_core::Error> {
    /// let rules = RuleSet::builder().default_rule(RefillRate::per_second(10), 10).build()?;
    /// let limiter = Limiter::new(EmbeddedSource::new(rules));
    /// let limits = [Limit::new("alice", Target::operation("search"))];
    /// let mut decisions = Decisions::default();
    /// // Nothing is leased yet: the source must be asked.
    /// assert!(!limiter.check_all_local_in(&limits, &mut decisions));
    /// assert!(limiter.check_all(&limits).await?.is_allowed());
    /// # Ok(()) }
    /// ```
    #[inline]
    pub fn check_all_local_in(&self, limits: &[Limit<'_>], decisions: &mut Decisions) -> bool {
        decisions.reset(limits.len());
        if self.check_all_locally(limits, false, decisions) == 0 {
            return true;
        }
        self.give_back_all(limits.iter().map(Limit::parts), decisions, &[]);
        false
    }

    /// The local phase of [`check_all`](Self::check_all): each limit's local hit or denial
    /// written to `decisions` (undecided, one per limit), and every token taken given back
    /// when one refused. A denial counts as shadow mode's when `shadow`. Returns the limits
    /// (a bit each) that must ask the source, the others holding the tokens they took until it
    /// answers; 0 when decided.
    ///
    /// The decisions are the caller's, filled in place: returned by value, they were copied
    /// three times over (a third of the instructions of a two-limit hit).
    #[inline]
    pub(crate) fn check_all_locally(
        &self,
        limits: &[Limit<'_>],
        shadow: bool,
        decisions: &mut Decisions,
    ) -> u64 {
        let (mut ask, mut refused) = (0u64, false);
        let taken = self.inner.take_memoized(limits, decisions);
        if taken == limits.len() {
            return 0;
        }
        for (index, limit) in limits.iter().enumerate().skip(taken) {
            let (user, target, cost) = (limit.user, &limit.target, limit.cost);
            let step = self
                .inner
                .check_at(index, user, target, cost, shadow, decisions);
            step.note(index, &mut ask, &mut refused);
        }
        if refused {
            self.give_back_all(limits.iter().map(Limit::parts), decisions, &[]);
            return 0;
        }
        ask
    }

    /// The slow phase of [`check_all`](Self::check_all): the limits in `ask` ask the source,
    /// concurrently; `decisions` holds what the others took. If the future is dropped before
    /// it is done, every token taken for the request goes back.
    pub(crate) fn check_all_with_source(
        &self,
        limits: Vec<OwnedLimit>,
        decisions: Decisions,
        ask: u64,
        shadow: bool,
    ) -> impl Future<Output = Result<GrantedDecisions, Error>> + Send + 'static {
        let limiter = self.clone();
        async move {
            // Until the answers are in, what was taken goes back if this future is dropped.
            let mut held = Held {
                limiter: &limiter,
                limits: &limits,
                decisions,
                deadlines: vec![0; limits.len()],
                settled: false,
            };
            // Local takes are not held while the source is asked: a lease landing on their
            // bucket meanwhile would mix their generation with its own. They go back now and
            // are taken again once the source has answered.
            let mut retake = 0u64;
            for index in 0..limits.len() {
                if ask & bit(index) == 0 {
                    held.release_local(index, &mut retake);
                }
            }
            let (mut ask, mut asked, mut failed, mut refused) = (ask, 0u64, None, false);
            // The rule each limit's source answer named: a limit whose bucket is emptied at
            // every round is refused as that rule's (a rate limit, which may be waited for).
            let mut rules: Vec<Option<RuleSummary>> = vec![None; limits.len()];
            for _ in 0..ROUNDS {
                asked |= ask;
                let mut pending: Vec<(usize, Pin<Box<dyn Future<Output = _> + Send>>)> = limits
                    .iter()
                    .enumerate()
                    .filter(|(index, _)| ask & bit(*index) != 0)
                    .map(|(index, (user, target, cost))| {
                        let check = Arc::clone(&limiter.inner).check_slow_granting(
                            user.clone(),
                            target.clone(),
                            *cost,
                        );
                        (
                            index,
                            Box::pin(check) as Pin<Box<dyn Future<Output = _> + Send>>,
                        )
                    })
                    .collect();
                std::future::poll_fn(|cx| {
                    pending.retain_mut(|(index, check)| match check.as_mut().poll(cx) {
                        Poll::Pending => true,
                        Poll::Ready(Ok((decision, deadline_ms))) => {
                            // Typed here: the futures' output is inferred from their use.
                            let decision: Decision = decision;
                            rules[*index] = decision.rule().or(rules[*index]);
                            *held.decisions.slot(*index) = Some(decision);
                            held.deadlines[*index] = deadline_ms;
                            // A local take (tokens came meanwhile) waits for no one either.
                            held.release_local(*index, &mut retake);
                            false
                        }
                        Poll::Ready(Err(error)) => {
                            failed.get_or_insert(error);
                            false
                        }
                    });
                    if pending.is_empty() {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    }
                })
                .await;
                refused = held.decisions.iter().flatten().any(|d| !d.is_allowed());
                if failed.is_some() || refused {
                    break;
                }
                // The local takes again, all at once: a bucket emptied meanwhile asks the
                // source in another round.
                ask = 0;
                for (index, (user, target, cost)) in limits.iter().enumerate() {
                    if retake & bit(index) == 0 {
                        continue;
                    }
                    let decisions = &mut held.decisions;
                    let step = limiter
                        .inner
                        .check_at(index, user, target, *cost, shadow, decisions);
                    step.note(index, &mut ask, &mut refused);
                }
                retake = 0;
                if refused || ask == 0 {
                    break;
                }
            }
            held.settled = true;
            let mut decisions = std::mem::replace(&mut held.decisions, Decisions::undecided(0));
            let deadlines = std::mem::take(&mut held.deadlines);
            let inner = &limiter.inner;
            if ask != 0 && failed.is_none() && !refused {
                // Emptied again at every round (a bucket others drain as fast as it fills):
                // refused, never admitted without a token, as its rule's (a rate limit, not
                // an outage: a request that may wait for its tokens waits).
                for (index, rule) in rules.iter().enumerate() {
                    if ask & bit(index) != 0 {
                        *decisions.slot(index) = Some(contended(*rule));
                    }
                }
            }
            if let Some(error) = failed {
                inner.count(&Err(&error), shadow);
                limiter.give_back_all(limits.iter().map(parts_of), &decisions, &deadlines);
                return Err(error);
            }
            let allowed = decisions.is_allowed();
            for (index, decision) in decisions.iter().enumerate() {
                let Some(decision) = decision else { continue };
                // A limit the source allowed counts only if the request went ahead.
                if asked & bit(index) != 0 && (allowed || !decision.is_allowed()) {
                    inner.count(&Ok(*decision), shadow);
                }
            }
            if !allowed {
                limiter.give_back_all(limits.iter().map(parts_of), &decisions, &deadlines);
            }
            Ok(GrantedDecisions {
                decisions,
                deadlines,
            })
        }
    }

    /// Puts back `cost` tokens a request took from the bucket of (user, rule `slot`) when
    /// something else refused it.
    pub(crate) fn give_back(&self, user: &str, slot: u32, cost: u64, taken: Taken) {
        self.inner.give_back(user, slot, cost, taken);
    }

    /// Gives back the tokens of every limit that allowed a request another limit refused:
    /// to the local bucket they were taken from, or, granted by the source, to the local
    /// bucket of their (user, rule).
    pub(super) fn give_back_all<'l>(
        &self,
        limits: impl Iterator<Item = (&'l str, u64)>,
        decisions: &Decisions,
        deadlines: &[u64],
    ) {
        for (index, (user, cost)) in limits.enumerate() {
            let Some(decision) = decisions.get(index).filter(|d| d.is_allowed()) else {
                continue;
            };
            let deadline_ms = deadlines.get(index).copied().unwrap_or(0);
            let Some(taken) = Taken::of(decision, deadline_ms) else {
                continue;
            };
            if let Some(rule) = decision.rule() {
                self.inner.give_back(user, rule.slot, cost, taken);
            }
        }
    }
}

impl Limit<'_> {
    fn parts(&self) -> (&str, u64) {
        (self.user, self.cost)
    }

    pub(crate) fn to_owned_parts(&self) -> OwnedLimit {
        (
            self.user.into(),
            self.target.clone().into_owned(),
            self.cost,
        )
    }
}

fn parts_of(limit: &OwnedLimit) -> (&str, u64) {
    (&limit.0, limit.2)
}

/// The tokens a request took while it waits for the source about its other limits: given back
/// if the wait is dropped (the client went away) before it is settled.
struct Held<'a> {
    limiter: &'a Limiter,
    limits: &'a [OwnedLimit],
    decisions: Decisions,
    /// Of the limits the source granted, their leases' deadlines (ms).
    deadlines: Vec<u64>,
    settled: bool,
}

impl Held<'_> {
    /// If the limit at `index` took its tokens from a local bucket, puts them back now, and
    /// marks it to be taken again (in `retake`).
    fn release_local(&mut self, index: usize, retake: &mut u64) {
        let slot = self.decisions.slot(index);
        let Some(decision) = slot.filter(|d| d.is_allowed()) else {
            return;
        };
        if decision.source() != DecisionSource::LocalBucket {
            return;
        }
        let limit = self.limits.get(index);
        if let (Some(rule), Some(taken), Some((user, _, cost))) =
            (decision.rule(), Taken::of(&decision, 0), limit)
        {
            self.limiter.inner.give_back(user, rule.slot, *cost, taken);
        }
        *slot = None;
        *retake |= bit(index);
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.limiter.give_back_all(
                self.limits.iter().map(parts_of),
                &self.decisions,
                &self.deadlines,
            );
        }
    }
}

impl Inner {
    /// Puts `cost` tokens back in the bucket of (user, slot): a take of a request another limit
    /// refused (a local take, or a grant of the source straight to the request).
    /// Lost when they cannot go back (the bucket is gone, or its tokens died meanwhile).
    pub(super) fn give_back(&self, user: &str, slot: u32, cost: u64, taken: Taken) {
        let now_ms = self.clock.now().as_millis();
        let guard = self.buckets.guard();
        let bucket = self.buckets.get(user.as_bytes(), slot, &guard);
        match taken {
            Taken::Local { until_ms } => {
                let result =
                    bucket.map_or((false, 0), |b| b.give_back_taken(cost, until_ms, now_ms));
                self.gave_back(slot, cost, result);
            }
            // Granted for one request, never held (the SDKs' way for the default rule):
            // nothing to count.
            Taken::Granted { deadline_ms: 0 } => {}
            Taken::Granted { deadline_ms } => {
                let (back, stale) = bucket.map_or((false, 0), |b| {
                    b.give_back_granted(cost, deadline_ms, now_ms)
                });
                self.counters.expired(slot, stale);
                self.counters.returned(slot, cost);
                if !back {
                    // A grant of a lease that could not go back (its generation is gone:
                    // two leases landed since): returned and lost, so that `Stats` shows it.
                    self.counters.expired(slot, cost);
                }
            }
        }
    }
}

/// Where the tokens of an allowed limit came from, to give them back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Taken {
    /// A local bucket, of tokens spendable until `until_ms`.
    Local { until_ms: u64 },
    /// The source, straight to the request, from a lease whose tokens are spendable until
    /// `deadline_ms` (0: not held in a bucket).
    Granted { deadline_ms: u64 },
}

impl Taken {
    /// How `decision` (allowed) took its tokens, `deadline_ms` being its lease's when the
    /// source granted them; `None` when it took none (the outage policy allowed it).
    pub(crate) fn of(decision: &Decision, deadline_ms: u64) -> Option<Taken> {
        match decision.source() {
            DecisionSource::LocalBucket => Some(Taken::Local {
                until_ms: decision.taken_until_ms(),
            }),
            DecisionSource::TokenSource => Some(Taken::Granted { deadline_ms }),
            DecisionSource::Unavailable | DecisionSource::DenialCache => None,
        }
    }
}

/// The decisions of a request's limits after the source was asked, with the deadlines of
/// the leases that granted some (what giving them back needs).
#[derive(Debug)]
pub(crate) struct GrantedDecisions {
    pub(crate) decisions: Decisions,
    pub(crate) deadlines: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RefillRate;

    #[test]
    fn a_bucket_emptied_at_every_round_is_refused_as_its_rules_not_as_an_outage() {
        let rule = RuleSummary {
            slot: 3,
            burst_rate: 10,
            refill_rate: RefillRate::per_second(10),
            is_default: false,
        };
        // A rate limit: a request that may wait for its tokens waits.
        let refused = contended(Some(rule));
        assert!(refused.is_rate_limit_refusal());
        assert_eq!(refused.rule(), Some(rule));
        assert_eq!(refused.retry_after(), Duration::from_millis(100));
        // No answer named the rule: the outage policy's kind of refusal, which no wait helps.
        let unknown = contended(None);
        assert!(!unknown.is_allowed() && !unknown.is_rate_limit_refusal());
        let mut decisions = Decisions::undecided(2);
        decisions.set(
            0,
            Decision::unavailable(false, crate::ErrorKind::Timeout, Duration::ZERO),
        );
        assert!(!decisions.rate_limited());
        decisions.set(1, refused);
        assert!(decisions.rate_limited());
    }
}
