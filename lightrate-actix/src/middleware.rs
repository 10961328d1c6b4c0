//! [`LightRateMiddleware`]: the service that [`LightRate`](crate::LightRate) wraps around
//! an app, a scope or a resource.

use std::cell::Ref;
use std::fmt;
use std::rc::Rc;
use std::sync::Arc;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{forward_ready, Extensions, Service, ServiceRequest, ServiceResponse};
use actix_web::HttpMessage;
use http::HeaderMap;
use lightrate_core::web::{
    client_ip, settle, target_for, validate_identifier, IpText, MissingIdentifier, PathTarget,
    Rejection,
};
use lightrate_core::{Decision, Target};

use crate::convert::{append_headers, forwarded_for, http_method};
use crate::future::ResponseFuture;
use crate::transform::{Config, IdentifyKind};

/// The middleware service of [`LightRate`](crate::LightRate).
pub struct LightRateMiddleware<S> {
    service: Rc<S>,
    config: Arc<Config>,
}

impl<S> fmt::Debug for LightRateMiddleware<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LightRateMiddleware")
            .field("operation", &self.config.operation)
            .finish_non_exhaustive()
    }
}

impl<S> LightRateMiddleware<S> {
    pub(crate) fn new(service: Rc<S>, config: Arc<Config>) -> Self {
        LightRateMiddleware { service, config }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.service
    }
}

/// Marks a request decided when its `Decision` is not kept (`insert_decision(false)`), so
/// that a later LightRate middleware does not charge it again. Zero-sized: boxing it in the
/// extensions allocates nothing.
#[derive(Clone, Copy, Debug)]
struct Decided;

/// What to do with a request, decided before the inner service is called.
pub(crate) enum Plan {
    /// Not limited (excluded, already decided by another LightRate middleware, or no
    /// identifier and the policy lets it through).
    Pass,
    /// Decided locally: allowed (with the IETF fields to add, if asked) or answered.
    Allowed(Decision, Option<Box<HeaderMap>>),
    Answer(Rejection),
    /// The source must be asked.
    Ask {
        user: Box<str>,
        target: Target<'static>,
        cost: u64,
    },
}

impl Config {
    /// Whether another LightRate middleware has decided this request already.
    fn is_decided(extensions: &Extensions) -> bool {
        extensions.contains::<Decision>() || extensions.contains::<Decided>()
    }

    /// Records the decision in the request (for the handler, and so that no later LightRate
    /// middleware decides again).
    pub(crate) fn mark(&self, req: &ServiceRequest, decision: Decision) {
        let mut extensions = req.extensions_mut();
        if self.insert_decision {
            extensions.insert(decision);
        } else {
            extensions.insert(Decided);
        }
    }

    /// Everything up to asking the limiter for a local decision. Allocates only when the
    /// source must be asked, when the route's pattern is needed (declared operations, or
    /// [`PathTarget::Template`]), or when the IETF fields are sent on allowed responses.
    pub(crate) fn plan(&self, req: &ServiceRequest) -> Plan {
        // The path as actix routes it: percent-decoded (`/em%61ils` reaches `/emails`).
        let path = req.match_info().as_str();
        if Self::is_decided(&req.extensions()) || self.is_excluded(req, path) {
            return Plan::Pass;
        }
        let method = http_method(req.method());
        // The resource's pattern, only when it is used: it costs actix a walk of its resource
        // map and a `String`.
        let pattern = if self.operation.is_none()
            && (self.path_target == PathTarget::Template
                || self.templates.may_match(path, &self.routes))
        {
            resource_pattern(req, path)
        } else {
            None
        };
        let operation = self.operation.as_ref().or_else(|| {
            let method = method.as_ref()?;
            pattern
                .as_deref()
                .and_then(|template| self.routes.get(method, template))
        });
        let name = match operation {
            None if self.names_as_operations => resource_name(req, path),
            _ => None,
        };
        let (target, cost) = match (name, &method) {
            (Some(name), _) => (Target::operation(name), 1),
            (None, Some(method)) => target_for(
                method,
                path,
                pattern.as_deref(),
                operation,
                self.path_target,
            ),
            // A method `http` refuses (none that actix accepts): still limited.
            (None, None) => match operation {
                Some(op) => (op.target(), op.cost()),
                None => (Target::Default, 1),
            },
        };

        let validated;
        let extensions: Ref<'_, Extensions>;
        let ip_text;
        let found = match self.identify.kind() {
            IdentifyKind::Header(name) => req.headers().get(name).map(|v| v.as_bytes()),
            IdentifyKind::PeerIp => None,
            IdentifyKind::Extension(get) => {
                extensions = req.extensions();
                get(&extensions).map(str::as_bytes)
            }
            IdentifyKind::With(f) => match f(req) {
                Some(text) => {
                    validated = text;
                    Some(validated.as_bytes())
                }
                None => None,
            },
        };
        let user: &str = match found {
            Some(raw) => match validate_identifier(raw) {
                Ok(user) => user,
                Err(why) => return Plan::Answer(Rejection::InvalidIdentifier(why)),
            },
            None => {
                let by_ip = matches!(self.identify.kind(), IdentifyKind::PeerIp)
                    || self.missing == MissingIdentifier::PeerIp;
                match self.missing {
                    _ if by_ip => {
                        let peer = req.peer_addr().map(|a| a.ip());
                        let ip = if self.trusted_proxies == 0 {
                            peer
                        } else {
                            client_ip(peer, &forwarded_for(req.headers()), self.trusted_proxies)
                        };
                        let Some(ip) = ip else {
                            // No address known (not served over a socket): nothing to limit by.
                            return Plan::Pass;
                        };
                        ip_text = IpText::new(ip);
                        ip_text.as_str()
                    }
                    MissingIdentifier::Reject => return Plan::Answer(Rejection::MissingIdentifier),
                    _ => return Plan::Pass,
                }
            }
        };

        match self.limiter.check_local(user, &target, cost) {
            Some(decision) => match self.settle(decision) {
                Ok((decision, headers)) => Plan::Allowed(decision, headers),
                Err(rejection) => Plan::Answer(rejection),
            },
            None => Plan::Ask {
                user: user.into(),
                target: target.into_owned(),
                cost,
            },
        }
    }

    /// What a decision means for the request: allowed (with the IETF fields to send, if
    /// asked), or the answer.
    pub(crate) fn settle(
        &self,
        decision: Decision,
    ) -> Result<(Decision, Option<Box<HeaderMap>>), Rejection> {
        settle(&self.limiter, decision, self.headers)
            .map(|allowed| (allowed.decision, allowed.headers))
    }
}

/// The pattern of the resource the request reaches (`/items/{id}`). Before routing has
/// reached the resource (app-wide or scope-level middleware), actix finds it from the path;
/// it routes on the percent-decoded path, so that is the one to look up.
fn resource_pattern(req: &ServiceRequest, path: &str) -> Option<String> {
    if path == req.path() {
        req.match_pattern()
    } else {
        req.resource_map().match_pattern(path)
    }
}

/// The name of the resource the request reaches, found as [`resource_pattern`] is.
fn resource_name<'a>(req: &'a ServiceRequest, path: &str) -> Option<&'a str> {
    if path == req.path() {
        req.match_name()
    } else {
        req.resource_map().match_name(path)
    }
}

/// Adds the IETF fields of an allowed request to its response.
pub(crate) fn add_headers<B>(response: &mut ServiceResponse<B>, headers: Option<Box<HeaderMap>>) {
    if let Some(headers) = headers {
        append_headers(response.headers_mut(), *headers);
    }
}

impl<S, B> Service<ServiceRequest> for LightRateMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = actix_web::Error;
    type Future = ResponseFuture<S>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        match self.config.plan(&req) {
            Plan::Pass => ResponseFuture::inner(self.service.call(req), None),
            Plan::Allowed(decision, headers) => {
                self.config.mark(&req, decision);
                ResponseFuture::inner(self.service.call(req), headers)
            }
            Plan::Answer(rejection) => {
                ResponseFuture::answer(req.into_response(self.config.respond(&rejection)))
            }
            Plan::Ask { user, target, cost } => {
                let check = self.config.limiter.check_with_source(user, target, cost);
                let service = Rc::clone(&self.service);
                let config = Arc::clone(&self.config);
                ResponseFuture::checking(Box::pin(async move {
                    let settled = match check.await {
                        Ok(decision) => config.settle(decision),
                        // The policy is to surface the source's failure: answer 503.
                        Err(error) => Err(Rejection::Unavailable {
                            kind: error.kind(),
                            retry_after_secs: error.retry_after().map_or(1, |d| d.as_secs().max(1)),
                        }),
                    };
                    match settled {
                        Ok((decision, headers)) => {
                            config.mark(&req, decision);
                            let mut response = service.call(req).await?;
                            add_headers(&mut response, headers);
                            Ok(response.map_into_boxed_body())
                        }
                        Err(rejection) => Ok(req.into_response(config.respond(&rejection))),
                    }
                }))
            }
        }
    }
}
