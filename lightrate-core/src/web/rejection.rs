//! The answers a request gets instead of its handler (429, 503, 400), and the IETF
//! `RateLimit` fields.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, Response, StatusCode};

use super::identifier::InvalidIdentifier;
use crate::{Decision, DecisionSource, Error, ErrorKind};

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

/// Why a request was not passed to its handler: what a `respond_with` closure receives.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// Rate limited: 429 with `Retry-After`.
    RateLimited {
        /// The decision: of a request with several limits, the refusal with the longest wait.
        decision: Decision,
        /// The rule's id (the policy name of the IETF fields), when known.
        policy: Option<Arc<str>>,
        /// Of a request with several limits, every limit decided, with its rule's id (empty
        /// for a request with one limit: `decision` is all there is).
        limits: Vec<(Decision, Option<Arc<str>>)>,
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
    /// The identifier a limit of the request is charged to is missing (what: `the x-org-id
    /// header`, say): 400.
    MissingLimitIdentifier(String),
    /// The request does not say its cost usably (a limit's
    /// [`cost_from`](super::RouteLimit::cost_from) refused it, with this message): 400.
    InvalidCost(String),
}

impl Rejection {
    /// The rejection for a decision that did not allow the request.
    pub(crate) fn from_decision(decision: Decision, policy: Option<Arc<str>>) -> Self {
        match (decision.source(), decision.unavailable_kind()) {
            (DecisionSource::Unavailable, Some(kind)) => Rejection::Unavailable {
                kind,
                retry_after_secs: decision.retry_after_secs(),
            },
            _ => Rejection::RateLimited {
                decision,
                policy,
                limits: Vec::new(),
            },
        }
    }

    /// The rejection for a source that failed when the limiter's policy is to surface the
    /// failure ([`OnUnavailable::Error`](crate::OnUnavailable::Error)): 503.
    pub(crate) fn from_error(error: &Error) -> Self {
        Rejection::Unavailable {
            kind: error.kind(),
            retry_after_secs: error.retry_after().map_or(1, |d| d.as_secs().max(1)),
        }
    }

    /// The answer's status.
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Rejection::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::InvalidIdentifier(_)
            | Rejection::MissingIdentifier
            | Rejection::MissingLimitIdentifier(_)
            | Rejection::InvalidCost(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The default answer: the status, a JSON body, `Retry-After` on 429 and 503, and the
    /// IETF fields on 429 when `headers` asks for them. A `respond_with` closure can start
    /// from it.
    ///
    /// ```
    /// use lightrate::tower::{InvalidIdentifier, RateLimitHeaders, Rejection};
    ///
    /// let answer = Rejection::InvalidIdentifier(InvalidIdentifier::TooLong)
    ///     .to_response(RateLimitHeaders::Off);
    /// assert_eq!(answer.status(), 400);
    /// assert_eq!(answer.headers()["content-type"], "application/json");
    /// ```
    pub fn to_response(&self, headers: RateLimitHeaders) -> Response<Bytes> {
        let (body, retry_after) = match self {
            Rejection::RateLimited {
                decision,
                policy,
                limits,
            } => {
                let secs = decision.retry_after_secs();
                let mut body = serde_json::json!({
                    "error": "rate_limited",
                    "message": "Too many requests",
                    "retryAfter": secs,
                });
                if let Some(policy) = policy {
                    body["rule"] = serde_json::Value::String(policy.to_string());
                }
                // One per refusing limit (the one limit of a request that had one).
                let violations: Vec<serde_json::Value> = if limits.is_empty() {
                    vec![violation(decision, policy.as_deref())]
                } else {
                    limits
                        .iter()
                        .filter(|(d, _)| !d.is_allowed())
                        .map(|(d, rule)| violation(d, rule.as_deref()))
                        .collect()
                };
                body["violations"] = serde_json::Value::Array(violations);
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
            Rejection::MissingLimitIdentifier(what) => (
                serde_json::json!({
                    "error": "missing_identifier",
                    "message": format!("this endpoint needs {what}"),
                }),
                None,
            ),
            Rejection::InvalidCost(why) => (
                serde_json::json!({"error": "invalid_cost", "message": why}),
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
        if let Rejection::RateLimited {
            decision,
            policy,
            limits,
        } = self
        {
            if headers != RateLimitHeaders::Off {
                if limits.is_empty() {
                    write_rate_limit_headers(h, decision, policy.as_deref().unwrap_or("default"));
                } else {
                    write_all_rate_limit_headers(h, limits);
                }
            }
        }
        response
    }
}

/// The gRPC status codes of the answers.
mod grpc_status {
    pub(super) const INVALID_ARGUMENT: u8 = 3;
    pub(super) const RESOURCE_EXHAUSTED: u8 = 8;
    pub(super) const UNAVAILABLE: u8 = 14;
}

impl Rejection {
    /// The gRPC status of the answer: 8 (`RESOURCE_EXHAUSTED`) when rate limited, 14
    /// (`UNAVAILABLE`) when the source cannot answer, 3 (`INVALID_ARGUMENT`) for an unusable
    /// or missing identifier.
    pub fn grpc_status(&self) -> u8 {
        match self {
            Rejection::RateLimited { .. } => grpc_status::RESOURCE_EXHAUSTED,
            Rejection::Unavailable { .. } => grpc_status::UNAVAILABLE,
            Rejection::InvalidIdentifier(_)
            | Rejection::MissingIdentifier
            | Rejection::MissingLimitIdentifier(_)
            | Rejection::InvalidCost(_) => grpc_status::INVALID_ARGUMENT,
        }
    }

    /// The answer to a gRPC request (what the middleware sends when the request's
    /// `content-type` is `application/grpc`): a trailers-only response, HTTP 200 with
    /// `content-type: application/grpc`, `grpc-status` (see
    /// [`grpc_status`](Self::grpc_status)) and `grpc-message`, and, on 8 and 14, the wait in
    /// `retry-after` (whole seconds, at least 1) and `grpc-retry-pushback-ms`.
    ///
    /// ```
    /// use lightrate::tower::{InvalidIdentifier, Rejection};
    ///
    /// let answer = Rejection::InvalidIdentifier(InvalidIdentifier::Empty).to_grpc_response();
    /// assert_eq!(answer.status(), 200);
    /// assert_eq!(answer.headers()["grpc-status"], "3");
    /// assert_eq!(answer.headers()["grpc-message"], "the user identifier is empty");
    /// ```
    pub fn to_grpc_response(&self) -> Response<Bytes> {
        let (message, retry_after_ms) = match self {
            Rejection::RateLimited {
                decision, policy, ..
            } => {
                let ms = u64::try_from(decision.retry_after().as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1);
                let message = match policy {
                    Some(rule) => format!(
                        "rate limited by rule {rule}; retry after {} s",
                        decision.retry_after_secs()
                    ),
                    None => format!(
                        "rate limited; retry after {} s",
                        decision.retry_after_secs()
                    ),
                };
                (message, Some(ms))
            }
            Rejection::Unavailable {
                kind,
                retry_after_secs,
            } => (
                format!("the rate limiter cannot decide ({})", describe(*kind)),
                Some(retry_after_secs.max(&1).saturating_mul(1000)),
            ),
            Rejection::InvalidIdentifier(why) => (why.to_string(), None),
            Rejection::MissingIdentifier => ("this method needs a user identifier".into(), None),
            Rejection::MissingLimitIdentifier(what) => (format!("this method needs {what}"), None),
            Rejection::InvalidCost(why) => (why.clone(), None),
        };
        let mut response = Response::new(Bytes::new());
        let h = response.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert(
            HeaderName::from_static("grpc-status"),
            HeaderValue::from(u16::from(self.grpc_status())),
        );
        if let Ok(value) = HeaderValue::try_from(grpc_percent_encode(&message)) {
            h.insert(HeaderName::from_static("grpc-message"), value);
        }
        if let Some(ms) = retry_after_ms {
            h.insert(RETRY_AFTER, HeaderValue::from(ms.div_ceil(1000).max(1)));
            h.insert(
                HeaderName::from_static("grpc-retry-pushback-ms"),
                HeaderValue::from(ms),
            );
        }
        response
    }
}

/// `grpc-message` encoding: bytes outside printable ASCII, and `%`, as `%XX`.
fn grpc_percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
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

/// Writes `RateLimit-Policy: "<policy>";q=<burst>;w=<window>` and
/// `RateLimit: "<policy>";r=<remaining>;t=<seconds>` for `decision`.
///
/// `t` is the retry-after of a denial, and for an allowed request the seconds until the bucket
/// is full again.
/// One refusing limit in a 429's `violations`.
fn violation(decision: &Decision, rule: Option<&str>) -> serde_json::Value {
    serde_json::json!({
        "rule": rule.unwrap_or("default"),
        "retryAfter": decision.retry_after_secs(),
    })
}

pub(crate) fn write_rate_limit_headers(headers: &mut HeaderMap, decision: &Decision, policy: &str) {
    write_all_rate_limit_headers(headers, &[(*decision, Some(policy.into()))]);
}

/// The IETF fields of several limits: one list item per limit in `RateLimit-Policy` and
/// `RateLimit` (draft -10 allows a list of policies).
pub(crate) fn write_all_rate_limit_headers(
    headers: &mut HeaderMap,
    limits: &[(Decision, Option<Arc<str>>)],
) {
    let mut policies = Vec::with_capacity(limits.len());
    let mut states = Vec::with_capacity(limits.len());
    for (decision, policy) in limits {
        if let Some((policy_item, state_item)) =
            rate_limit_items(decision, policy.as_deref().unwrap_or("default"))
        {
            policies.push(policy_item);
            states.push(state_item);
        }
    }
    if policies.is_empty() {
        return;
    }
    if let Ok(value) = HeaderValue::try_from(policies.join(", ")) {
        headers.insert(HeaderName::from_static("ratelimit-policy"), value);
    }
    if let Ok(value) = HeaderValue::try_from(states.join(", ")) {
        headers.insert(HeaderName::from_static("ratelimit"), value);
    }
}

/// One limit's items of `RateLimit-Policy` and `RateLimit`.
fn rate_limit_items(decision: &Decision, policy: &str) -> Option<(String, String)> {
    let rule = decision.rule()?;
    let name: String = policy
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\')
        .collect();
    let window = rule.window_secs();
    let reset = if decision.is_allowed() {
        // Exact at any rate (ten an hour too), rounded up to the second.
        let missing = rule.burst_rate().saturating_sub(decision.remaining());
        match rule.refill_rate().time_for(missing) {
            _ if missing == 0 => 0,
            Some(fill) => crate::clock::ceil_secs(fill),
            None => u64::from(u32::MAX),
        }
    } else {
        decision.retry_after_secs()
    };
    let policy_value = format!("\"{name}\";q={};w={window}", rule.burst_rate());
    let limit_value = format!("\"{name}\";r={};t={reset}", decision.remaining());
    Some((policy_value, limit_value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::{EmbeddedSource, Limiter, RefillRate, RuleSet, Target};

    fn decision(allowed: bool) -> Decision {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // One clock for both, standing still: the retry-after is exactly the refill time.
        let clock = crate::ManualClock::new();
        let limiter =
            Limiter::builder(EmbeddedSource::new(RuleSet::demo()).with_clock(clock.clone()))
                .clock(clock)
                .build();
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

    #[test]
    fn a_failed_source_is_a_503_with_its_retry_after() {
        let slow = Error::new(ErrorKind::Timeout, "slow");
        assert_eq!(
            Rejection::from_error(&slow),
            Rejection::Unavailable {
                kind: ErrorKind::Timeout,
                retry_after_secs: 1
            }
        );
        let busy = Error::new(ErrorKind::Unavailable, "busy")
            .with_retry_after(std::time::Duration::from_secs(7));
        assert_eq!(
            Rejection::from_error(&busy)
                .to_response(RateLimitHeaders::Off)
                .headers()["retry-after"],
            "7"
        );
    }

    #[test]
    fn ietf_fields_are_exact_at_slow_rates() {
        use crate::web::fuzzing::rate_limit_headers;
        let ten_an_hour: RefillRate = "10/hour".parse().unwrap();
        let allowed = rate_limit_headers("emails", 10, ten_an_hour, 9, true, Duration::ZERO);
        assert_eq!(allowed["ratelimit-policy"], "\"emails\";q=10;w=3600");
        // One token short of full: one token's time, 6 minutes (this was 0 at rates under
        // a thousandth of a token per second).
        assert_eq!(allowed["ratelimit"], "\"emails\";r=9;t=360");
        let full = rate_limit_headers("emails", 10, ten_an_hour, 10, true, Duration::ZERO);
        assert_eq!(full["ratelimit"], "\"emails\";r=10;t=0");
        let never = rate_limit_headers("x", 5, RefillRate::ZERO, 4, true, Duration::ZERO);
        assert_eq!(never["ratelimit"], format!("\"x\";r=4;t={}", u32::MAX));
        let denied = rate_limit_headers(
            "a\"b c",
            10,
            ten_an_hour,
            0,
            false,
            Duration::from_millis(1),
        );
        assert_eq!(denied["ratelimit"], "\"abc\";r=0;t=1");
    }

    #[test]
    fn grpc_requests_get_grpc_statuses() {
        let denied = decision(false);
        let answer =
            Rejection::from_decision(denied, Some("rule_send_email".into())).to_grpc_response();
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(answer.headers()["content-type"], "application/grpc");
        assert_eq!(answer.headers()["grpc-status"], "8");
        assert_eq!(answer.headers()["retry-after"], "1");
        // From the denial cache, which ends 1 ms before the source's next token (so that the
        // next request asks it rather than be denied a token that exists).
        assert_eq!(answer.headers()["grpc-retry-pushback-ms"], "999");
        assert_eq!(
            answer.headers()["grpc-message"],
            "rate limited by rule rule_send_email; retry after 1 s"
        );
        assert!(answer.body().is_empty());
        let outage = Rejection::Unavailable {
            kind: ErrorKind::Timeout,
            retry_after_secs: 2,
        }
        .to_grpc_response();
        assert_eq!(outage.headers()["grpc-status"], "14");
        assert_eq!(outage.headers()["grpc-retry-pushback-ms"], "2000");
        let missing = Rejection::MissingIdentifier.to_grpc_response();
        assert_eq!(missing.headers()["grpc-status"], "3");
        assert!(missing.headers().get("retry-after").is_none());
        assert_eq!(grpc_percent_encode("100% é"), "100%25 %C3%A9");
    }

    #[test]
    fn a_400_names_the_problem() {
        let answer = Rejection::InvalidIdentifier(InvalidIdentifier::TooLong)
            .to_response(RateLimitHeaders::Off);
        assert_eq!(answer.status(), 400);
        assert_eq!(answer.headers()["content-type"], "application/json");
        let missing = Rejection::MissingIdentifier.to_response(RateLimitHeaders::Off);
        let body: serde_json::Value = serde_json::from_slice(missing.body()).unwrap();
        assert_eq!(body["error"], "missing_user_identifier");
        assert!(missing.headers().get("retry-after").is_none());
    }
}
