//! How a request is decided against several limits ([`RouteLimit`]s declared on a middleware
//! or a route): all or nothing, in one decision, then its in-flight slots.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::sync::Arc;
use std::time::Duration;

use super::family::Charge;
use super::identifier::{client_ip, validate_identifier};
use super::identify::{Identify, Kind, MissingIdentifier};
use super::plan::{Allowed, Plan, Settle, Verdict};
use super::policy::RequestPolicy;
use super::rejection::Rejection;
use super::route_limit::{LimitTarget, RouteLimit, SettleFn};
use super::shadow::Mode;
use super::view::RequestView;
use crate::ip::IpText;
use crate::limiter::{GrantedDecisions, Taken};
use crate::{
    Acquired, Decision, DecisionSource, Decisions, Error, InFlight, InFlightSlot, Limit, OnDrop,
    Reservation, Target, INLINE_LIMITS,
};

/// A limit of one request: its identifier, target and cost, borrowed from the request and the
/// declarations while it is decided in the process (`'static`, owned, once the source must be
/// asked or the request waits).
type Owned<'r> = (Cow<'r, str>, HeldTarget<'r>, u64);

/// A limit's target as a request holds it: an operation's, which lives as long as the
/// middleware's declarations (`'static`: owned or kept, it is never copied), or the request's
/// own, borrowed from the request (copied when the request must outlive the borrow).
enum HeldTarget<'r> {
    /// An operation's, or one already copied.
    Kept(Target<'static>),
    /// The request's own.
    Request(Target<'r>),
}

impl<'r> HeldTarget<'r> {
    /// The target.
    fn get(&self) -> &Target<'r> {
        match self {
            HeldTarget::Kept(target) => target,
            HeldTarget::Request(target) => target,
        }
    }

    /// The target for as long as needed: an operation's is cloned (its name borrowed, not
    /// copied, when it was given as a `&'static str`), the request's copied.
    fn to_static(&self) -> Target<'static> {
        match self {
            HeldTarget::Kept(target) => target.clone(),
            HeldTarget::Request(target) => target.clone().into_owned(),
        }
    }

    /// Itself, for as long as needed ([`to_static`](Self::to_static)).
    fn into_static(self) -> HeldTarget<'static> {
        match self {
            HeldTarget::Kept(target) => HeldTarget::Kept(target),
            HeldTarget::Request(target) => HeldTarget::Kept(target.into_owned()),
        }
    }
}

/// The in-flight caps of one request, with their identifiers.
type Caps = Vec<(InFlight, Box<str>)>;

/// What a request's limits ask beyond their decision: which are settled at the response's
/// use, and how long the request may wait for its tokens.
#[derive(Clone, Default)]
struct Terms {
    /// The limits settled at the response's use (a bit each).
    settle: u64,
    /// Whether their 5xx answers are settled as any other (else at 0).
    charge_server_errors: bool,
    /// Whether a request dropped before its response gives back what they reserved.
    release_dropped: bool,
    /// The longest wait among the limits.
    wait: Duration,
    /// The closures that read a settled limit's use from the response, with the limit's place.
    readers: Vec<(usize, Arc<SettleFn>)>,
}

/// A request's limits, identified: owned, its in-flight caps, and their terms.
struct Identified<'r> {
    owned: Vec<Owned<'r>>,
    caps: Caps,
    terms: Terms,
}

impl Identified<'_> {
    /// Owned, for a future that outlives the request (the source asked, a wait).
    fn into_owned(self) -> Identified<'static> {
        let Identified { owned, caps, terms } = self;
        let owned = owned
            .into_iter()
            .map(|(user, target, cost)| (Cow::Owned(user.into_owned()), target.into_static(), cost))
            .collect();
        Identified { owned, caps, terms }
    }
}

/// What taking a request's in-flight slots came to.
enum Slots {
    /// Every slot.
    Held(Vec<InFlightSlot>),
    /// This cap (its name) was full.
    Full(String),
}

impl<V: RequestView> RequestPolicy<V> {
    /// Decides `req` against `limits` (the request's own target being `target`, at `cost`):
    /// every identifier first (400 before any token is taken), then one decision for all,
    /// then the in-flight slots.
    #[inline(never)]
    pub(super) fn plan_limits(
        self: &Arc<Self>,
        req: &mut V::Request,
        limits: &[RouteLimit<V>],
        target: &Target<'_>,
        cost: u64,
    ) -> Plan {
        // The client's address as text, written once if a limit is identified by it.
        let address = OnceCell::new();
        let identified = match self.identify_limits(req, limits, target, cost, &address) {
            Ok(Some(identified)) => identified,
            // Not limited: shadow mode let an unusable identifier through, or no address.
            Ok(None) => {
                self.family.claim::<V>(req);
                return Plan::Call(None);
            }
            Err(plan) => return plan,
        };
        let shadow = self.options.mode == Mode::Shadow;
        let mut decisions = Decisions::undecided(identified.owned.len());
        let ask = with_borrowed(&identified.owned, |limits| {
            self.limiter
                .check_all_locally(limits, shadow, &mut decisions)
        });
        let grpc = V::is_grpc(req);
        if ask != 0 {
            let identified = identified.into_owned();
            return self.check_limits(req, identified, (decisions, ask), shadow, grpc);
        }
        if !decisions.is_allowed() && identified.terms.wait > Duration::ZERO && !shadow {
            // Refused now, it may wait for its tokens (given back by the local phase).
            let policy = Arc::clone(self);
            let foreign = V::with_extensions(req, |e| self.family.before_source::<V>(e));
            let identified = identified.into_owned();
            return Plan::Check(Box::pin(async move {
                let verdict = policy.wait_for_tokens(identified, grpc).await;
                refused_after_source(&verdict, foreign);
                verdict
            }));
        }
        let Identified { owned, caps, terms } = identified;
        let slots = if caps.is_empty() || !decisions.is_allowed() {
            Slots::Held(Vec::new())
        } else {
            match try_slots(&caps) {
                Some(slots) => slots,
                // A fleet's cap: Redis is asked.
                None => {
                    let policy = Arc::clone(self);
                    let foreign = V::with_extensions(req, |e| self.family.before_source::<V>(e));
                    let identified = Identified { owned, caps, terms }.into_owned();
                    return Plan::Check(Box::pin(async move {
                        let verdict = policy.with_slots(decisions, &[], &identified, grpc).await;
                        refused_after_source(&verdict, foreign);
                        verdict
                    }));
                }
            }
        };
        let verdict = self.verdict_all((&decisions, &[]), &owned, slots, &terms, grpc);
        // What the limits borrowed of the request, released before it is marked.
        drop(owned);
        match verdict {
            Verdict::Allowed(allowed) => Plan::Call(allowed.mark_request::<V>(req)),
            Verdict::Refused(answer) => {
                V::with_extensions(req, |e| self.family.refused::<V>(e));
                Plan::Refused(answer)
            }
        }
    }

    /// The verdict of a request its limits refused, that may wait for its tokens: it waits
    /// (first come, first served) up to its longest wait, or is refused at once when they
    /// cannot come within it.
    async fn wait_for_tokens(&self, identified: Identified<'static>, grpc: bool) -> Verdict {
        let acquired = {
            let borrowed = borrow(&identified.owned);
            self.limiter.acquire(&borrowed, identified.terms.wait).await
        };
        match acquired {
            Ok(reservation) => {
                let (decisions, deadlines) = reservation.into_parts();
                self.with_slots(decisions, &deadlines, &identified, grpc)
                    .await
            }
            Err(error) => self.settle(Err(error), grpc),
        }
    }

    /// The plan of a request whose limits must ask the token source (concurrently), then take
    /// their in-flight slots.
    #[cold]
    fn check_limits(
        self: &Arc<Self>,
        req: &V::Request,
        identified: Identified<'static>,
        (decisions, ask): (Decisions, u64),
        shadow: bool,
        grpc: bool,
    ) -> Plan {
        let foreign = V::with_extensions(req, |e| self.family.before_source::<V>(e));
        let check = self.limiter.check_all_with_source(
            owned_limits(&identified.owned),
            decisions,
            ask,
            shadow,
        );
        let policy = Arc::clone(self);
        Plan::Check(Box::pin(async move {
            let verdict = match check.await {
                Ok(granted) => {
                    let GrantedDecisions {
                        decisions,
                        deadlines,
                    } = granted;
                    let waits = identified.terms.wait > Duration::ZERO && !shadow;
                    // Refused by the outage policy, it does not wait: no wait brings the
                    // source back, and asking again would be a second call for one request.
                    if !decisions.is_allowed() && waits && decisions.rate_limited() {
                        policy.wait_for_tokens(identified, grpc).await
                    } else {
                        policy
                            .with_slots(decisions, &deadlines, &identified, grpc)
                            .await
                    }
                }
                Err(error) => policy.settle(Err(error), grpc),
            };
            refused_after_source(&verdict, foreign);
            verdict
        }))
    }

    /// The verdict of decided limits, once their in-flight slots are taken (asking the fleet's
    /// store, when a cap is shared).
    async fn with_slots(
        &self,
        decisions: Decisions,
        deadlines: &[u64],
        identified: &Identified<'_>,
        grpc: bool,
    ) -> Verdict {
        let Identified { owned, caps, terms } = identified;
        let taken = (&decisions, deadlines);
        if caps.is_empty() || !taken.0.is_allowed() {
            return self.verdict_all(taken, owned, Slots::Held(Vec::new()), terms, grpc);
        }
        match acquire_slots(caps).await {
            Ok(slots) => self.verdict_all(taken, owned, slots, terms, grpc),
            Err(error) => match self.limiter.on_unavailable() {
                // Through without the cap's slot.
                crate::OnUnavailable::Allow => {
                    self.verdict_all(taken, owned, Slots::Held(Vec::new()), terms, grpc)
                }
                _ => {
                    self.give_back_decisions(taken.0, taken.1, owned);
                    Verdict::Refused(self.respond(&Rejection::from_error(&error), grpc))
                }
            },
        }
    }

    /// Gives back what the allowed limits of a request took, when something after them
    /// refused it.
    fn give_back_decisions(&self, decisions: &Decisions, deadlines: &[u64], owned: &[Owned<'_>]) {
        for (index, (decision, (user, _, cost))) in decisions.iter().zip(owned).enumerate() {
            let Some(decision) = decision.filter(|d| d.is_allowed()) else {
                continue;
            };
            let deadline_ms = deadlines.get(index).copied().unwrap_or(0);
            if let (Some(rule), Some(taken)) = (decision.rule(), Taken::of(decision, deadline_ms)) {
                self.limiter.give_back(user, rule.slot, *cost, taken);
            }
        }
    }

    /// Every limit's identifier (validated), target and cost, and their terms; `Ok(None)`
    /// when the request is not limited; `Err` with the answer when an identifier is missing
    /// or unusable, or a cost unreadable.
    fn identify_limits<'r>(
        &'r self,
        req: &'r V::Request,
        limits: &'r [RouteLimit<V>],
        target: &'r Target<'_>,
        cost: u64,
        address: &'r OnceCell<IpText>,
    ) -> Result<Option<Identified<'r>>, Plan> {
        let mut owned = Vec::with_capacity(limits.len());
        let mut caps: Caps = Vec::new();
        let mut terms = Terms::default();
        // The middleware's own identifier, found once for every limit that uses it (a header's
        // value or the client's address, borrowed: sharing it copies nothing).
        let mut own_user: Option<Cow<'r, str>> = None;
        for limit in limits {
            let own = limit.identify.is_none();
            let user: Cow<'r, str> = match own_user.as_ref().filter(|_| own) {
                Some(user) => user.clone(),
                None => {
                    let identify = limit.identify.as_ref().unwrap_or(&self.options.identify);
                    let user = match self.identifier(req, address, identify, own) {
                        Ok(Some(found)) => found,
                        Ok(None) => return Ok(None),
                        Err(rejection) => {
                            return self.refuse_unidentified(rejection, req).map(|()| None)
                        }
                    };
                    if own && limits.len() > 1 {
                        own_user = Some(user.clone());
                    }
                    user
                }
            };
            let (limit_target, limit_cost) = match &limit.target {
                LimitTarget::InFlight(cap) => {
                    caps.push((cap.clone(), Box::from(&*user)));
                    continue;
                }
                LimitTarget::Request => (HeldTarget::Request(target.as_borrowed()), cost),
                LimitTarget::Operation(op) => (HeldTarget::Kept(op.static_target()), op.cost()),
                LimitTarget::Plan(choose) => match choose(req, &user) {
                    Some(op) => (HeldTarget::Kept(op.static_target()), op.cost()),
                    None => (HeldTarget::Request(target.as_borrowed()), cost),
                },
            };
            let limit_cost = match &limit.cost_from {
                None => limit.cost.unwrap_or(limit_cost),
                Some(read) => match read(req) {
                    Ok(read) => read.max(1),
                    Err(why) => {
                        let rejection = Rejection::InvalidCost(why);
                        return self.refuse_unidentified(rejection, req).map(|()| None);
                    }
                },
            };
            if limit.settled {
                terms.settle |= 1 << owned.len().min(63);
                terms.charge_server_errors |= limit.charge_server_errors;
                terms.release_dropped |= limit.release_dropped;
                if let Some(read) = &limit.settle_with {
                    terms.readers.push((owned.len(), Arc::clone(read)));
                }
            }
            terms.wait = terms.wait.max(limit.wait);
            owned.push((user, limit_target, limit_cost));
        }
        Ok(Some(Identified { owned, caps, terms }))
    }

    /// The identifier `identify` finds in `req`, validated: `Ok(None)` when the request is not
    /// limited (no address known); `Err` when it is missing (the middleware's own identifier
    /// follows its [`MissingIdentifier`] policy; a limit's own is required) or unusable.
    fn identifier<'r>(
        &self,
        req: &'r V::Request,
        address: &'r OnceCell<IpText>,
        identify: &Identify<V>,
        own: bool,
    ) -> Result<Option<Cow<'r, str>>, Rejection> {
        let raw: Option<Cow<'r, [u8]>> = match identify.kind() {
            Kind::Header(name) => V::header(req, name).map(Cow::Borrowed),
            Kind::With(f) => f(req).map(|found| match found {
                Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
                Cow::Owned(s) => Cow::Owned(s.into_bytes()),
            }),
            Kind::Extension(get) => {
                V::with_extensions(req, |e| get(e).map(|s| Cow::Owned(s.as_bytes().to_vec())))
            }
            Kind::PeerIp => None,
        };
        if let Some(raw) = raw {
            return match raw {
                // A header's bytes: borrowed as they are, validated.
                Cow::Borrowed(raw) => validate_identifier(raw)
                    .map(|user| Some(Cow::Borrowed(user)))
                    .map_err(Rejection::InvalidIdentifier),
                Cow::Owned(raw) => validate_identifier(&raw)
                    .map(|user| Some(Cow::Owned(user.to_owned())))
                    .map_err(Rejection::InvalidIdentifier),
            };
        }
        let by_ip = matches!(identify.kind(), Kind::PeerIp)
            || (own && self.options.missing == MissingIdentifier::PeerIp);
        if by_ip {
            let peer = V::peer_ip(req);
            let ip = if self.options.trusted_proxies == 0 {
                peer
            } else {
                client_ip(peer, V::forwarded_for(req), self.options.trusted_proxies)
            };
            // Written without the formatting machinery (a quarter of a two-limit request),
            // once, into the caller's `address`: every limit borrows it.
            return Ok(ip.map(|ip| Cow::Borrowed(address.get_or_init(|| IpText::new(ip)).as_str())));
        }
        if own && self.options.missing != MissingIdentifier::Reject {
            return Ok(None);
        }
        if own {
            return Err(Rejection::MissingIdentifier);
        }
        // A limit's own identifier: the answer names what is missing.
        Err(Rejection::MissingLimitIdentifier(match identify.kind() {
            Kind::Header(name) => format!("the {name} header"),
            _ => "an identifier for one of its limits".to_owned(),
        }))
    }

    /// What the decisions of a request's limits mean for it.
    fn verdict_all(
        &self,
        (decisions, deadlines): (&Decisions, &[u64]),
        owned: &[Owned<'_>],
        slots: Slots,
        terms: &Terms,
        grpc: bool,
    ) -> Verdict {
        let enforce = self.options.mode != Mode::Shadow;
        if !decisions.is_allowed() && enforce {
            return Verdict::Refused(self.refuse_all(decisions, grpc));
        }
        if !decisions.is_allowed() {
            self.let_through(&self.rejection_of(decisions));
        }
        let slots = match slots {
            Slots::Held(slots) => slots,
            Slots::Full(name) => {
                let rejection = self.rejection_in_flight(decisions, &name);
                if enforce {
                    self.give_back_decisions(decisions, deadlines, owned);
                    return Verdict::Refused(self.respond(&rejection, grpc));
                }
                self.let_through(&rejection);
                Vec::new()
            }
        };
        let charges = if self.family.records() && decisions.is_allowed() {
            self.charges(decisions, deadlines, owned)
        } else {
            Vec::new()
        };
        let deciding = decisions.deciding().copied();
        let settle = (terms.settle != 0 && decisions.is_allowed()).then(|| {
            Box::new(Settle {
                reservation: Reservation::new(
                    self.limiter.clone(),
                    owned_limits(owned),
                    decisions.clone(),
                    deadlines.to_vec(),
                )
                .on_drop(if terms.release_dropped {
                    OnDrop::Release
                } else {
                    OnDrop::Charge
                }),
                by_response: terms.settle,
                charge_server_errors: terms.charge_server_errors,
                readers: terms.readers.clone(),
            })
        });
        let headers = match self.options.headers {
            super::RateLimitHeaders::Always => Some(Box::new(self.fields_of(decisions))),
            _ => None,
        };
        Verdict::Allowed(Allowed {
            decision: deciding,
            keep: self.options.insert_decision,
            headers,
            family: self.family.clone(),
            decisions: self
                .options
                .insert_decision
                .then(|| Box::new(decisions.clone())),
            charges,
            slots,
            settle,
        })
    }

    /// What each allowed limit took, for a family stacked under this one to give back.
    fn charges(
        &self,
        decisions: &Decisions,
        deadlines: &[u64],
        owned: &[Owned<'_>],
    ) -> Vec<Charge> {
        decisions
            .iter()
            .zip(owned)
            .enumerate()
            .filter_map(|(index, (d, (user, _, cost)))| {
                self.charge(user, *cost, d?, deadlines.get(index).copied().unwrap_or(0))
            })
            .collect()
    }

    /// The rejection of a request its limits refused: the refusal with the longest wait, and
    /// every limit's decision with its rule's id.
    fn rejection_of(&self, decisions: &Decisions) -> Rejection {
        let Some(deciding) = decisions.deciding().copied() else {
            return Rejection::from_error(&Error::new(
                crate::ErrorKind::Unavailable,
                "no limit decided",
            ));
        };
        let limits = decisions
            .iter()
            .flatten()
            .map(|d| (*d, self.rule_id(d)))
            .collect();
        match Rejection::from_decision(deciding, self.rule_id(&deciding)) {
            Rejection::RateLimited {
                decision, policy, ..
            } => Rejection::RateLimited {
                decision,
                policy,
                limits,
            },
            other => other,
        }
    }

    /// The rejection of a request whose in-flight cap `name` was full (its other limits
    /// admitted it): 429, `Retry-After: 1`.
    fn rejection_in_flight(&self, decisions: &Decisions, name: &str) -> Rejection {
        let full = Decision {
            allowed: false,
            source: DecisionSource::LocalBucket,
            tokens_left: 0,
            remaining: 0,
            wait: crate::clock::duration_to_nanos(crate::IN_FLIGHT_RETRY_AFTER),
            rule: None,
            unavailable: None,
        };
        let rule: Option<Arc<str>> = Some(format!("in_flight_{name}").into());
        let limits = decisions
            .iter()
            .flatten()
            .map(|d| (*d, self.rule_id(d)))
            .chain([(full, rule.clone())])
            .collect();
        Rejection::RateLimited {
            decision: full,
            policy: rule,
            limits,
        }
    }

    /// The answer to a request its limits refused.
    #[cold]
    fn refuse_all(&self, decisions: &Decisions, grpc: bool) -> Box<http::Response<bytes::Bytes>> {
        let rejection = self.rejection_of(decisions);
        tracing::debug!(
            target: "lightrate::web",
            retry_after = decisions.deciding().map(|d| d.retry_after_secs()),
            refusing = decisions.refusing().count(),
            "request limited"
        );
        self.respond(&rejection, grpc)
    }

    /// The IETF fields of every limit of an allowed request.
    fn fields_of(&self, decisions: &Decisions) -> http::HeaderMap {
        let mut fields = http::HeaderMap::new();
        let limits: Vec<_> = decisions
            .iter()
            .flatten()
            .map(|d| (*d, self.rule_id(d)))
            .collect();
        super::rejection::write_all_rate_limit_headers(&mut fields, &limits);
        fields
    }
}

/// A request's owned limits, borrowed as the limiter takes them.
fn borrow<'o>(owned: &'o [Owned<'_>]) -> Vec<Limit<'o>> {
    owned.iter().map(borrowed).collect()
}

/// A request's limits as the engine owns them (to ask the source, to settle).
fn owned_limits(owned: &[Owned<'_>]) -> Vec<crate::limiter::OwnedLimit> {
    owned
        .iter()
        .map(|(user, target, cost)| (Box::from(&**user), target.to_static(), *cost))
        .collect()
}

/// A request's owned limit, borrowed (its target too: cloned, an owned one was copied).
fn borrowed<'o>((user, target, cost): &'o Owned<'_>) -> Limit<'o> {
    Limit::new(user, target.get().as_borrowed()).with_cost(*cost)
}

/// Calls `f` with a request's limits borrowed: on the stack for up to [`INLINE_LIMITS`],
/// so that a request decided locally allocates no list for them.
fn with_borrowed<R>(owned: &[Owned<'_>], f: impl FnOnce(&[Limit<'_>]) -> R) -> R {
    if owned.len() > INLINE_LIMITS {
        return f(&borrow(owned));
    }
    let limits: [Limit<'_>; INLINE_LIMITS] = std::array::from_fn(|index| {
        owned
            .get(index)
            .map_or_else(|| Limit::new("", Target::Default), borrowed)
    });
    f(&limits[..owned.len()])
}

/// A request's in-flight slots taken in this process: `None` when a cap is shared (its
/// store must be asked); the slots taken so far are released then, or when one is full.
fn try_slots(caps: &Caps) -> Option<Slots> {
    let mut slots = Vec::with_capacity(caps.len());
    for (cap, key) in caps {
        match cap.try_acquire_local(key)? {
            Acquired::Slot(slot) => slots.push(slot),
            Acquired::Full { .. } => return Some(Slots::Full(cap.name().to_owned())),
        }
    }
    Some(Slots::Held(slots))
}

/// A request's in-flight slots, asking the stores of shared caps.
async fn acquire_slots(caps: &Caps) -> Result<Slots, Error> {
    let mut slots = Vec::with_capacity(caps.len());
    for (cap, key) in caps {
        match cap.acquire(key).await? {
            Acquired::Slot(slot) => slots.push(slot),
            Acquired::Full { .. } => return Ok(Slots::Full(cap.name().to_owned())),
        }
    }
    Ok(Slots::Held(slots))
}

/// What the families before get when the source (or a fleet's store) made a request refused:
/// their charges back.
fn refused_after_source(verdict: &Verdict, foreign: Option<super::family::Charges>) {
    if let (Verdict::Refused(_), Some(foreign)) = (verdict, foreign) {
        foreign.give_back();
    }
}
