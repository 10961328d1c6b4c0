//! Reserve, then settle: [`Reservation`], what [`Limiter::reserve`] returns, and the debts of
//! reservations settled above their estimate.
//!
//! A reservation is a request's limits decided as [`Limiter::check_all`] decides them, at an
//! estimate of their cost, and held. Settled at what was really used:
//!
//! - **Less**: the difference goes back to the local bucket it was taken from (or, granted by
//!   the source straight to the request, to the bucket of its lease), at once: the same user's
//!   next requests spend it. It stays leased: it dies at its lease's horizon like any leased
//!   token, and is never handed back to the source (so the bound per limit is unchanged).
//! - **More**: the difference is taken from the local bucket, as much as it holds; the rest is
//!   owed. A debt is charged to the source by the next request of that (user, rule) that
//!   misses its local bucket, before anything else: what the source grants pays it; what it
//!   cannot grant yet refuses that request, with the time until the source has it as its
//!   `Retry-After`, and the denial cache holds the user's next requests off until then,
//!   without calls. The finished request is never refused.
//!
//! Dropped without being settled, a reservation is charged in full ([`OnDrop::Charge`]), or
//! released ([`OnDrop::Release`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::bucket::LocalBucket;
use super::decision::{Decision, DecisionSource, RuleSummary};
use super::handle::Limiter;
use super::hit::at_least_one;
use super::inner::Inner;
use super::keys::InList;
use super::lease::{next_token, wait_for};
use super::memo;
use super::several::{Decisions, Limit, OwnedLimit, Taken, INLINE_LIMITS};
use crate::clock::duration_to_nanos;
use crate::{Error, Target};

/// What becomes of a [`Reservation`] dropped without being settled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnDrop {
    /// Every token reserved is spent (the default: a request that went away may still have
    /// cost what it reserved).
    #[default]
    Charge,
    /// Every token reserved goes back, as if settled at 0.
    Release,
}

/// What settling one limit of a [`Reservation`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settled {
    /// Tokens reserved and not used, given back to the local bucket.
    pub returned: u64,
    /// Tokens used beyond the reservation, taken from the local bucket.
    pub charged: u64,
    /// Tokens used beyond the reservation that no local bucket held: owed, and charged to the
    /// source by the next request of the (user, rule) that misses its bucket.
    pub owed: u64,
}

/// What settling a reservation did, one [`Settled`] per limit in the order they were given
/// (up to [`INLINE_LIMITS`] kept without allocating).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settlement {
    len: usize,
    inline: [Settled; INLINE_LIMITS],
    more: Vec<Settled>,
}

impl Settlement {
    #[inline]
    fn of(len: usize) -> Self {
        Settlement {
            len,
            inline: [Settled::default(); INLINE_LIMITS],
            more: if len > INLINE_LIMITS {
                vec![Settled::default(); len - INLINE_LIMITS]
            } else {
                Vec::new()
            },
        }
    }

    fn set(&mut self, index: usize, settled: Settled) {
        match index.checked_sub(INLINE_LIMITS) {
            None => self.inline[index] = settled,
            Some(over) => self.more[over] = settled,
        }
    }

    /// How many limits were settled.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there was no limit.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// What settling the limit at `index` did.
    pub fn get(&self, index: usize) -> Option<&Settled> {
        if index >= self.len {
            return None;
        }
        match index.checked_sub(INLINE_LIMITS) {
            None => self.inline.get(index),
            Some(over) => self.more.get(over),
        }
    }

    /// Every limit's, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Settled> + '_ {
        (0..self.len).filter_map(|index| self.get(index))
    }
}

impl std::ops::Index<usize> for Settlement {
    type Output = Settled;

    /// What settling the limit at `index` did; panics if there is no such limit.
    fn index(&self, index: usize) -> &Settled {
        match self.get(index) {
            Some(settled) => settled,
            None => panic!("no limit at {index} of {}", self.len),
        }
    }
}

/// A request's limits decided at an estimate of their cost, and held until it is settled at
/// what was used ([`settle`](Self::settle)), released, or dropped.
///
/// ```
/// use lightrate_core::{EmbeddedSource, Limit, Limiter, RefillRate, RuleSet, Target};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lightrate_core::Error> {
/// let rules = RuleSet::builder()
///     .default_rule(RefillRate::per_second(1), 5)
///     .operation("tokens", "^llm_tokens$", RefillRate::per_minute(1_000), 1_000)
///     .build()?;
/// let limiter = Limiter::new(EmbeddedSource::new(rules));
/// let mut admitted = 0;
/// for _ in 0..10 {
///     // Each request reserves the worst case (500 tokens)...
///     let limits = [Limit::new("alice", Target::operation("llm_tokens")).with_cost(500)];
///     let reservation = limiter.reserve(&limits).await?;
///     if reservation.is_allowed() {
///         admitted += 1;
///     }
///     // ...and uses 50: the other 450 go back at once.
///     reservation.settle(&[50]);
/// }
/// assert_eq!(admitted, 10);
/// # Ok(()) }
/// ```
#[must_use = "a reservation is charged in full when dropped: settle it"]
pub struct Reservation {
    limiter: Limiter,
    limits: Vec<OwnedLimit>,
    decisions: Decisions,
    /// Of the limits the source granted, their leases' deadlines (ms).
    deadlines: Vec<u64>,
    on_drop: OnDrop,
    /// Whether it still holds tokens to settle.
    open: bool,
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("limits", &self.limits)
            .field("decisions", &self.decisions)
            .field("on_drop", &self.on_drop)
            .field("open", &self.open)
            .finish_non_exhaustive()
    }
}

impl Reservation {
    pub(crate) fn new(
        limiter: Limiter,
        limits: Vec<OwnedLimit>,
        decisions: Decisions,
        deadlines: Vec<u64>,
    ) -> Self {
        let open = decisions.is_allowed();
        Reservation {
            limiter,
            limits,
            decisions,
            deadlines,
            on_drop: OnDrop::default(),
            open,
        }
    }

    /// Its decisions and the deadlines of the leases that granted some, for a caller that
    /// keeps what it took (the middleware, which settles it later): it holds nothing after.
    pub(crate) fn into_parts(mut self) -> (Decisions, Vec<u64>) {
        self.open = false;
        (
            std::mem::replace(&mut self.decisions, Decisions::undecided(0)),
            std::mem::take(&mut self.deadlines),
        )
    }

    /// The decision of every limit, as [`Limiter::check_all`] gives it.
    pub fn decisions(&self) -> &Decisions {
        &self.decisions
    }

    /// Whether every limit admitted the request (only then does it hold tokens).
    pub fn is_allowed(&self) -> bool {
        self.decisions.is_allowed()
    }

    /// How long until the request can be allowed (zero when allowed).
    pub fn retry_after(&self) -> Duration {
        self.decisions.retry_after()
    }

    /// The tokens reserved on the limit at `index` (its cost), 0 when there is no such limit.
    pub fn reserved(&self, index: usize) -> u64 {
        self.limits.get(index).map_or(0, |limit| limit.2)
    }

    /// A refusal whose wait is `estimate` (a waiter's place in its queue): its deciding
    /// refusal says so, when it said less.
    pub(super) fn waited(mut self, estimate: Duration) -> Self {
        self.decisions.wait_at_least(estimate);
        self
    }

    /// Sets what happens if this reservation is dropped without being settled.
    pub fn on_drop(mut self, on_drop: OnDrop) -> Self {
        self.on_drop = on_drop;
        self
    }

    /// Settles every limit at what the request used, in the order the limits were given (a
    /// limit missing from `used` is settled at what it reserved). Tokens reserved and not used
    /// go back to the local bucket at once; tokens used beyond the reservation are taken from
    /// it, and what it does not hold is owed (see the [module](self)). Never refuses; nothing
    /// happens for a reservation that was refused.
    pub fn settle(mut self, used: &[u64]) -> Settlement {
        let mut settled = Settlement::of(self.limits.len());
        for index in 0..self.limits.len() {
            let used = used.get(index).copied().unwrap_or(self.reserved(index));
            settled.set(index, self.settle_limit(index, used));
        }
        self.open = false;
        settled
    }

    /// Settles every limit at 0: every token reserved goes back.
    pub fn release(self) {
        let zeros = vec![0; self.limits.len()];
        let _ = self.settle(&zeros);
    }

    /// Settles the limit at `index` at `used`.
    fn settle_limit(&self, index: usize, used: u64) -> Settled {
        if !self.open {
            return Settled::default();
        }
        let Some((user, target, reserved)) = self.limits.get(index) else {
            return Settled::default();
        };
        let deadline_ms = self.deadlines.get(index).copied().unwrap_or(0);
        let taken = (self.decisions.get(index), deadline_ms);
        self.limiter
            .inner
            .settle_one(user, target, *reserved, taken, used)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.open && self.on_drop == OnDrop::Release {
            for index in 0..self.limits.len() {
                self.settle_limit(index, 0);
            }
        }
        self.open = false;
    }
}

/// A reservation decided without calling the token source ([`Limiter::reserve_local`]): as a
/// [`Reservation`], borrowing the request's limits, so that reserving and settling allocate
/// nothing (for up to [`INLINE_LIMITS`] limits).
#[must_use = "a reservation is charged in full when dropped: settle it"]
#[derive(Debug)]
pub struct LocalReservation<'a> {
    limiter: &'a Limiter,
    limits: &'a [Limit<'a>],
    held: LocalHeld,
    on_drop: OnDrop,
    open: bool,
}

/// What a [`LocalReservation`] took.
// Boxed, the decisions of several limits would be allocated for every reservation of them.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum LocalHeld {
    /// One limit: its decision, and the bucket it took from when this thread's memo held it
    /// (settled, its unused tokens go back there without a look-up).
    One(Option<Decision>, Option<Arc<LocalBucket>>),
    /// Several.
    Many(Decisions),
}

impl LocalReservation<'_> {
    /// The decision of the limit at `index`: `None` when it was not decided (another limit
    /// refused first) or there is no such limit.
    pub fn decision(&self, index: usize) -> Option<Decision> {
        match &self.held {
            LocalHeld::One(decision, _) => decision.filter(|_| index == 0),
            LocalHeld::Many(decisions) => decisions.get(index).copied(),
        }
    }

    /// Whether every limit admitted the request (only then does it hold tokens).
    #[inline]
    pub fn is_allowed(&self) -> bool {
        match &self.held {
            LocalHeld::One(decision, _) => decision.is_some_and(|d| d.is_allowed()),
            LocalHeld::Many(decisions) => decisions.is_allowed(),
        }
    }

    /// How long until the request can be allowed: the longest wait among the limits that
    /// refused it (zero when allowed).
    pub fn retry_after(&self) -> Duration {
        match &self.held {
            LocalHeld::One(decision, _) => decision.map_or(Duration::ZERO, |d| d.retry_after()),
            LocalHeld::Many(decisions) => decisions.retry_after(),
        }
    }

    /// Sets what happens if this reservation is dropped without being settled.
    pub fn on_drop(mut self, on_drop: OnDrop) -> Self {
        self.on_drop = on_drop;
        self
    }

    /// Settles every limit at what the request used, as [`Reservation::settle`] does.
    #[inline(always)]
    pub fn settle(mut self, used: &[u64]) -> Settlement {
        let mut settled = Settlement::of(self.limits.len());
        if self.open {
            for (index, limit) in self.limits.iter().enumerate() {
                let used = used.get(index).copied().unwrap_or(limit.cost());
                settled.set(index, self.settle_limit(index, used));
            }
        }
        self.open = false;
        settled
    }

    /// Settles every limit at 0: every token reserved goes back.
    pub fn release(self) {
        let _ = self.on_drop(OnDrop::Release);
    }

    /// Settles every limit at 0, dropped unsettled with [`OnDrop::Release`].
    #[cold]
    fn release_all(&mut self) {
        for index in 0..self.limits.len() {
            self.settle_limit(index, 0);
        }
    }

    #[inline]
    fn settle_limit(&self, index: usize, used: u64) -> Settled {
        let Some(limit) = self.limits.get(index) else {
            return Settled::default();
        };
        let (user, target, cost) = (limit.user(), limit.target(), limit.cost());
        let inner = &self.limiter.inner;
        match &self.held {
            LocalHeld::One(Some(decision), Some(bucket))
                if used < cost && decision.is_allowed() =>
            {
                // Back to the bucket it was taken from, held since.
                let (Some(rule), until_ms) = (decision.rule(), decision.taken_until_ms()) else {
                    return Settled::default();
                };
                let returned = cost - used;
                inner.give_back_to(bucket, rule.slot, returned, until_ms, user);
                Settled {
                    returned,
                    ..Settled::default()
                }
            }
            LocalHeld::One(decision, _) => {
                inner.settle_one(user, target, cost, (decision.as_ref(), 0), used)
            }
            LocalHeld::Many(decisions) => {
                inner.settle_one(user, target, cost, (decisions.get(index), 0), used)
            }
        }
    }
}

impl Drop for LocalReservation<'_> {
    #[inline]
    fn drop(&mut self) {
        // Settled (the usual end), nothing is left to do: checked where it is dropped.
        if self.open && self.on_drop == OnDrop::Release {
            self.release_all();
        }
    }
}

impl Limiter {
    /// [`reserve`](Self::reserve) without calling the token source, when it can: `Some` when
    /// every limit is a local hit or one refuses locally (a local bucket, the denial cache),
    /// `None` when the source must be asked (and nothing is taken). Allocates nothing for up
    /// to [`INLINE_LIMITS`] limits, nor does settling it.
    ///
    /// ```
    /// use lightrate_core::{EmbeddedSource, Limit, Limiter, RefillRate, RuleSet, Target};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lightrate_core::Error> {
    /// let rules = RuleSet::builder()
    ///     .default_rule(RefillRate::per_second(1), 5)
    ///     .operation("tokens", "^llm_tokens$", RefillRate::per_second(100), 10_000)
    ///     .build()?;
    /// let limiter = Limiter::new(EmbeddedSource::new(rules));
    /// let limits = [Limit::new("alice", Target::operation("llm_tokens")).with_cost(500)];
    /// // The first learns the rule, the second leases; the next are decided in the process.
    /// for _ in 0..2 {
    ///     limiter.reserve(&limits).await?.settle(&[100]);
    /// }
    /// let local = match limiter.reserve_local(&limits) {
    ///     Some(local) => local,
    ///     None => unreachable!("leased by the first"),
    /// };
    /// assert!(local.is_allowed());
    /// assert_eq!(local.settle(&[100])[0].returned, 400);
    /// # Ok(()) }
    /// ```
    #[inline]
    pub fn reserve_local<'a>(&'a self, limits: &'a [Limit<'a>]) -> Option<LocalReservation<'a>> {
        // Each kind built where it is returned: a reservation is as large as the decisions
        // of four limits, and built then moved, it was copied whole (a fifth of a reserve and
        // settle, BENCHMARKS.md).
        if let [one] = limits {
            // One limit: its hit, without the list's machinery, keeping the bucket it took
            // from.
            let (mut decision, mut bucket) = (None, None);
            let (user, cost) = (one.user().as_bytes(), at_least_one(one.cost()));
            let target = &InList(one.target());
            let inner = &self.inner;
            inner.check_local_keeping(user, target, cost, false, &mut decision, &mut bucket);
            let open = decision?.is_allowed();
            return Some(LocalReservation {
                limiter: self,
                limits,
                held: LocalHeld::One(decision, bucket),
                on_drop: OnDrop::default(),
                open,
            });
        }
        let mut reservation = LocalReservation {
            limiter: self,
            limits,
            held: LocalHeld::Many(Decisions::undecided(limits.len())),
            on_drop: OnDrop::default(),
            open: false,
        };
        let LocalHeld::Many(decisions) = &mut reservation.held else {
            return None;
        };
        if self.check_all_locally(limits, false, decisions) != 0 {
            // The source must be asked: what the others took goes back.
            let parts = limits.iter().map(|l| (l.user(), l.cost()));
            self.give_back_all(parts, decisions, &[]);
            return None;
        }
        reservation.open = decisions.is_allowed();
        Some(reservation)
    }

    /// Reserves a request's limits at an estimate of their cost (each [`Limit`]'s cost), all
    /// or nothing as [`check_all`](Self::check_all) decides them, to be settled later at what
    /// was used: [`Reservation::settle`]. A refused reservation holds nothing.
    pub async fn reserve(&self, limits: &[Limit<'_>]) -> Result<Reservation, Error> {
        let owned: Vec<OwnedLimit> = limits.iter().map(Limit::to_owned_parts).collect();
        let mut decisions = Decisions::undecided(limits.len());
        match self.check_all_locally(limits, false, &mut decisions) {
            0 => Ok(Reservation::new(self.clone(), owned, decisions, Vec::new())),
            ask => {
                let granted = self
                    .check_all_with_source(owned.clone(), decisions, ask, false)
                    .await?;
                Ok(Reservation::new(
                    self.clone(),
                    owned,
                    granted.decisions,
                    granted.deadlines,
                ))
            }
        }
    }
}

impl Inner {
    /// Settles one limit of a reservation at `used`: `reserved` taken by `decision` (with its
    /// lease's deadline, granted by the source).
    fn settle_one(
        &self,
        user: &str,
        target: &Target<'_>,
        reserved: u64,
        (decision, deadline_ms): (Option<&Decision>, u64),
        used: u64,
    ) -> Settled {
        let Some(decision) = decision.filter(|d| d.is_allowed()) else {
            return Settled::default();
        };
        let (Some(rule), Some(taken)) = (decision.rule(), Taken::of(decision, deadline_ms)) else {
            // Allowed without a token (the outage policy): nothing to give back or charge.
            return Settled::default();
        };
        match used.cmp(&reserved) {
            std::cmp::Ordering::Equal => Settled::default(),
            std::cmp::Ordering::Less => {
                let returned = reserved - used;
                match taken {
                    Taken::Local { until_ms } => {
                        self.give_back_local(user, target, rule.slot, returned, until_ms)
                    }
                    granted => self.give_back(user, rule.slot, returned, granted),
                }
                // Requests of this user waiting for their tokens ask again.
                self.waiting.wake(user);
                Settled {
                    returned,
                    ..Settled::default()
                }
            }
            std::cmp::Ordering::Greater => self.charge(user, target, rule, used - reserved),
        }
    }

    /// Gives back `tokens` a local take of (user, target) handed out: to the bucket this
    /// thread's memo holds for them, without a map look-up, when it has it (a reservation
    /// settled on the thread that made it); else as [`give_back`](Self::give_back) does.
    fn give_back_local(
        &self,
        user: &str,
        target: &Target<'_>,
        slot: u32,
        tokens: u64,
        until_ms: u64,
    ) {
        let now_ms = self.clock.coarse_now().as_millis();
        let (limiter, generation) = self.routes.memo_key();
        let mut back = None;
        memo::hit(
            limiter,
            generation,
            now_ms,
            target,
            user.as_bytes(),
            |rule, bucket| {
                // The memos hand out a bucket that died (its take says so): a dead one is
                // skipped here, for the map's live bucket, as before they handed them out.
                if let Some(bucket) = bucket.filter(|b| rule.slot == slot && !b.is_dead()) {
                    back = Some(bucket.give_back_taken(tokens, until_ms, now_ms));
                }
                true
            },
        );
        match back {
            Some(back) => self.gave_back(slot, tokens, back),
            None => self.give_back(user, slot, tokens, Taken::Local { until_ms }),
        }
    }

    /// Gives back `tokens` a local take of `user` handed out to the `bucket` (of rule `slot`)
    /// it took them from, and wakes the user's waiters.
    #[inline]
    fn give_back_to(
        &self,
        bucket: &LocalBucket,
        slot: u32,
        tokens: u64,
        until_ms: u64,
        user: &str,
    ) {
        let now_ms = self.clock.coarse_now().as_millis();
        self.gave_back(
            slot,
            tokens,
            bucket.give_back_taken(tokens, until_ms, now_ms),
        );
        // Requests of this user waiting for their tokens ask again.
        self.waiting.wake(user);
    }

    /// Counts what a give-back of `tokens` to a bucket came to: `(back, stale)`, whether they
    /// went back and how many of the bucket's tokens had died meanwhile.
    #[inline]
    pub(super) fn gave_back(&self, slot: u32, tokens: u64, (back, stale): (bool, u64)) {
        match (back, stale) {
            (true, 0) => {}
            (true, stale) => self.counters.expired(slot, stale),
            // Lost: every token deposited is taken, held or lost.
            (false, stale) => self.counters.expired(slot, stale + tokens),
        }
    }

    /// Charges `extra` tokens a reservation used beyond its estimate: from the local bucket of
    /// (user, rule), as many as it holds; the rest owed.
    fn charge(&self, user: &str, target: &Target<'_>, rule: RuleSummary, extra: u64) -> Settled {
        let now_ms = self.clock.now().as_millis();
        let charged = {
            let guard = self.buckets.guard();
            self.buckets
                .get(user.as_bytes(), rule.slot, &guard)
                .map_or(0, |bucket| {
                    let taken = bucket.take_up_to(extra, now_ms);
                    if taken == extra {
                        return taken;
                    }
                    // An older generation past its deadline is dropped first, then the rest.
                    self.counters.expired(rule.slot, bucket.drop_stale(now_ms));
                    let taken = taken + bucket.take_up_to(extra - taken, now_ms);
                    // Something is owed: the next request asks the source (which the denial
                    // cache would spare it), to pay, and to learn for how long it must wait.
                    bucket.set_denied_until(0);
                    taken
                })
        };
        let owed = extra - charged;
        self.debts.add(user, rule, target, owed);
        Settled {
            returned: 0,
            charged,
            owed,
        }
    }

    /// The slow path of a request of (user, rule) that owes: the debt charged to the source
    /// first. `None` when paid (or nothing was owed, or the source could not be asked: the
    /// request goes on, the debt kept); else the refusal, with the time until the source can
    /// have the rest and the request's own `cost`, and the denial cache set until then.
    pub(super) async fn repay(&self, user: &str, rule: RuleSummary, cost: u64) -> Option<Decision> {
        let debt = self.debts.take(user, rule.slot)?;
        let answer = match self
            .call(user, &debt.target, debt.tokens, debt.tokens)
            .await
        {
            Ok(answer) => answer,
            Err(_) => {
                self.debts.add(user, rule, &debt.target, debt.tokens);
                return None;
            }
        };
        let paid = answer.tokens_consumed.min(debt.tokens);
        self.counters.per_request(rule.slot, paid);
        let left = debt.tokens - paid;
        if left == 0 {
            return None;
        }
        self.debts.add(user, rule, &debt.target, left);
        let remaining = answer.tokens_remaining;
        let next = next_token(&answer, rule);
        let retry_after = wait_for(rule, left.saturating_add(cost), remaining, next)
            .max(Duration::from_millis(1));
        let now = self.clock.now();
        {
            // The denial cache holds the user off until the debt alone is refilled: each
            // request it refuses waits for its own cost beyond that.
            let paid_off = wait_for(rule, left, remaining, next);
            let guard = self.buckets.guard();
            let bucket = self.bucket(user, rule.slot, now, &guard);
            let until = now.as_nanos().saturating_add(duration_to_nanos(paid_off));
            bucket.set_denied_until(until.saturating_sub(1_000_000).max(1));
        }
        Some(Decision::denied(
            DecisionSource::TokenSource,
            retry_after,
            remaining,
            rule,
        ))
    }
}
