//! [`LightRate`]: the service.

use std::fmt;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::request::Parts;
use http::{HeaderMap, Request, Response};
use lightrate_core::web::{
    client_ip, target_for, validate_identifier, write_rate_limit_headers, MissingIdentifier,
    PathTarget, RateLimitHeaders, Rejection,
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

/// An IP address written out on the stack: identifying a user by address allocates nothing.
struct IpText {
    buf: [u8; 46],
    len: usize,
}

impl IpText {
    fn new(ip: IpAddr) -> Self {
        let mut text = IpText {
            buf: [0; 46],
            len: 0,
        };
        match ip {
            // Dotted decimal by hand: `fmt` costs more than the limiter's whole decision.
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push(b'.');
                    }
                    if octet >= 100 {
                        text.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        text.push(b'0' + octet / 10 % 10);
                    }
                    text.push(b'0' + octet % 10);
                }
            }
            IpAddr::V6(_) => {
                let _ = write!(text, "{ip}");
            }
        }
        text
    }

    fn push(&mut self, byte: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = byte;
            self.len += 1;
        }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl fmt::Write for IpText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let slot = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

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
        if parts.extensions.get::<Decision>().is_some() || self.is_excluded(parts) {
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

    /// What a decision means for the request.
    pub(crate) fn settle(&self, decision: Decision) -> Plan {
        if decision.is_allowed() {
            let headers = (self.headers == RateLimitHeaders::Always && decision.rule().is_some())
                .then(|| {
                    let mut headers = HeaderMap::new();
                    let policy = decision.rule().and_then(|r| self.limiter.rule_id(&r));
                    write_rate_limit_headers(
                        &mut headers,
                        &decision,
                        policy.as_deref().unwrap_or("default"),
                    );
                    Box::new(headers)
                });
            Plan::Allowed(decision, headers)
        } else {
            let policy = decision.rule().and_then(|r| self.limiter.rule_id(&r));
            tracing::debug!(
                target: "lightrate::tower",
                retry_after = decision.retry_after_secs(),
                source = ?decision.source(),
                "request limited"
            );
            Plan::Answer(Rejection::from_decision(decision, policy))
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
                if self.config.insert_decision {
                    parts.extensions.insert(decision);
                }
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
