//! Per-route operations, and the target a request is charged to.

use std::any::Any;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use http::Method;

use crate::Target;

/// A per-route operation: the route is limited as this LightRate operation, at this cost,
/// instead of by its method and path.
///
/// ```
/// use lightrate::tower::Operation;
///
/// let op = Operation::new("send_email").with_cost(2);
/// assert_eq!((op.name(), op.cost()), ("send_email", 2));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Operation {
    name: Cow<'static, str>,
    cost: u64,
}

impl Operation {
    /// The operation `name`, costing one token per request.
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        Operation {
            name: name.into(),
            cost: 1,
        }
    }

    /// Sets how many tokens a request costs (at least 1).
    pub fn with_cost(mut self, cost: u64) -> Self {
        self.cost = cost.max(1);
        self
    }

    /// The operation's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tokens per request.
    pub fn cost(&self) -> u64 {
        self.cost
    }

    /// The target it sends.
    pub fn target(&self) -> Target<'_> {
        Target::operation(&*self.name)
    }

    /// The target it sends, for as long as needed: a name given as a `&'static str` is
    /// borrowed, not copied (a request's limits hold theirs).
    pub(crate) fn static_target(&self) -> Target<'static> {
        Target::Operation(self.name.clone())
    }
}

impl From<Operation> for Declared {
    fn from(op: Operation) -> Self {
        Declared::Operation(op)
    }
}

impl From<&'static str> for Operation {
    fn from(name: &'static str) -> Self {
        Operation::new(name)
    }
}

impl From<String> for Operation {
    fn from(name: String) -> Self {
        Operation::new(name)
    }
}

/// Which path a request is limited by when it has no operation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PathTarget {
    /// The concrete request path (`/items/42`): what LightRate path rules match. The default.
    #[default]
    Concrete,
    /// The route's template (`/items/{id}`), so that every item shares one target.
    Template,
}

/// The target and cost of a request: its operation if it has one, else method + path (the
/// route's template with [`PathTarget::Template`], when the route is known).
#[inline]
pub(crate) fn target_for<'a>(
    method: Method,
    path: &'a str,
    template: Option<&'a str>,
    operation: Option<&'a Operation>,
    mode: PathTarget,
) -> (Target<'a>, u64) {
    match operation {
        Some(op) => (op.target(), op.cost()),
        None => {
            let path = match (mode, template) {
                (PathTarget::Template, Some(template)) => template,
                _ => path,
            };
            (Target::path(method, path), 1)
        }
    }
}

/// The operations of routes, by route template (`/items/{id}` as the route was declared) and
/// optionally method. Declared while the app is built, [served](Self::served) to every
/// request: frozen at the first one, and lock-free from then on.
///
/// Shared by every clone of a policy, so that a per-route annotation and a router-wide
/// layer agree on the route's operation.
#[derive(Clone, Debug, Default)]
pub(crate) struct RouteOperations {
    inner: Arc<Declarations>,
}

#[derive(Debug, Default)]
struct Declarations {
    building: Mutex<Table>,
    served: OnceLock<Served>,
}

/// Template → (method, declaration): looked up by `&str`, without allocating.
type Table = HashMap<String, Vec<(Option<Method>, Declared)>>;

/// What a route is declared to be: an operation, or a list of limits (the
/// `RouteLimit`s of the policy's request view, type-erased so that the
/// table does not depend on it).
#[derive(Clone, Debug)]
pub(crate) enum Declared {
    Operation(Operation),
    Limits(Arc<dyn Any + Send + Sync>),
}

impl Declared {
    /// The operation, if that is what was declared.
    pub(crate) fn operation(&self) -> Option<&Operation> {
        match self {
            Declared::Operation(op) => Some(op),
            Declared::Limits(_) => None,
        }
    }

    /// The limits, if that is what was declared (a `Vec<RouteLimit<V>>` of the policy's
    /// request view `V`, for it to downcast).
    pub(crate) fn limits(&self) -> Option<&(dyn Any + Send + Sync)> {
        match self {
            Declared::Operation(_) => None,
            Declared::Limits(any) => Some(&**any),
        }
    }

    fn name(&self) -> &str {
        match self {
            Declared::Operation(op) => op.name(),
            Declared::Limits(_) => "(several limits)",
        }
    }
}

/// The declarations as requests see them.
#[derive(Debug, Default)]
pub(crate) struct Served {
    table: Table,
    /// What the path of a request at each template must be: a cheap test that spares most
    /// requests the lookup of their route's template.
    literals: Box<[Literal]>,
}

/// What the path of a request at a template must be.
#[derive(Debug)]
enum Literal {
    /// Equal to a template without parameters.
    Exact(Box<str>),
    /// Starting with the literal part of a template, before its first `{`.
    Prefix(Box<str>),
}

impl RouteOperations {
    /// Declares that requests to `template` (with `method`, or any method for `None`) are the
    /// operation `op`. Declarations made after the first request are ignored, with a warning.
    pub(crate) fn insert(&self, method: Option<Method>, template: &str, op: impl Into<Declared>) {
        let op = op.into();
        if self.inner.served.get().is_some() {
            tracing::warn!(
                target: "lightrate::web",
                template,
                operation = op.name(),
                "operation declared after the first request; ignored"
            );
            return;
        }
        let mut table = crate::sync::lock(&self.inner.building);
        let declared = table.entry(template.to_owned()).or_default();
        declared.retain(|(m, _)| *m != method);
        declared.push((method, op));
    }

    /// The declarations as served to requests, once frozen (by [`served`](Self::served)).
    #[inline]
    pub(crate) fn frozen(&self) -> Option<&Served> {
        self.inner.served.get()
    }

    /// The declarations as served to requests. The first call (the first request's) freezes
    /// them: later declarations are ignored.
    #[inline]
    pub(crate) fn served(&self) -> &Served {
        self.inner.served.get_or_init(|| {
            let table = crate::sync::lock(&self.inner.building).clone();
            let literals = table
                .keys()
                .map(|t| match t.find('{') {
                    None => Literal::Exact(t.as_str().into()),
                    Some(at) => Literal::Prefix(t.get(..at).unwrap_or_default().into()),
                })
                .collect();
            Served { table, literals }
        })
    }
}

impl Served {
    /// Whether no operation is declared.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Whether a request to `path` (the full path, as its framework routes it) may be at a
    /// declared template.
    #[inline]
    pub(crate) fn may_match(&self, path: &str) -> bool {
        self.literals.iter().any(|literal| match literal {
            Literal::Exact(template) => path == &**template,
            Literal::Prefix(prefix) => path.starts_with(&**prefix),
        })
    }

    /// The operation of `template` for `method`: a method-specific declaration first, then
    /// one for any method.
    pub(crate) fn get(&self, method: &Method, template: &str) -> Option<&Declared> {
        let declared = self.table.get(template)?;
        declared
            .iter()
            .find(|(m, _)| m.as_ref() == Some(method))
            .or_else(|| declared.iter().find(|(m, _)| m.is_none()))
            .map(|(_, op)| op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_have_a_cost_of_at_least_one() {
        let op = Operation::new("send_email").with_cost(2);
        assert_eq!((op.name(), op.cost()), ("send_email", 2));
        assert_eq!(Operation::from("x").with_cost(0).cost(), 1);
        assert_eq!(op.target(), Target::operation("send_email"));
    }

    #[test]
    fn the_target_is_the_operation_else_method_and_path() {
        let op = Operation::new("send_email");
        assert_eq!(
            target_for(
                Method::POST,
                "/emails",
                None,
                Some(&op),
                PathTarget::Concrete
            ),
            (Target::operation("send_email"), 1)
        );
        assert_eq!(
            target_for(
                Method::GET,
                "/items/42",
                Some("/items/{id}"),
                None,
                PathTarget::Template
            ),
            (Target::path(Method::GET, "/items/{id}"), 1)
        );
        assert_eq!(
            target_for(
                Method::GET,
                "/items/42",
                Some("/items/{id}"),
                None,
                PathTarget::Concrete
            ),
            (Target::path(Method::GET, "/items/42"), 1)
        );
        assert_eq!(
            target_for(Method::GET, "/nowhere", None, None, PathTarget::Template),
            (Target::path(Method::GET, "/nowhere"), 1)
        );
    }

    #[test]
    fn route_operations_prefer_the_method_and_freeze_on_first_use() {
        let routes = RouteOperations::default();
        routes.insert(None, "/emails", Operation::new("any"));
        routes.insert(
            Some(Method::POST),
            "/emails",
            Operation::new("post").with_cost(3),
        );
        let shared = routes.clone();
        let served = shared.served();
        assert_eq!(
            served
                .get(&Method::POST, "/emails")
                .and_then(Declared::operation)
                .map(Operation::cost),
            Some(3)
        );
        assert_eq!(
            served
                .get(&Method::GET, "/emails")
                .and_then(Declared::operation)
                .map(Operation::name),
            Some("any")
        );
        assert!(served.get(&Method::GET, "/other").is_none());
        assert!(!served.is_empty());
        routes.insert(None, "/late", Operation::new("late"));
        assert!(shared.served().get(&Method::GET, "/late").is_none());
        assert!(RouteOperations::default().served().is_empty());
    }

    #[test]
    fn only_paths_with_a_declared_literal_part_may_be_at_a_template() {
        let routes = RouteOperations::default();
        routes.insert(None, "/emails", Operation::new("e"));
        routes.insert(None, "/api/items/{id}/{part}", Operation::new("i"));
        let served = routes.served();
        assert!(served.may_match("/emails"));
        assert!(!served.may_match("/emails/1"));
        assert!(served.may_match("/api/items/3/a"));
        assert!(!served.may_match("/api/other"));
        assert!(!RouteOperations::default().served().may_match("/emails"));
    }
}
