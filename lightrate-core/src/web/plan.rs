//! What a request gets, written once for every framework: [`Plan`], decided before the inner
//! service is called (excluded, identified, its target chosen, asked of the limiter), and the
//! [`Check`] of the token source when the local bucket cannot decide.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Response};

use super::family::{Charge, Charges, Family};
use super::identifier::{client_ip, validate_identifier};
use super::identify::{ExtensionFn, Kind, MissingIdentifier};
use super::operations::{target_for, Declared, PathTarget};
use super::policy::RequestPolicy;
use super::rejection::Rejection;
use super::response::{ResponseHead, Used};
use super::route_limit::RouteLimit;
use super::shadow::Mode;
use super::view::RequestView;
use crate::ip::IpText;
use crate::limiter::{IpProbe, PathProbe, Probe, Taken};
use crate::INLINE_LIMITS;
use crate::{Decision, Decisions, Target};

/// What an allowed request's response gets once the inner service has answered: the IETF
/// fields to add, the in-flight slots its limits hold until then, and the reservation of its
/// [`settled`](super::RouteLimit::settled) limits (released, or settled, when the response is
/// ready; dropped with the request, when the client went away, a timeout, a panic: the slots
/// are released and the reservation charged in full).
#[derive(Debug, Default)]
pub struct After {
    headers: Option<Box<HeaderMap>>,
    slots: Vec<crate::InFlightSlot>,
    settle: Option<Box<Settle>>,
}

/// The reservation of a request's settled limits.
pub(super) struct Settle {
    pub(super) reservation: crate::Reservation,
    /// The limits settled at the response's [`Used`] (a bit each); the others at their cost.
    pub(super) by_response: u64,
    /// Whether a 5xx answer is settled as any other (else at 0).
    pub(super) charge_server_errors: bool,
    /// The closures that read a limit's use from the response's head, with its place.
    pub(super) readers: Vec<(usize, Arc<super::route_limit::SettleFn>)>,
}

impl After {
    /// `Some` when there is something to do after the inner service.
    pub(super) fn of(
        headers: Option<Box<HeaderMap>>,
        slots: Vec<crate::InFlightSlot>,
        settle: Option<Box<Settle>>,
    ) -> Option<Box<After>> {
        (headers.is_some() || !slots.is_empty() || settle.is_some()).then(|| {
            Box::new(After {
                headers,
                slots,
                settle,
            })
        })
    }

    /// Whether [`finish`](Self::finish) reads the response's headers (a
    /// [`settle_with`](super::RouteLimit::settle_with) closure does): an adapter whose
    /// responses do not keep an `http::HeaderMap` makes one only then.
    pub fn reads_headers(&self) -> bool {
        self.settle
            .as_ref()
            .is_some_and(|settle| !settle.readers.is_empty())
    }

    /// The inner service answered, with this response head (`None`: it failed without a
    /// response, settled as a 5xx): the slots are released, the reservation settled, and the
    /// fields to add returned.
    pub fn finish(self, response: Option<&ResponseHead<'_>>) -> Option<Box<HeaderMap>> {
        let After {
            headers,
            slots,
            settle,
        } = self;
        drop(slots);
        if let Some(settle) = settle {
            settle.at(response);
        }
        headers
    }
}

impl fmt::Debug for Settle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settle")
            .field("reservation", &self.reservation)
            .field("by_response", &self.by_response)
            .field("charge_server_errors", &self.charge_server_errors)
            .field("readers", &self.readers.len())
            .finish()
    }
}

impl Settle {
    /// Settles the reservation at what the response says.
    fn at(self: Box<Self>, response: Option<&ResponseHead<'_>>) {
        let Settle {
            reservation,
            by_response,
            charge_server_errors,
            readers,
        } = *self;
        let failed = response.is_none_or(|head| head.status() >= 500) && !charge_server_errors;
        let used = |index: usize| {
            let reserved = reservation.reserved(index);
            if by_response & (1 << index.min(63)) == 0 {
                return reserved;
            }
            let Some(head) = response.filter(|_| !failed) else {
                return 0;
            };
            let read = readers
                .iter()
                .find(|(at, _)| *at == index)
                .and_then(|(_, read)| read(head));
            read.or(head.used().map(|Used(used)| used))
                .unwrap_or(reserved)
        };
        // What each limit used: on the stack for a short list (a vector was an allocation a
        // settled request).
        let len = reservation.decisions().len();
        if len <= INLINE_LIMITS {
            let mut settled = [0; INLINE_LIMITS];
            for (index, at) in settled.iter_mut().enumerate().take(len) {
                *at = used(index);
            }
            let _ = reservation.settle(&settled[..len]);
        } else {
            let settled: Vec<u64> = (0..len).map(used).collect();
            let _ = reservation.settle(&settled);
        }
    }
}

/// What to do with a request, decided before the inner service is called.
#[must_use]
pub enum Plan {
    /// Call the inner service, then do what [`After`] says (add IETF fields to its response,
    /// release in-flight slots), if anything. The
    /// request is not limited (excluded, already decided by another LightRate middleware, or
    /// no identifier and the policy lets it through), or a local bucket allowed it and
    /// [`plan`](RequestPolicy::plan) has marked it.
    Call(Option<Box<After>>),
    /// Refused (429, 503, 400): answer this, without calling the inner service. Boxed, so
    /// that the common plans stay small.
    Refused(Box<Response<Bytes>>),
    /// The token source must be asked: await this, then do what it says. The only case
    /// that allocates (besides the `Decision` a request keeps).
    Check(Check),
}

/// The verdict of a [`Check`].
#[must_use]
pub enum Verdict {
    /// Mark the request, call the inner service.
    Allowed(Allowed),
    /// Answer this, without calling the inner service.
    Refused(Box<Response<Bytes>>),
}

impl fmt::Debug for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Plan::Call(headers) => f.debug_tuple("Call").field(headers).finish(),
            Plan::Refused(answer) => f.debug_tuple("Refused").field(answer).finish(),
            Plan::Check(_) => f.write_str("Check(..)"),
        }
    }
}

impl fmt::Debug for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Allowed(allowed) => f.debug_tuple("Allowed").field(allowed).finish(),
            Verdict::Refused(answer) => f.debug_tuple("Refused").field(answer).finish(),
        }
    }
}

/// The token source being asked about a request.
pub type Check = Pin<Box<dyn Future<Output = Verdict> + Send>>;

/// A request the limiter allowed: what its request and response get.
#[must_use]
#[derive(Debug)]
pub struct Allowed {
    /// `None` for a request shadow mode let through without a decision (no usable
    /// identifier).
    pub(super) decision: Option<Decision>,
    pub(super) keep: bool,
    pub(super) headers: Option<Box<HeaderMap>>,
    /// The middleware that decided.
    pub(super) family: Arc<Family>,
    /// Every limit's decision, when the request had several (kept for the handler).
    pub(super) decisions: Option<Box<Decisions>>,
    /// What its limits took, when a middleware stacked under this one may refuse the request
    /// and give it back.
    pub(super) charges: Vec<Charge>,
    /// In-flight slots it holds until its response is ready.
    pub(super) slots: Vec<crate::InFlightSlot>,
    /// The reservation of its settled limits, settled when its response is ready.
    pub(super) settle: Option<Box<Settle>>,
}

impl Allowed {
    /// Records the decision in the request's extensions (for the handler, if it is kept: the
    /// `Decision`, and the `Decisions` of a request with several limits; and the mark of the
    /// middleware that decided, so that it does not decide the request again, while another
    /// LightRate middleware does, joining the decision), and returns the IETF fields to add to
    /// the response, if any.
    #[inline]
    pub fn mark<V: RequestView>(self, extensions: &mut V::Extensions) -> Option<Box<After>> {
        self.family.claim_in::<V>(extensions);
        if !self.charges.is_empty() {
            Charges::record::<V>(extensions, self.charges);
        }
        if self.keep {
            if let Some(decision) = self.decision {
                V::insert(extensions, decision);
            }
            if let Some(decisions) = self.decisions {
                V::insert(extensions, *decisions);
            }
        }
        After::of(self.headers, self.slots, self.settle)
    }

    /// [`mark`](Self::mark), on the request.
    pub(super) fn mark_request<V: RequestView>(self, req: &mut V::Request) -> Option<Box<After>> {
        self.family.claim::<V>(req);
        if !self.charges.is_empty() {
            let mut all = V::with_extensions(req, |e| V::extension::<Charges>(e).cloned())
                .unwrap_or_default();
            all.extend(self.charges);
            V::insert_into(req, all);
        }
        if self.keep {
            if let Some(decision) = self.decision {
                V::insert_into(req, decision);
            }
            if let Some(decisions) = self.decisions {
                V::insert_into(req, *decisions);
            }
        }
        After::of(self.headers, self.slots, self.settle)
    }
}

impl<V: RequestView> RequestPolicy<V> {
    /// What `req` gets: everything up to asking the limiter for a local decision. An allowed
    /// request is marked here ([`Decided`], and its `Decision`, put in its extensions), so that
    /// no later LightRate middleware decides it again. Allocates only when the source must be
    /// asked, for the `Decision` the request keeps (unless `insert_decision(false)`), when
    /// the IETF fields are sent on allowed responses, or where the adapter's
    /// [`route_template`](RequestView::route_template) does (only asked when a declared
    /// operation or [`PathTarget::Template`] needs it).
    pub fn plan(self: &Arc<Self>, req: &mut V::Request) -> Plan {
        if self.is_simple() {
            self.plan_simple::<V>(req)
        } else {
            self.plan_with_options(req)
        }
    }

    /// [`plan`](Self::plan) in the default configuration ([`is_simple`](Self::is_simple)):
    /// what `plan_with_options` does there, without the branches
    /// of the options that are off. It reads no more than any view of a request shows, so
    /// an adapter may call it on a view `W` of the whole request where [`plan`](Self::plan)
    /// takes the part of it that [`Identify::with`] and `exclude` closures see.
    #[inline(never)]
    pub fn plan_simple<W: RequestView>(self: &Arc<Self>, req: &mut W::Request) -> Plan {
        // The request is marked first: one look-up asks whether another LightRate middleware
        // decided it and marks it. Unmarked where it turns out not to be limited; a refused one
        // is never served, and one the source must decide is marked again by its verdict.
        if !self.family.claim::<W>(req) {
            return Plan::Call(None);
        }
        let Some(ip) = W::peer_ip(req) else {
            // No address known (not served over a socket): nothing to limit by.
            self.family.unclaim::<W>(req);
            return Plan::Call(None);
        };
        // Written by the limiter, read here: a local hit moves the decision once (into the
        // extensions), or never.
        let mut decision = None;
        {
            let req = &*req;
            let path = W::path(req);
            let shown = W::method(req);
            // Compared with the memos as they are: a `Target` is built only off their path.
            let asked = match shown.as_deref() {
                Some(method) => {
                    let method = charged(method);
                    self.ask_simple::<W>(req, ip, &PathProbe { method, path }, &mut decision)
                }
                // A method `http` refuses: still limited.
                None => self.ask_simple::<W>(req, ip, &Target::Default, &mut decision),
            };
            if let Err(plan) = asked {
                return plan;
            }
        }
        let Some(decision) = &decision else {
            unreachable!("asked the source when there was no local decision")
        };
        if !decision.is_allowed() {
            W::with_extensions(req, |e| self.family.refused::<W>(e));
            return Plan::Refused(self.refuse(decision, W::is_grpc(req)));
        }
        if self.options.insert_decision {
            W::insert_into(req, *decision);
        }
        if self.family.records() {
            self.record_simple::<W>(req, ip, decision);
        }
        Plan::Call(None)
    }

    /// Records what a request the default configuration admitted took, for a middleware
    /// stacked under this one to give back.
    #[cold]
    fn record_simple<W: RequestView>(&self, req: &mut W::Request, ip: IpAddr, decision: &Decision) {
        if let Some(charge) = self.charge(IpText::new(ip).as_str(), 1, decision, 0) {
            record::<W>(req, charge);
        }
    }

    /// What an allowed decision of `user` took (`deadline_ms`: of the lease that granted it,
    /// when the source did), as a middleware stacked under this one gives it back.
    pub(super) fn charge(
        &self,
        user: &str,
        cost: u64,
        decision: &Decision,
        deadline_ms: u64,
    ) -> Option<Charge> {
        Some(Charge {
            limiter: self.limiter.clone(),
            user: user.into(),
            slot: decision.rule()?.slot,
            cost,
            taken: Taken::of(decision, deadline_ms)?,
        })
    }

    /// [`plan_simple`](Self::plan_simple)'s question to the limiter, for the client at `ip`:
    /// a local decision into `decision`, or the plan to ask the source. The address is compared
    /// with the memos as it is; its text is written only off their path.
    #[inline(always)]
    fn ask_simple<W: RequestView>(
        self: &Arc<Self>,
        req: &W::Request,
        ip: IpAddr,
        target: &impl Probe,
        decision: &mut Option<Decision>,
    ) -> Result<(), Plan> {
        self.limiter
            .decide_locally(&IpProbe(ip), target, 1, false, decision);
        if decision.is_some() {
            return Ok(());
        }
        let text = IpText::new(ip);
        let foreign = W::with_extensions(req, |e| self.family.before_source::<W>(e));
        Err(target.with_target(|target| {
            self.check_with_source(text.as_str(), target, 1, false, W::is_grpc(req), foreign)
        }))
    }

    /// [`plan`](Self::plan) with any options.
    #[inline(never)]
    fn plan_with_options(self: &Arc<Self>, req: &mut V::Request) -> Plan {
        // The limiter's answer is written here and read here: a local hit moves the decision
        // once (into the extensions), or never.
        let mut decision = None;
        // A request with several limits: the limits, its own target and cost.
        let mut several = None;
        // What it takes, when a middleware stacked under this one may give it back.
        let mut charge = None;
        let asked = match self.options.identify.kind() {
            Kind::Extension(get) => {
                self.decide_by_extension(req, &**get, (&mut decision, &mut charge), &mut several)
            }
            kind => self.with_target(req, |target, cost, limits| {
                if let Some(limits) = limits {
                    several = Some((limits, kept_target(limits, target), cost));
                    return Ok(());
                }
                let with;
                let found = match kind {
                    Kind::Header(name) => V::header(req, name),
                    Kind::With(f) => {
                        with = f(req);
                        with.as_deref().map(str::as_bytes)
                    }
                    Kind::PeerIp | Kind::Extension(_) => None,
                };
                self.ask(req, found, target, cost, (&mut decision, &mut charge))
            }),
        };
        if let Err(plan) = asked {
            return plan;
        }
        if let Some((limits, target, cost)) = several {
            return self.plan_limits(req, limits, &target, cost);
        }
        let Some(decision) = &decision else {
            // Shadow mode lets a request without a usable identifier through, undecided.
            self.family.claim::<V>(req);
            return Plan::Call(None);
        };
        match self.admit(decision) {
            Some(headers) => {
                self.mark::<V>(req, decision, charge);
                Plan::Call(After::of(headers, Vec::new(), None))
            }
            None => {
                V::with_extensions(req, |e| self.family.refused::<V>(e));
                Plan::Refused(self.refuse(decision, V::is_grpc(req)))
            }
        }
    }

    /// Marks an allowed request decided by this middleware, and puts its `Decision` in its
    /// extensions for the handler, if it is kept.
    #[inline(always)]
    fn mark<W: RequestView>(
        &self,
        req: &mut W::Request,
        decision: &Decision,
        charge: Option<Charge>,
    ) {
        self.family.claim::<W>(req);
        if self.options.insert_decision {
            W::insert_into(req, *decision);
        }
        if let Some(charge) = charge {
            record::<W>(req, charge);
        }
    }

    /// [`plan`](Self::plan)'s question to the limiter when the identifier is an extension
    /// (read where the adapter lends its extensions).
    #[inline(never)]
    fn decide_by_extension<'s>(
        self: &'s Arc<Self>,
        req: &V::Request,
        get: &ExtensionFn<V>,
        decided: Decided<'_>,
        several: &mut Option<Several<'s, V>>,
    ) -> Result<(), Plan> {
        self.with_target(req, |target, cost, limits| {
            if let Some(limits) = limits {
                *several = Some((limits, target.clone().into_owned(), cost));
                return Ok(());
            }
            V::with_extensions(req, |extensions| {
                self.ask(
                    req,
                    get(extensions).map(str::as_bytes),
                    target,
                    cost,
                    decided,
                )
            })
        })
    }

    /// Calls `then` with the target and cost of `req`, and its limits when it has several
    /// (declared on its route or this middleware), unless it is not limited (excluded, or
    /// decided already by this middleware).
    #[inline(always)]
    fn with_target<'s, O>(
        &'s self,
        req: &V::Request,
        then: impl FnOnce(&Target<'_>, u64, Option<&'s [RouteLimit<V>]>) -> Result<O, Plan>,
    ) -> Result<O, Plan> {
        let path = V::path(req);
        if V::with_extensions(req, |e| self.family.decided::<V>(e)) || self.is_excluded(req, path) {
            return Err(Plan::Call(None));
        }
        let shown = V::method(req);
        let method = shown.as_deref().map(charged);
        let routes = self.routes.served();
        // The route's template, only when it is used.
        let look_up = self.operation.is_none()
            && (self.options.path_target == PathTarget::Template
                || if V::PREFILTER_TEMPLATES {
                    routes.may_match(path)
                } else {
                    !routes.is_empty()
                });
        let template = if look_up {
            V::route_template(req, path)
        } else {
            None
        };
        let declared = (self.operation.is_none() && self.route_limits.is_none())
            .then(|| {
                let method = method?;
                match &template {
                    Some(template) => routes.get(method, template),
                    // No route template where one was looked for (a layer outside the router:
                    // tonic's): a path is the template of its own literal route (a gRPC method,
                    // `/package.Service/Method`).
                    None if look_up => routes.get(method, path),
                    None => None,
                }
            })
            .flatten();
        let operation = self
            .operation
            .as_ref()
            .or_else(|| declared.and_then(Declared::operation));
        let limits = self
            .route_limits
            .as_deref()
            .or_else(|| {
                declared
                    .and_then(Declared::limits)
                    .and_then(|any| any.downcast_ref::<Vec<RouteLimit<V>>>())
                    .map(Vec::as_slice)
            })
            .or(self.also_limits.as_deref());
        let name = match operation {
            None if self.options.names_as_operations => V::route_name(req, path),
            _ => None,
        };
        let (target, cost) = match (name, method) {
            (Some(name), _) => (Target::operation(name), 1),
            (None, Some(method)) => target_for(
                method.clone(),
                path,
                template.as_deref(),
                operation,
                self.options.path_target,
            ),
            // A method `http` refuses: still limited.
            (None, None) => match operation {
                Some(op) => (op.target(), op.cost()),
                None => (Target::Default, 1),
            },
        };
        then(&target, cost, limits)
    }

    /// `path` is the request's path, as its framework routes it.
    #[inline]
    fn is_excluded(&self, req: &V::Request, path: &str) -> bool {
        (!self.options.exclude_paths.is_empty()
            && self.options.exclude_paths.iter().any(|p| p == path))
            || self.options.exclude.as_ref().is_some_and(|f| f(req))
    }

    /// Asks the limiter for a local decision on a request whose identifier is `found` (raw,
    /// not yet validated), into `decision` (left `None` when shadow mode lets the request
    /// through without one), or returns the plan when there is none: not limited, refused
    /// before the limiter, or the token source to ask.
    #[inline(always)]
    fn ask(
        self: &Arc<Self>,
        req: &V::Request,
        found: Option<&[u8]>,
        target: &Target<'_>,
        cost: u64,
        (decision, charge): Decided<'_>,
    ) -> Result<(), Plan> {
        let mut ip_text = IpText::EMPTY;
        let user: &str = match found {
            Some(raw) => match validate_identifier(raw) {
                Ok(user) => user,
                Err(why) => {
                    return self.refuse_unidentified(Rejection::InvalidIdentifier(why), req)
                }
            },
            None => {
                let by_ip = matches!(self.options.identify.kind(), Kind::PeerIp)
                    || self.options.missing == MissingIdentifier::PeerIp;
                match self.options.missing {
                    _ if by_ip => {
                        let peer = V::peer_ip(req);
                        let ip = if self.options.trusted_proxies == 0 {
                            peer
                        } else {
                            client_ip(peer, V::forwarded_for(req), self.options.trusted_proxies)
                        };
                        let Some(ip) = ip else {
                            // No address known (not served over a socket): nothing to limit by.
                            return Err(Plan::Call(None));
                        };
                        ip_text.write(ip);
                        ip_text.as_str()
                    }
                    MissingIdentifier::Reject => {
                        return self.refuse_unidentified(Rejection::MissingIdentifier, req)
                    }
                    _ => return Err(Plan::Call(None)),
                }
            }
        };
        let shadow = self.options.mode == Mode::Shadow;
        self.limiter
            .decide_locally(user.as_bytes(), target, cost, shadow, decision);
        if decision.is_none() {
            let foreign = V::with_extensions(req, |e| self.family.before_source::<V>(e));
            return Err(self.check_with_source(
                user,
                target,
                cost,
                shadow,
                V::is_grpc(req),
                foreign,
            ));
        }
        if self.family.records() {
            *charge = decision
                .as_ref()
                .filter(|d| d.is_allowed())
                .and_then(|d| self.charge(user, cost, d, 0));
        }
        Ok(())
    }

    /// The plan of a request the limiter cannot decide locally: ask the token source.
    #[cold]
    #[inline(never)]
    fn check_with_source(
        self: &Arc<Self>,
        user: &str,
        target: &Target<'_>,
        cost: u64,
        shadow: bool,
        grpc: bool,
        foreign: Option<Charges>,
    ) -> Plan {
        let check = self.limiter.decide_with_source_granting(
            user,
            target.clone().into_owned(),
            cost,
            shadow,
        );
        let policy = Arc::clone(self);
        // Kept only when a middleware stacked under this one may give back what it takes.
        let charged: Option<Box<str>> = self.family.records().then(|| user.into());
        Plan::Check(Box::pin(async move {
            let checked = check.await;
            let granted = checked.as_ref().ok().copied();
            let mut verdict = policy.settle(checked.map(|(d, _)| d), grpc);
            match &mut verdict {
                Verdict::Refused(_) => {
                    if let Some(foreign) = foreign {
                        foreign.give_back();
                    }
                }
                Verdict::Allowed(allowed) => {
                    if let (Some(user), Some((decision, deadline_ms))) = (charged, granted) {
                        let charge = policy.charge(&user, cost, &decision, deadline_ms);
                        allowed.charges.extend(charge);
                    }
                }
            }
            verdict
        }))
    }
}

/// Where a local decision and what it took (for a middleware stacked under this one to give
/// back) are written.
type Decided<'d> = (&'d mut Option<Decision>, &'d mut Option<Charge>);

/// Adds what a request took to the charges in its extensions.
#[cold]
fn record<W: RequestView>(req: &mut W::Request, charge: Charge) {
    let mut all =
        W::with_extensions(req, |e| W::extension::<Charges>(e).cloned()).unwrap_or_default();
    all.extend([charge]);
    W::insert_into(req, all);
}

/// A request's several limits, its own target and its cost.
type Several<'s, V> = (&'s [RouteLimit<V>], Target<'static>, u64);

/// The method a request is charged as: HEAD as GET, since a route answers it with its GET
/// handler, so a GET rule (or a GET route's operation) must cover it.
#[inline]
fn charged(method: &Method) -> &Method {
    if *method == Method::HEAD {
        &Method::GET
    } else {
        method
    }
}

/// The request's own target, kept past the borrow of the request for its declared `limits`
/// only when one may be charged to it (made owned, it is an allocation a request); else the
/// default target, which none of them reads.
fn kept_target<V: RequestView>(limits: &[RouteLimit<V>], target: &Target<'_>) -> Target<'static> {
    if limits.iter().any(|l| l.target.may_be_the_request()) {
        target.clone().into_owned()
    } else {
        Target::Default
    }
}
