//! [`RouteLimit`]: one limit of a request as a middleware declares it (how a request is
//! decided against several is in `limits.rs`).

use std::fmt;
use std::sync::Arc;

use super::identify::Identify;
use super::operations::Operation;
use super::view::RequestView;
use crate::InFlight;

pub(super) type PlanFn<V> =
    dyn Fn(&<V as RequestView>::Request, &str) -> Option<Operation> + Send + Sync;

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
    pub(super) identify: Option<Identify<V>>,
    pub(super) target: LimitTarget<V>,
    pub(super) cost: Option<u64>,
}

pub(super) enum LimitTarget<V: RequestView> {
    /// The request's own target: its route's operation, else its method and path.
    Request,
    /// A fixed operation.
    Operation(Operation),
    /// Chosen per request; `None`: the request's own target.
    Plan(Arc<PlanFn<V>>),
    /// At most so many requests of the identifier in flight.
    InFlight(InFlight),
}

impl<V: RequestView> Clone for RouteLimit<V> {
    fn clone(&self) -> Self {
        RouteLimit {
            identify: self.identify.clone(),
            target: match &self.target {
                LimitTarget::Request => LimitTarget::Request,
                LimitTarget::Operation(op) => LimitTarget::Operation(op.clone()),
                LimitTarget::Plan(f) => LimitTarget::Plan(f.clone()),
                LimitTarget::InFlight(cap) => LimitTarget::InFlight(cap.clone()),
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
            LimitTarget::InFlight(cap) => d.field("in_flight", cap),
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

    /// At most `cap.max()` requests of the identifier in flight (in this process, or across a
    /// fleet for a shared [`InFlight`]): a slot is taken once every other limit of the request
    /// admitted it, and held until the response is ready, or the request is dropped (the
    /// client went away, a timeout, a panic). A request that finds none free gets 429 with
    /// `Retry-After: 1`, and takes nothing from its other limits.
    pub fn in_flight(cap: InFlight) -> Self {
        RouteLimit {
            identify: None,
            target: LimitTarget::InFlight(cap),
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
