//! [`LightRate`]: the service.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::request::Parts;
use http::{HeaderMap, Request, Response};
use lightrate_core::web::{
    client_ip, settle, target_for, validate_identifier, IpText, MissingIdentifier, PathTarget,
    Rejection,
};
use lightrate_core::{Decision, Target};
use tower::Service;

use crate::future::ResponseFuture;
use crate::layer::{Config, Raw};

/// The service of [`LightRateLayer`](crate::LightRateLayer).
pub struct LightRate<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S: Clone> Clone for LightRate<S> {
    fn clone(&self) -> Self {
        LightRate {
            inner: self.inner.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for LightRate<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LightRate")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> LightRate<S> {
    pub(crate) fn new(inner: S, config: Arc<Config>) -> Self {
        LightRate { inner, config }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// Marks a request decided when its `Decision` is not kept (`insert_decision(false)`), so that
/// a later LightRate layer does not charge it again. Zero-sized: boxing it allocates nothing.
#[derive(Clone, Copy, Debug)]
struct Decided;

fn peer_ip(parts: &Parts) -> Option<IpAddr> {
    #[cfg(feature = "axum")]
    if let Some(info) = parts
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(info.0.ip());
    }
    parts.extensions.get::<SocketAddr>().map(SocketAddr::ip)
}

fn route_template(parts: &Parts) -> Option<&str> {
    #[cfg(feature = "axum")]
    if let Some(matched) = parts.extensions.get::<axum::extract::MatchedPath>() {
        return Some(matched.as_str());
    }
    let _ = parts;
    None
}

/// What to do with a request, decided before the inner service is called.
pub(crate) enum Plan {
    /// Not limited (excluded, already decided by another LightRate layer, or no identifier
    /// and the policy lets it through).
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
    /// Everything up to asking the limiter for a local decision. Allocates only when the
    /// source must be asked (or the IETF fields are sent on allowed responses).
    pub(crate) fn plan(&self, parts: &Parts) -> Plan {
        if Self::is_decided(&parts.extensions) || self.is_excluded(parts) {
            return Plan::Pass;
        }
        // Reading the route template is a lookup in the extensions: only when it is used.
        let template = if self.path_target == PathTarget::Template || !self.routes.is_empty() {
            route_template(parts)
        } else {
            None
        };
        let operation = self
            .operation
            .as_ref()
            .or_else(|| template.and_then(|t| self.routes.get(&parts.method, t)));
        let (target, cost) = target_for(
            &parts.method,
            parts.uri.path(),
            template,
            operation,
            self.path_target,
        );

        let ip_text;
        let validated;
        let user: &str = match self.identify.raw(parts) {
            Some(Raw::Bytes(bytes)) => match validate_identifier(bytes) {
                Ok(user) => user,
                Err(why) => return Plan::Answer(Rejection::InvalidIdentifier(why)),
            },
            Some(Raw::Text(text)) => match validate_identifier(text.as_bytes()) {
                Ok(_) => {
                    validated = text;
                    &validated
                }
                Err(why) => return Plan::Answer(Rejection::InvalidIdentifier(why)),
            },
            None => {
                let fallback =
                    self.identify.is_peer_ip() || self.missing == MissingIdentifier::PeerIp;
                match self.missing {
                    _ if fallback => {
                        let Some(ip) =
                            client_ip(peer_ip(parts), &parts.headers, self.trusted_proxies)
                        else {
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
            Some(decision) => self.settle(decision),
            None => Plan::Ask {
                user: user.into(),
                target: target.into_owned(),
                cost,
            },
        }
    }

    /// Whether another LightRate layer has decided this request already.
    fn is_decided(extensions: &http::Extensions) -> bool {
        extensions.get::<Decision>().is_some() || extensions.get::<Decided>().is_some()
    }

    /// Records the decision in the request: for the handler, and so that no later LightRate
    /// layer decides again.
    pub(crate) fn mark(&self, extensions: &mut http::Extensions, decision: Decision) {
        if self.insert_decision {
            extensions.insert(decision);
        } else {
            extensions.insert(Decided);
        }
    }

    /// What a decision means for the request.
    pub(crate) fn settle(&self, decision: Decision) -> Plan {
        match settle(&self.limiter, decision, self.headers) {
            Ok(allowed) => Plan::Allowed(allowed.decision, allowed.headers),
            Err(rejection) => Plan::Answer(rejection),
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for LightRate<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    ReqBody: Send + 'static,
    ResBody: From<bytes::Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        match self.config.plan(&parts) {
            Plan::Pass => {
                ResponseFuture::inner(self.inner.call(Request::from_parts(parts, body)), None)
            }
            Plan::Allowed(decision, headers) => {
                self.config.mark(&mut parts.extensions, decision);
                ResponseFuture::inner(self.inner.call(Request::from_parts(parts, body)), headers)
            }
            Plan::Answer(rejection) => ResponseFuture::answer(self.config.respond(&rejection)),
            Plan::Ask { user, target, cost } => {
                // The service that was polled ready serves this request; a clone stays.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let check = self.config.limiter.check_with_source(user, target, cost);
                ResponseFuture::checking(
                    Box::pin(check),
                    inner,
                    Request::from_parts(parts, body),
                    self.config.clone(),
                )
            }
        }
    }
}
