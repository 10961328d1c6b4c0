//! What every web adapter shares, on the `http` crate's types: identifier validation, the
//! client address, per-route operations, the choice of target, and the answers (429, 503, 400)
//! with their headers. `lightrate-tower` and `lightrate-actix` are only glue between their
//! framework and this module.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, Method, Response, StatusCode};

use crate::{Decision, DecisionSource, ErrorKind, Limiter, Target};

/// The longest user identifier accepted from a request.
pub const MAX_IDENTIFIER_BYTES: usize = 256;

/// Why a user identifier was refused (the request gets 400, before any token is spent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InvalidIdentifier {
    /// Empty, or only white space.
    Empty,
    /// Longer than [`MAX_IDENTIFIER_BYTES`].
    TooLong,
    /// Not UTF-8, or contains control characters.
    NotVisible,
}

impl fmt::Display for InvalidIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InvalidIdentifier::Empty => "the user identifier is empty",
            InvalidIdentifier::TooLong => "the user identifier is longer than 256 bytes",
            InvalidIdentifier::NotVisible => {
                "the user identifier must be UTF-8 text without control characters"
            }
        })
    }
}

impl std::error::Error for InvalidIdentifier {}

/// Checks a user identifier taken from a request: not empty or blank, at most
/// [`MAX_IDENTIFIER_BYTES`], UTF-8 without control characters.
///
/// ```
/// use lightrate_core::web::{validate_identifier, InvalidIdentifier};
///
/// assert_eq!(validate_identifier(b"user-42"), Ok("user-42"));
/// assert_eq!(validate_identifier(b"  "), Err(InvalidIdentifier::Empty));
/// assert_eq!(validate_identifier(&[b'a'; 257]), Err(InvalidIdentifier::TooLong));
/// assert_eq!(validate_identifier(b"a\x07b"), Err(InvalidIdentifier::NotVisible));
/// assert_eq!(validate_identifier(&[0xff, 0xfe]), Err(InvalidIdentifier::NotVisible));
/// ```
pub fn validate_identifier(raw: &[u8]) -> Result<&str, InvalidIdentifier> {
    if raw.len() > MAX_IDENTIFIER_BYTES {
        return Err(InvalidIdentifier::TooLong);
    }
    let text = std::str::from_utf8(raw).map_err(|_| InvalidIdentifier::NotVisible)?;
    if text.chars().any(char::is_control) {
        return Err(InvalidIdentifier::NotVisible);
    }
    if text.trim().is_empty() {
        return Err(InvalidIdentifier::Empty);
    }
    Ok(text)
}

/// What to do with a request that carries no user identifier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MissingIdentifier {
    /// Limit it by the client's IP address. The default: anonymous clients are still limited
    /// (letting them through would make omitting the identifier a way around the limit), and
    /// endpoints that work without one keep working.
    #[default]
    PeerIp,
    /// Let it through without limiting it.
    Unlimited,
    /// Answer 400 without calling the handler.
    Reject,
}

/// The client's address: the peer, or, behind `trusted_proxies` reverse proxies that append
/// to `X-Forwarded-For`, the address the outermost of them saw. Forwarded headers are never
/// read when `trusted_proxies` is 0 (the default of both adapters), because any client can
/// send them.
///
/// ```
/// use lightrate_core::web::client_ip;
/// use http::HeaderMap;
///
/// let peer = "10.0.0.2".parse().ok();
/// let mut headers = HeaderMap::new();
/// headers.insert("x-forwarded-for", "6.6.6.6, 203.0.113.7".parse().unwrap());
/// assert_eq!(client_ip(peer, &headers, 0), peer); // not trusted: the peer
/// // One trusted proxy appended 203.0.113.7; 6.6.6.6 is what the client claimed.
/// assert_eq!(client_ip(peer, &headers, 1), "203.0.113.7".parse().ok());
/// ```
pub fn client_ip(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted_proxies: usize,
) -> Option<IpAddr> {
    if trusted_proxies == 0 {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|hop| !hop.is_empty())
        .collect();
    if hops.is_empty() {
        return peer;
    }
    // The last `trusted_proxies` entries were written by our proxies; the outermost of them
    // wrote the address it received from.
    let at = hops.len().saturating_sub(trusted_proxies);
    hops[at].parse().ok().or(peer)
}

/// An IP address written out on the stack, so that identifying a user by address allocates
/// nothing (and IPv4 skips `fmt`, which costs more than a whole local decision).
///
/// ```
/// use lightrate_core::web::IpText;
///
/// assert_eq!(IpText::new("192.0.2.7".parse().unwrap()).as_str(), "192.0.2.7");
/// assert_eq!(IpText::new("2001:db8::1".parse().unwrap()).as_str(), "2001:db8::1");
/// ```
#[derive(Clone, Copy)]
pub struct IpText {
    buf: [u8; 46],
    len: usize,
}

impl IpText {
    /// The address as text.
    #[inline]
    pub fn new(ip: IpAddr) -> Self {
        let mut text = IpText {
            buf: [0; 46],
            len: 0,
        };
        match ip {
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

    #[inline]
    fn push(&mut self, byte: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = byte;
            self.len += 1;
        }
    }

    /// The text.
    #[inline]
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.buf.get(..self.len).unwrap_or_default()).unwrap_or("")
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

impl fmt::Debug for IpText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IpText").field(&self.as_str()).finish()
    }
}

/// A per-route operation: the route is limited as this LightRate operation, at this cost,
/// instead of by its method and path.
///
/// ```
/// use lightrate_core::web::Operation;
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

/// The operations of routes, by route template (`/items/{id}` as the route was declared) and
/// optionally method. Filled while the app is built, read by every request (lock-free once
/// the first request has been served).
///
/// Shared by every clone of an adapter's layer, so that a per-route annotation and a
/// router-wide layer agree on the route's operation.
#[derive(Clone, Debug, Default)]
pub struct RouteOperations {
    inner: Arc<RouteTable>,
}

/// Template → (method, operation) declarations: looked up by `&str`, without allocating.
type Table = HashMap<String, Vec<(Option<Method>, Operation)>>;

#[derive(Debug, Default)]
struct RouteTable {
    building: Mutex<Table>,
    frozen: OnceLock<Table>,
}

impl RouteOperations {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares that requests to `template` (with `method`, or any method for `None`) are the
    /// operation `op`. Declarations made after the table is first read (by the first request,
    /// or [`is_empty`](Self::is_empty)) are ignored, with a warning.
    pub fn insert(&self, method: Option<Method>, template: impl Into<String>, op: Operation) {
        let template = template.into();
        if self.inner.frozen.get().is_some() {
            tracing::warn!(
                target: "lightrate::web",
                template,
                operation = op.name(),
                "operation declared after the first request; ignored"
            );
            return;
        }
        let mut table = self
            .inner
            .building
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let declared = table.entry(template).or_default();
        declared.retain(|(m, _)| *m != method);
        declared.push((method, op));
    }

    /// The table as served: frozen at the first request.
    fn frozen(&self) -> &Table {
        self.inner.frozen.get_or_init(|| {
            self.inner
                .building
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        })
    }

    /// The operation of `template` for `method`: a method-specific declaration first, then
    /// one for any method.
    pub fn get(&self, method: &Method, template: &str) -> Option<&Operation> {
        let declared = self.frozen().get(template)?;
        declared
            .iter()
            .find(|(m, _)| m.as_ref() == Some(method))
            .or_else(|| declared.iter().find(|(m, _)| m.is_none()))
            .map(|(_, op)| op)
    }

    /// Whether any operation is declared (freezes the table, as a request does).
    pub fn is_empty(&self) -> bool {
        self.frozen().is_empty()
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

/// The target and cost of a request: its operation if it has one, else method + path.
///
/// ```
/// use lightrate_core::web::{target_for, Operation, PathTarget};
/// use lightrate_core::Target;
/// use http::Method;
///
/// let op = Operation::new("send_email");
/// assert_eq!(target_for(&Method::POST, "/emails", None, Some(&op), PathTarget::Concrete),
///            (Target::operation("send_email"), 1));
/// assert_eq!(target_for(&Method::GET, "/items/42", Some("/items/{id}"), None, PathTarget::Template),
///            (Target::path(Method::GET, "/items/{id}"), 1));
/// ```
pub fn target_for<'a>(
    method: &Method,
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
            (Target::path(method.clone(), path), 1)
        }
    }
}

/// When to send the IETF `RateLimit-Policy` and `RateLimit` fields
/// (draft-ietf-httpapi-ratelimit-headers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RateLimitHeaders {
    /// Never. The default.
    #[default]
    Off,
    /// On 429 answers.
    OnDenied,
    /// On 429 answers and on every limited response that was allowed.
    Always,
}

/// Writes `RateLimit-Policy: "<policy>";q=<burst>;w=<window>` and
/// `RateLimit: "<policy>";r=<remaining>;t=<seconds>` for `decision`.
///
/// `t` is the retry-after of a denial, and for an allowed request the seconds until the bucket
/// is full again.
pub fn write_rate_limit_headers(headers: &mut HeaderMap, decision: &Decision, policy: &str) {
    let Some(rule) = decision.rule() else {
        return;
    };
    let name: String = policy
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\')
        .collect();
    let window = rule.window_secs();
    let reset = if decision.is_allowed() {
        let missing = rule.burst_rate().saturating_sub(decision.remaining());
        let millis = rule.refill_rate().millitokens_per_second();
        if millis == 0 || missing == 0 {
            0
        } else {
            u64::try_from((u128::from(missing) * 1000).div_ceil(u128::from(millis)))
                .unwrap_or(u64::MAX)
        }
    } else {
        decision.retry_after_secs()
    };
    let policy_value = format!("\"{name}\";q={};w={window}", rule.burst_rate());
    let limit_value = format!("\"{name}\";r={};t={reset}", decision.remaining());
    if let Ok(value) = HeaderValue::try_from(policy_value) {
        headers.insert(HeaderName::from_static("ratelimit-policy"), value);
    }
    if let Ok(value) = HeaderValue::try_from(limit_value) {
        headers.insert(HeaderName::from_static("ratelimit"), value);
    }
}

/// A request the limiter allowed: its decision, and the IETF fields to add to its response
/// (only with [`RateLimitHeaders::Always`]).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Allowed {
    /// The decision, for the request's extensions.
    pub decision: Decision,
    /// Fields to add to the response.
    pub headers: Option<Box<HeaderMap>>,
}

/// What a decision means for a request: [`Allowed`], or the [`Rejection`] to answer with.
/// The adapters' one place for it.
pub fn settle(
    limiter: &Limiter,
    decision: Decision,
    headers: RateLimitHeaders,
) -> Result<Allowed, Rejection> {
    let policy = || decision.rule().and_then(|rule| limiter.rule_id(&rule));
    if decision.is_allowed() {
        let headers =
            (headers == RateLimitHeaders::Always && decision.rule().is_some()).then(|| {
                let mut fields = HeaderMap::new();
                write_rate_limit_headers(
                    &mut fields,
                    &decision,
                    policy().as_deref().unwrap_or("default"),
                );
                Box::new(fields)
            });
        Ok(Allowed { decision, headers })
    } else {
        tracing::debug!(
            target: "lightrate::web",
            retry_after = decision.retry_after_secs(),
            source = ?decision.source(),
            "request limited"
        );
        Err(Rejection::from_decision(decision, policy()))
    }
}

/// Why a request was not passed to its handler.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// Rate limited: 429 with `Retry-After`.
    RateLimited {
        /// The decision.
        decision: Decision,
        /// The rule's id (the policy name of the IETF fields), when known.
        policy: Option<Arc<str>>,
    },
    /// The token source could not answer and the policy is to deny: 503 with `Retry-After`.
    Unavailable {
        /// What failed (timeout, network, a rejected API key...).
        kind: ErrorKind,
        /// When to try again.
        retry_after_secs: u64,
    },
    /// The user identifier is unusable: 400.
    InvalidIdentifier(InvalidIdentifier),
    /// There is no user identifier and the policy is to reject: 400.
    MissingIdentifier,
}

impl Rejection {
    /// The rejection for a decision that did not allow the request.
    pub fn from_decision(decision: Decision, policy: Option<Arc<str>>) -> Self {
        match (decision.source(), decision.unavailable_kind()) {
            (DecisionSource::Unavailable, Some(kind)) => Rejection::Unavailable {
                kind,
                retry_after_secs: decision.retry_after_secs(),
            },
            _ => Rejection::RateLimited { decision, policy },
        }
    }

    /// The answer's status.
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Rejection::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::InvalidIdentifier(_) | Rejection::MissingIdentifier => {
                StatusCode::BAD_REQUEST
            }
        }
    }

    /// The default answer: the status, a JSON body, `Retry-After` on 429 and 503, and the
    /// IETF fields on 429 when `headers` asks for them.
    ///
    /// ```
    /// use lightrate_core::web::{InvalidIdentifier, RateLimitHeaders, Rejection};
    ///
    /// let answer = Rejection::InvalidIdentifier(InvalidIdentifier::TooLong)
    ///     .to_response(RateLimitHeaders::Off);
    /// assert_eq!(answer.status(), 400);
    /// assert_eq!(answer.headers()["content-type"], "application/json");
    /// ```
    pub fn to_response(&self, headers: RateLimitHeaders) -> Response<Bytes> {
        let (body, retry_after) = match self {
            Rejection::RateLimited { decision, policy } => {
                let secs = decision.retry_after_secs();
                let mut body = serde_json::json!({
                    "error": "rate_limited",
                    "message": "Too many requests",
                    "retryAfter": secs,
                });
                if let Some(policy) = policy {
                    body["rule"] = serde_json::Value::String(policy.to_string());
                }
                (body, Some(secs))
            }
            Rejection::Unavailable {
                kind,
                retry_after_secs,
            } => (
                serde_json::json!({
                    "error": "rate_limiter_unavailable",
                    "message": format!("the rate limiter cannot decide ({})", describe(*kind)),
                    "retryAfter": retry_after_secs,
                }),
                Some(*retry_after_secs),
            ),
            Rejection::InvalidIdentifier(why) => (
                serde_json::json!({"error": "invalid_user_identifier", "message": why.to_string()}),
                None,
            ),
            Rejection::MissingIdentifier => (
                serde_json::json!({
                    "error": "missing_user_identifier",
                    "message": "this endpoint needs a user identifier",
                }),
                None,
            ),
        };
        let mut response = Response::new(Bytes::from(body.to_string()));
        *response.status_mut() = self.status();
        let h = response.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(secs) = retry_after {
            h.insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if let Rejection::RateLimited { decision, policy } = self {
            if headers != RateLimitHeaders::Off {
                write_rate_limit_headers(h, decision, policy.as_deref().unwrap_or("default"));
            }
        }
        response
    }
}

fn describe(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Timeout => "the token source timed out",
        ErrorKind::Network => "the token source is unreachable",
        ErrorKind::Decode => "the token source answered something unreadable",
        ErrorKind::Unauthorized | ErrorKind::Forbidden | ErrorKind::NotFound => {
            "the token source rejected this service's configuration"
        }
        _ => "the token source failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_checked_at_the_edges() {
        assert_eq!(validate_identifier(&[b'a'; 256]).map(str::len), Ok(256));
        assert_eq!(validate_identifier(b""), Err(InvalidIdentifier::Empty));
        assert_eq!(
            validate_identifier(b"a\tb"),
            Err(InvalidIdentifier::NotVisible)
        );
        assert_eq!(
            validate_identifier(b"a\x7fb"),
            Err(InvalidIdentifier::NotVisible)
        );
        assert_eq!(validate_identifier("Zoë 🦀".as_bytes()), Ok("Zoë 🦀"));
        assert_eq!(
            validate_identifier("\u{85}x".as_bytes()),
            Err(InvalidIdentifier::NotVisible)
        );
    }

    #[test]
    fn ip_addresses_are_written_as_std_writes_them() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "192.0.2.10",
            "::1",
            "2001:db8::8a2e:370:7334",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:192.0.2.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::new(ip).as_str(), ip.to_string());
        }
    }

    #[test]
    fn forwarded_for_is_read_only_behind_trusted_proxies() {
        let peer: Option<IpAddr> = "10.0.0.9".parse().ok();
        let mut h = HeaderMap::new();
        assert_eq!(client_ip(peer, &h, 2), peer);
        h.append("x-forwarded-for", "1.1.1.1".parse().unwrap());
        h.append("x-forwarded-for", "2.2.2.2, 3.3.3.3".parse().unwrap());
        assert_eq!(client_ip(peer, &h, 0), peer);
        assert_eq!(client_ip(peer, &h, 1), "3.3.3.3".parse().ok());
        assert_eq!(client_ip(peer, &h, 2), "2.2.2.2".parse().ok());
        assert_eq!(client_ip(peer, &h, 9), "1.1.1.1".parse().ok());
        let mut garbage = HeaderMap::new();
        garbage.insert("x-forwarded-for", "not-an-ip".parse().unwrap());
        assert_eq!(client_ip(peer, &garbage, 1), peer);
    }

    #[test]
    fn route_operations_prefer_the_method_and_freeze_on_first_use() {
        let routes = RouteOperations::new();
        routes.insert(None, "/emails", Operation::new("any"));
        routes.insert(
            Some(Method::POST),
            "/emails",
            Operation::new("post").with_cost(3),
        );
        let shared = routes.clone();
        assert_eq!(
            shared.get(&Method::POST, "/emails").map(Operation::cost),
            Some(3)
        );
        assert_eq!(
            shared.get(&Method::GET, "/emails").map(Operation::name),
            Some("any")
        );
        assert_eq!(shared.get(&Method::GET, "/other"), None);
        assert!(!shared.is_empty());
        routes.insert(None, "/late", Operation::new("late"));
        assert_eq!(shared.get(&Method::GET, "/late"), None);
    }

    fn decision(allowed: bool) -> Decision {
        use crate::{EmbeddedSource, Limiter, RuleSet};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let limiter = Limiter::new(EmbeddedSource::new(RuleSet::demo()));
        let target = Target::operation("send_email");
        let mut last = None;
        for _ in 0..if allowed { 1 } else { 11 } {
            last = Some(runtime.block_on(limiter.check("u", &target)).unwrap());
        }
        last.unwrap()
    }

    #[test]
    fn a_429_has_retry_after_json_and_optional_ietf_fields() {
        let denied = decision(false);
        assert!(!denied.is_allowed());
        let rejection = Rejection::from_decision(denied, Some("rule_send_email".into()));
        let plain = rejection.to_response(RateLimitHeaders::Off);
        assert_eq!(plain.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(plain.headers()["retry-after"], "1");
        assert!(plain.headers().get("ratelimit").is_none());
        let body: serde_json::Value = serde_json::from_slice(plain.body()).unwrap();
        assert_eq!(body["error"], "rate_limited");
        assert_eq!(body["retryAfter"], 1);
        assert_eq!(body["rule"], "rule_send_email");

        let ietf = rejection.to_response(RateLimitHeaders::OnDenied);
        assert_eq!(
            ietf.headers()["ratelimit-policy"],
            "\"rule_send_email\";q=10;w=10"
        );
        assert_eq!(ietf.headers()["ratelimit"], "\"rule_send_email\";r=0;t=1");
    }

    #[test]
    fn allowed_requests_get_a_reset_time() {
        let allowed = decision(true);
        let mut headers = HeaderMap::new();
        write_rate_limit_headers(&mut headers, &allowed, "p\"q");
        // Nine left of ten at one per second: full again in one second.
        assert_eq!(headers["ratelimit"], "\"pq\";r=9;t=1");
    }

    #[test]
    fn a_503_says_why_without_details() {
        let rejection = Rejection::Unavailable {
            kind: ErrorKind::Unauthorized,
            retry_after_secs: 10,
        };
        let answer = rejection.to_response(RateLimitHeaders::Always);
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.headers()["retry-after"], "10");
        let body: serde_json::Value = serde_json::from_slice(answer.body()).unwrap();
        assert_eq!(body["error"], "rate_limiter_unavailable");
        assert_eq!(body["retryAfter"], 10);
    }
}
