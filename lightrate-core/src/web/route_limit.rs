//! [`RouteLimit`]: one limit of a request as a middleware declares it (how a request is
//! decided against several is in `limits.rs`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::identify::Identify;
use super::operations::Operation;
use super::response::ResponseHead;
use super::view::RequestView;
use crate::InFlight;

pub(super) type PlanFn<V> =
    dyn Fn(&<V as RequestView>::Request, &str) -> Option<Operation> + Send + Sync;

pub(super) type SettleFn = dyn Fn(&ResponseHead<'_>) -> Option<u64> + Send + Sync;

pub(super) type CostFn<V> =
    dyn Fn(&<V as RequestView>::Request) -> Result<u64, String> + Send + Sync;

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
    /// The cost read from each request, when it is not fixed.
    pub(super) cost_from: Option<Arc<CostFn<V>>>,
    /// Whether the cost is an estimate, settled at what the response says was used.
    pub(super) settled: bool,
    /// Whether a 5xx answer is settled as any other (else at 0).
    pub(super) charge_server_errors: bool,
    /// Reads the use from the response's head, when the handler does not say it.
    pub(super) settle_with: Option<Arc<SettleFn>>,
    /// Whether a request dropped before its response gives back what it reserved.
    pub(super) release_dropped: bool,
    /// How long a request over this limit may wait for its tokens.
    pub(super) wait: Duration,
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

impl<V: RequestView> LimitTarget<V> {
    /// Whether the request's own target may be this limit's (a plan falls back to it).
    pub(super) fn may_be_the_request(&self) -> bool {
        matches!(self, LimitTarget::Request | LimitTarget::Plan(_))
    }
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
            cost_from: self.cost_from.clone(),
            settled: self.settled,
            charge_server_errors: self.charge_server_errors,
            settle_with: self.settle_with.clone(),
            release_dropped: self.release_dropped,
            wait: self.wait,
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
            .field("cost_from", &self.cost_from.as_ref().map(|_| ".."))
            .field("settled", &self.settled)
            .field("charge_server_errors", &self.charge_server_errors)
            .field("settle_with", &self.settle_with.as_ref().map(|_| ".."))
            .field("release_dropped", &self.release_dropped)
            .field("wait", &self.wait)
            .finish()
    }
}

impl<V: RequestView> RouteLimit<V> {
    /// The request's own target (its route's operation, else its method and path), on the
    /// middleware's identifier.
    pub fn request() -> Self {
        Self::of(LimitTarget::Request)
    }

    fn of(target: LimitTarget<V>) -> Self {
        RouteLimit {
            identify: None,
            target,
            cost: None,
            cost_from: None,
            settled: false,
            charge_server_errors: false,
            settle_with: None,
            release_dropped: false,
            wait: Duration::ZERO,
        }
    }

    /// The operation `operation` (at its cost), on the middleware's identifier.
    pub fn operation(operation: impl Into<Operation>) -> Self {
        Self::of(LimitTarget::Operation(operation.into()))
    }

    /// At most `cap.max()` requests of the identifier in flight (in this process, or across a
    /// fleet for a shared [`InFlight`]): a slot is taken once every other limit of the request
    /// admitted it, and held until the response is ready, or the request is dropped (the
    /// client went away, a timeout, a panic). A request that finds none free gets 429 with
    /// `Retry-After: 1`, and takes nothing from its other limits.
    pub fn in_flight(cap: InFlight) -> Self {
        Self::of(LimitTarget::InFlight(cap))
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

    /// Reads the tokens a request takes from this limit from the request itself (a header, the
    /// query): `cost` returns them, or why the request cannot say, which is answered 400 with
    /// that message (`{"error": "invalid_cost"}`) before any token is taken from any limit. A
    /// cost of 0 is taken as 1.
    ///
    /// ```
    /// use lightrate::tower::RouteLimit;
    ///
    /// let tokens = RouteLimit::operation("llm_tokens").cost_from(|req| {
    ///     let raw = req.headers.get("x-max-tokens").ok_or("x-max-tokens is missing")?;
    ///     let n: u64 = raw.to_str().ok().and_then(|v| v.parse().ok()).ok_or("x-max-tokens is not a number")?;
    ///     (1..=1000).contains(&n).then_some(n).ok_or_else(|| "x-max-tokens must be 1..=1000".into())
    /// });
    /// ```
    pub fn cost_from(
        mut self,
        cost: impl Fn(&V::Request) -> Result<u64, String> + Send + Sync + 'static,
    ) -> Self {
        self.cost_from = Some(Arc::new(cost));
        self
    }

    /// Takes this limit's cost as an estimate: reserved before the handler runs, then settled
    /// at what the response says was used, a [`Used`](super::Used) the handler puts in its
    /// response's extensions (without one, at the estimate). Tokens reserved and not used go
    /// back to the user's budget at once; tokens used beyond the estimate are charged after
    /// the fact (the finished request is never refused; the user's next requests wait it off).
    /// A 5xx answer settles at 0, unless [`charge_server_errors`](Self::charge_server_errors);
    /// a request dropped before its response (the client went away, a timeout, a panic) is
    /// charged its estimate.
    pub fn settled(mut self) -> Self {
        self.settled = true;
        self
    }

    /// [`settled`](Self::settled), with the use read from the response's head by `read` (a
    /// header an upstream proxy set, say): `None` falls back to the handler's
    /// [`Used`](super::Used), then to the estimate.
    ///
    /// ```
    /// use lightrate::tower::RouteLimit;
    ///
    /// let tokens = RouteLimit::operation("llm_tokens")
    ///     .with_cost(1_000)
    ///     .settle_with(|head| head.header("x-usage-tokens")?.parse().ok());
    /// ```
    pub fn settle_with(
        mut self,
        read: impl Fn(&ResponseHead<'_>) -> Option<u64> + Send + Sync + 'static,
    ) -> Self {
        self.settled = true;
        self.settle_with = Some(Arc::new(read));
        self
    }

    /// Settles a [`settled`](Self::settled) limit's 5xx answers as any other (by default they
    /// settle at 0: a request that failed costs nothing).
    pub fn charge_server_errors(mut self) -> Self {
        self.charge_server_errors = true;
        self
    }

    /// Gives back what a [`settled`](Self::settled) limit reserved when its request is dropped
    /// before its response (the client went away, a timeout, a panic). By default such a
    /// request is charged its estimate: the work it started may have cost it.
    pub fn release_when_dropped(mut self) -> Self {
        self.release_dropped = true;
        self
    }

    /// Lets a request over this limit wait up to `wait` for its tokens instead of being
    /// refused: one whose tokens can exist within it waits (first come, first served, without
    /// CPU or calls to the token source while it waits) and goes on when they come; one that
    /// would wait longer is refused at once, with the real `Retry-After`. A client that goes
    /// away stops waiting and takes nothing, where the framework drops the request (axum
    /// does; actix-web keeps running a request whose client went away, actix-web#3462). A
    /// request with several limits waits up to the longest wait among them.
    pub fn wait_up_to(mut self, wait: Duration) -> Self {
        self.wait = wait;
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
