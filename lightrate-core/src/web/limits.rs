//! [`RouteLimit`]: several limits on a request, declared on a middleware or a route, and how a
//! request is decided against them (all or nothing, in one decision).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use super::family::Charge;
use super::identifier::{client_ip, validate_identifier};
use super::identify::{Identify, Kind, MissingIdentifier};
use super::operations::Operation;
use super::plan::{Allowed, Plan, Verdict};
use super::policy::RequestPolicy;
use super::rejection::Rejection;
use super::shadow::Mode;
use super::view::RequestView;
use crate::limiter::Local;
use crate::{Decisions, Error, Limit, Target};

type PlanFn<V> = dyn Fn(&<V as RequestView>::Request, &str) -> Option<Operation> + Send + Sync;

/// One limit of a request, as a middleware declares it: whose budget (an [`Identify`]; by
/// default the middleware's own identifier), which rule (the request's own target, a fixed
/// operation, or one chosen per request: a plan), and how many tokens.
///
/// A request is decided against all of its limits at once: admitted only if every one admits
/// it, and a request one limit refuses takes nothing from the others. Each adapter names it for
/// its framework's request (`lightrate::tower::RouteLimit`, `lightrate::actix::RouteLimit`).
///
/// ```
/// use http::HeaderName;
/// use lightrate::tower::{Identify, Operation, RouteLimit};
///
/// // 2 a second AND 12 a day, per user.
/// let search = [RouteLimit::operation("search_per_second"), RouteLimit::operation("search_per_day")];
/// // The route's own rule per user AND the organisation's.
/// let reports = [
///     RouteLimit::request(),
///     RouteLimit::operation("org_reports").identify(Identify::header(HeaderName::from_static("x-org-id"))),
/// ];
/// // A plan chosen per request: pro users are limited by another rule.
/// let hello = RouteLimit::request()
///     .plan(|_, user| user.starts_with("pro_").then(|| Operation::new("hello_pro")));
/// ```
pub struct RouteLimit<V: RequestView> {
    identify: Option<Identify<V>>,
    target: LimitTarget<V>,
    cost: Option<u64>,
}

enum LimitTarget<V: RequestView> {
    /// The request's own target: its route's operation, else its method and path.
    Request,
    /// A fixed operation.
    Operation(Operation),
    /// Chosen per request; `None`: the request's own target.
    Plan(Arc<PlanFn<V>>),
}

impl<V: RequestView> Clone for RouteLimit<V> {
    fn clone(&self) -> Self {
        RouteLimit {
            identify: self.identify.clone(),
            target: match &self.target {
                LimitTarget::Request => LimitTarget::Request,
                LimitTarget::Operation(op) => LimitTarget::Operation(op.clone()),
                LimitTarget::Plan(f) => LimitTarget::Plan(f.clone()),
            },
            cost: self.cost,
        }
    }
}

impl<V: RequestView> fmt::Debug for RouteLimit<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RouteLimit");
        match &self.target {
            LimitTarget::Request => d.field("target", &"request"),
            LimitTarget::Operation(op) => d.field("operation", &op.name()),
            LimitTarget::Plan(_) => d.field("target", &"plan(..)"),
        };
        d.field("identify", &self.identify)
            .field("cost", &self.cost)
            .finish()
    }
}

impl<V: RequestView> RouteLimit<V> {
    /// The request's own target (its route's operation, else its method and path), on the
    /// middleware's identifier.
    pub fn request() -> Self {
        RouteLimit {
            identify: None,
            target: LimitTarget::Request,
            cost: None,
        }
    }

    /// The operation `operation` (at its cost), on the middleware's identifier.
    pub fn operation(operation: impl Into<Operation>) -> Self {
        RouteLimit {
            identify: None,
            target: LimitTarget::Operation(operation.into()),
            cost: None,
        }
    }

    /// Charges this limit to another identifier: an organisation's header, an extension an
    /// authentication layer set, the client's IP address. A request without it gets 400, and
    /// no token is taken from any of its limits.
    pub fn identify(mut self, identify: Identify<V>) -> Self {
        self.identify = Some(identify);
        self
    }

    /// Tokens a request takes from this limit (at least 1; default: the operation's cost, or 1).
    pub fn with_cost(mut self, cost: u64) -> Self {
        self.cost = Some(cost.max(1));
        self
    }

    /// Chooses the operation per request (a plan): `choose` gets the request and this limit's
    /// identifier, and returns the operation to limit it by, or `None` for the limit's target
    /// as declared.
    pub fn plan(
        mut self,
        choose: impl Fn(&V::Request, &str) -> Option<Operation> + Send + Sync + 'static,
    ) -> Self {
        self.target = LimitTarget::Plan(Arc::new(choose));
        self
    }
}

/// A limit of one request, owned: its identifier, target and cost.
type Owned = (Box<str>, Target<'static>, u64);

impl<V: RequestView> RequestPolicy<V> {
    /// Decides `req` against `limits` (the request's own target being `target`, at `cost`):
    /// every identifier first (400 before any token is taken), then one decision for all.
    #[inline(never)]
    pub(super) fn plan_limits(
        self: &Arc<Self>,
        req: &mut V::Request,
        limits: &[RouteLimit<V>],
        target: &Target<'_>,
        cost: u64,
    ) -> Plan {
        let owned = match self.identify_limits(req, limits, target, cost) {
            Ok(Some(owned)) => owned,
            // Not limited: shadow mode let an unusable identifier through, or no address.
            Ok(None) => {
                self.family.claim::<V>(req);
                return Plan::Call(None);
            }
            Err(plan) => return plan,
        };
        let shadow = self.options.mode == Mode::Shadow;
        let local = {
            let borrowed: Vec<Limit<'_>> = owned
                .iter()
                .map(|(user, target, cost)| Limit::new(user, target.clone()).with_cost(*cost))
                .collect();
            self.limiter.check_all_locally(&borrowed, shadow)
        };
        let grpc = V::is_grpc(req);
        match local {
            Local::Decided(decisions) => match self.verdict_all(decisions, &owned, grpc) {
                Verdict::Allowed(allowed) => Plan::Call(allowed.mark_request::<V>(req)),
                Verdict::Refused(answer) => {
                    V::with_extensions(req, |e| self.family.refused::<V>(e));
                    Plan::Refused(answer)
                }
            },
            Local::Ask(decisions, ask) => {
                let foreign = V::with_extensions(req, |e| self.family.before_source::<V>(e));
                let check = self.limiter.check_all_with_source(
                    owned.clone(),
                    decisions,
                    ask,
                    shadow,
                );
                let policy = Arc::clone(self);
                Plan::Check(Box::pin(async move {
                    let verdict = match check.await {
                        Ok(decisions) => policy.verdict_all(decisions, &owned, grpc),
                        Err(error) => policy.settle(Err(error), grpc),
                    };
                    if let (Verdict::Refused(_), Some(foreign)) = (&verdict, foreign) {
                        foreign.give_back();
                    }
                    verdict
                }))
            }
        }
    }

    /// Every limit's identifier (validated), target and cost; `Ok(None)` when the request is
    /// not limited; `Err` with the answer when an identifier is missing or unusable.
    fn identify_limits(
        &self,
        req: &V::Request,
        limits: &[RouteLimit<V>],
        target: &Target<'_>,
        cost: u64,
    ) -> Result<Option<Vec<Owned>>, Plan> {
        let mut owned = Vec::with_capacity(limits.len());
        for limit in limits {
            let own = limit.identify.is_none();
            let identify = limit.identify.as_ref().unwrap_or(&self.options.identify);
            let found: Option<Cow<'_, str>> = match self.identifier(req, identify, own) {
                Ok(found) => found,
                Err(rejection) => {
                    return match self.refuse_unidentified(rejection, req) {
                        Ok(()) => Ok(None),
                        Err(plan) => Err(plan),
                    }
                }
            };
            let Some(user) = found else {
                return Ok(None);
            };
            let (limit_target, limit_cost) = match &limit.target {
                LimitTarget::Request => (target.clone().into_owned(), cost),
                LimitTarget::Operation(op) => (op.target().into_owned(), op.cost()),
                LimitTarget::Plan(choose) => match choose(req, &user) {
                    Some(op) => (op.target().into_owned(), op.cost()),
                    None => (target.clone().into_owned(), cost),
                },
            };
            owned.push((
                Box::from(&*user),
                limit_target,
                limit.cost.unwrap_or(limit_cost),
            ));
        }
        Ok(Some(owned))
    }

    /// The identifier `identify` finds in `req`, validated: `Ok(None)` when the request is not
    /// limited (no address known); `Err` when it is missing (the middleware's own identifier
    /// follows its [`MissingIdentifier`] policy; a limit's own is required) or unusable.
    fn identifier<'r>(
        &self,
        req: &'r V::Request,
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
            let user = validate_identifier(&raw).map_err(Rejection::InvalidIdentifier)?;
            return Ok(Some(Cow::Owned(user.to_owned())));
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
            return Ok(ip.map(|ip| Cow::Owned(ip.to_string())));
        }
        if own && self.options.missing != MissingIdentifier::Reject {
            return Ok(None);
        }
        Err(Rejection::MissingIdentifier)
    }

    /// What the decisions of a request's limits mean for it.
    pub(super) fn verdict_all(&self, decisions: Decisions, owned: &[Owned], grpc: bool) -> Verdict {
        let enforce = self.options.mode != Mode::Shadow;
        if !decisions.is_allowed() && enforce {
            return Verdict::Refused(self.refuse_all(&decisions, grpc));
        }
        if !decisions.is_allowed() {
            self.let_through(&self.rejection_of(&decisions));
        }
        let charges = if self.family.records() && decisions.is_allowed() {
            self.charges(&decisions, owned)
        } else {
            Vec::new()
        };
        let deciding = decisions.deciding().copied();
        let headers = match self.options.headers {
            super::RateLimitHeaders::Always => Some(Box::new(self.fields_of(&decisions))),
            _ => None,
        };
        Verdict::Allowed(Allowed {
            decision: deciding,
            keep: self.options.insert_decision,
            headers,
            family: self.family.clone(),
            decisions: self.options.insert_decision.then(|| Box::new(decisions)),
            charges,
        })
    }

    /// What each allowed limit took, for a family stacked under this one to give back.
    fn charges(&self, decisions: &Decisions, owned: &[Owned]) -> Vec<Charge> {
        decisions
            .iter()
            .zip(owned)
            .filter_map(|(d, (user, _, cost))| {
                let d = d?;
                let granted = match d.source() {
                    crate::DecisionSource::LocalBucket => false,
                    crate::DecisionSource::TokenSource => true,
                    _ => return None,
                };
                Some(Charge {
                    limiter: self.limiter.clone(),
                    user: user.clone(),
                    slot: d.rule()?.slot,
                    cost: *cost,
                    granted,
                })
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
            Rejection::RateLimited { decision, policy, .. } => Rejection::RateLimited {
                decision,
                policy,
                limits,
            },
            other => other,
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
