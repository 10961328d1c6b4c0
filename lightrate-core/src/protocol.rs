//! The LightRate wire protocol: what `POST /api/v1/tokens/consume` sends and answers.
//!
//! The JSON shapes here are pinned by golden tests; see the project's `lightrate-protocol.md`
//! for where the official SDKs disagree and what lightrate chose.

use http::Method;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;

use crate::{Error, ErrorKind};

pub use crate::rate::RefillRate;

/// The path of the consume endpoint, appended to the API base URL.
pub const CONSUME_PATH: &str = "/api/v1/tokens/consume";

/// What a request for tokens is about: an operation, an HTTP route, or the application's
/// default rule.
///
/// One enum, so that a request naming both an operation and a path cannot be expressed.
///
/// ```
/// use lightrate_core::Target;
/// use http::Method;
///
/// let op = Target::operation("send_email");
/// let route = Target::path(Method::GET, "/items/42");
/// assert_eq!(op.to_string(), "operation send_email");
/// assert_eq!(route.to_string(), "GET /items/42");
/// assert_eq!(Target::Default.to_string(), "default rule");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target<'a> {
    /// A named operation (`"operation"` on the wire), matched against operation rules.
    Operation(Cow<'a, str>),
    /// An HTTP route (`"path"` and `"httpMethod"` on the wire), matched against path rules.
    Path {
        /// The request method, sent upper-case as given.
        method: Method,
        /// The path, as it will be matched by the server's path rules.
        path: Cow<'a, str>,
    },
    /// Neither: the application's default rule.
    Default,
}

impl<'a> Target<'a> {
    /// An operation target.
    pub fn operation(name: impl Into<Cow<'a, str>>) -> Self {
        Target::Operation(name.into())
    }

    /// A path target.
    pub fn path(method: Method, path: impl Into<Cow<'a, str>>) -> Self {
        Target::Path {
            method,
            path: path.into(),
        }
    }

    /// The same target, owning its strings.
    pub fn into_owned(self) -> Target<'static> {
        match self {
            Target::Operation(op) => Target::Operation(Cow::Owned(op.into_owned())),
            Target::Path { method, path } => Target::Path {
                method,
                path: Cow::Owned(path.into_owned()),
            },
            Target::Default => Target::Default,
        }
    }

    /// A target borrowing from this one (no allocation).
    pub fn as_borrowed(&self) -> Target<'_> {
        match self {
            Target::Operation(op) => Target::Operation(Cow::Borrowed(op)),
            Target::Path { method, path } => Target::Path {
                method: method.clone(),
                path: Cow::Borrowed(path),
            },
            Target::Default => Target::Default,
        }
    }
}

impl fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Operation(op) => write!(f, "operation {op}"),
            Target::Path { method, path } => write!(f, "{method} {path}"),
            Target::Default => f.write_str("default rule"),
        }
    }
}

/// A request for tokens, as a [`TokenSource`](crate::TokenSource) receives it.
///
/// ```
/// use lightrate_core::{ConsumeRequest, Target};
///
/// let target = Target::operation("send_email");
/// let request = ConsumeRequest::new("user-1", &target, 5).with_default_bucket_match(1);
/// assert_eq!(request.tokens_requested, 5);
/// assert_eq!(request.tokens_requested_for_default_bucket_match, Some(1));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumeRequest<'a> {
    /// Whose tokens: the user (or client, or IP address) being limited.
    pub user_identifier: &'a str,
    /// What the tokens are for.
    pub target: &'a Target<'a>,
    /// How many tokens to take. At least 1.
    pub tokens_requested: u64,
    /// When the target resolves to the application's default rule, charge this many tokens
    /// instead of `tokens_requested` (the wire's `tokensRequestedForDefaultBucketMatch`).
    pub tokens_requested_for_default_bucket_match: Option<u64>,
}

impl<'a> ConsumeRequest<'a> {
    /// A request for `tokens_requested` tokens of `user_identifier` for `target`.
    pub fn new(user_identifier: &'a str, target: &'a Target<'a>, tokens_requested: u64) -> Self {
        ConsumeRequest {
            user_identifier,
            target,
            tokens_requested,
            tokens_requested_for_default_bucket_match: None,
        }
    }

    /// Sets `tokensRequestedForDefaultBucketMatch`.
    pub fn with_default_bucket_match(mut self, tokens: u64) -> Self {
        self.tokens_requested_for_default_bucket_match = Some(tokens);
        self
    }

    /// Whether a source may serve this request: a user identifier that is not blank and at
    /// most [`MAX_USER_IDENTIFIER_BYTES`] bytes, at least one token, and, when given, at least
    /// one token for a default-rule match. Every source of this crate refuses the same
    /// requests with the same messages (an [`ErrorKind::InvalidInput`] error).
    ///
    /// ```
    /// use lightrate_core::{ConsumeRequest, Target};
    ///
    /// let target = Target::operation("send_email");
    /// assert!(ConsumeRequest::new("alice", &target, 1).validate().is_ok());
    /// let blank = ConsumeRequest::new(" ", &target, 1).validate().unwrap_err();
    /// assert_eq!(blank.message(), "userIdentifier must not be blank");
    /// assert!(ConsumeRequest::new("alice", &target, 0).validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<(), Error> {
        check_user_identifier(self.user_identifier)?;
        let invalid = |message: &str| Err(Error::new(ErrorKind::InvalidInput, message));
        if self.tokens_requested == 0 {
            return invalid("tokensRequested must be at least 1");
        }
        if self.tokens_requested_for_default_bucket_match == Some(0) {
            return invalid("tokensRequestedForDefaultBucketMatch must be at least 1");
        }
        Ok(())
    }
}

/// The most bytes of a user identifier a token source accepts (the embedded and Redis
/// sources, `lightrate-server`, the limiter). The web adapters hold headers to a stricter
/// limit, [`web::MAX_REQUEST_IDENTIFIER_BYTES`](crate::web::MAX_REQUEST_IDENTIFIER_BYTES).
pub const MAX_USER_IDENTIFIER_BYTES: usize = 1024;

/// Whether `user` is an identifier a source accepts: not blank, at most
/// [`MAX_USER_IDENTIFIER_BYTES`] bytes (an [`ErrorKind::InvalidInput`] error saying which).
pub fn check_user_identifier(user: &str) -> Result<(), Error> {
    if user.trim().is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "userIdentifier must not be blank",
        ));
    }
    if user.len() > MAX_USER_IDENTIFIER_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("userIdentifier is longer than {MAX_USER_IDENTIFIER_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// The JSON body of `POST /api/v1/tokens/consume`, as the client sends it.
///
/// Absent fields are omitted, never `null`; `httpMethod` goes with `path`, never alone.
///
/// ```
/// use lightrate_core::{ConsumeRequest, Target};
/// use lightrate_core::protocol::ConsumeTokensBody;
///
/// let target = Target::operation("send_email");
/// let request = ConsumeRequest::new("u1", &target, 1);
/// let json = serde_json::to_string(&ConsumeTokensBody::new("app", &request)).unwrap();
/// assert_eq!(
///     json,
///     r#"{"applicationId":"app","userIdentifier":"u1","tokensRequested":1,"operation":"send_email"}"#
/// );
/// ```
#[derive(Clone, Copy, Debug)]
pub struct ConsumeTokensBody<'a> {
    application_id: &'a str,
    request: &'a ConsumeRequest<'a>,
}

impl<'a> ConsumeTokensBody<'a> {
    /// The body for `request` on behalf of `application_id`.
    pub fn new(application_id: &'a str, request: &'a ConsumeRequest<'a>) -> Self {
        ConsumeTokensBody {
            application_id,
            request,
        }
    }
}

impl Serialize for ConsumeTokensBody<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let r = self.request;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("applicationId", self.application_id)?;
        map.serialize_entry("userIdentifier", r.user_identifier)?;
        map.serialize_entry("tokensRequested", &r.tokens_requested)?;
        match r.target {
            Target::Operation(op) => map.serialize_entry("operation", op)?,
            Target::Path { method, path } => {
                map.serialize_entry("path", path)?;
                map.serialize_entry("httpMethod", method.as_str())?;
            }
            Target::Default => {}
        }
        if let Some(n) = r.tokens_requested_for_default_bucket_match {
            map.serialize_entry("tokensRequestedForDefaultBucketMatch", &n)?;
        }
        map.end()
    }
}

/// The answer to a consume request (HTTP 200, whether tokens were granted or not).
///
/// Unknown fields are ignored; a missing `throttles` is 0.
///
/// ```
/// use lightrate_core::ConsumeTokensResponse;
///
/// let answer: ConsumeTokensResponse = serde_json::from_str(r#"{
///     "tokensRemaining": 0, "tokensConsumed": 0,
///     "rule": {"id": "r1", "name": "Default", "refillRate": 1, "burstRate": 5,
///              "isDefault": true, "matcher": null, "httpMethod": null}
/// }"#).unwrap();
/// assert!(!answer.is_granted());
/// assert_eq!(answer.throttles, 0);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumeTokensResponse {
    /// Tokens left in the server's bucket after this request.
    pub tokens_remaining: u64,
    /// Tokens granted to this request: `0..=tokensRequested`. Zero means rate limited.
    pub tokens_consumed: u64,
    /// Undocumented by the API; 0 when absent. The embedded source sets it to 1 when the
    /// request was not granted in full.
    #[serde(default)]
    pub throttles: u64,
    /// The rule the request was charged to.
    pub rule: Rule,
    /// When fewer tokens were granted than requested, or none is left: milliseconds until the
    /// bucket holds one more whole token (rounded up). An extension of lightrate's own sources
    /// (`retryAfterMs` on the wire, absent when not sent): the hosted API does not send it, and
    /// clients then assume a whole token's time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ConsumeTokensResponse {
    /// Whether any token was granted.
    pub fn is_granted(&self) -> bool {
        self.tokens_consumed > 0
    }
}

/// A rate-limiting rule, as the server describes it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// The rule's identifier; buckets are per (application, rule, user).
    pub id: String,
    /// A human-readable name.
    #[serde(default)]
    pub name: String,
    /// Tokens added to a bucket per second.
    pub refill_rate: RefillRate,
    /// The bucket's capacity.
    pub burst_rate: u64,
    /// Whether this is the application's default rule (matches what no other rule matches).
    #[serde(default)]
    pub is_default: bool,
    /// The rule's pattern: an unanchored regular expression, or a literal when it does not
    /// compile. `None` for the default rule.
    #[serde(default)]
    pub matcher: Option<String>,
    /// For path rules, the HTTP method they apply to; `None` for operation rules.
    #[serde(default)]
    pub http_method: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(target: &Target<'_>, tokens: u64, default_match: Option<u64>) -> serde_json::Value {
        let mut request = ConsumeRequest::new("user123", target, tokens);
        request.tokens_requested_for_default_bucket_match = default_match;
        serde_json::to_value(ConsumeTokensBody::new("app_1", &request)).unwrap()
    }

    #[test]
    fn golden_operation_request() {
        assert_eq!(
            body(&Target::operation("send_email"), 1, None),
            json!({"applicationId": "app_1", "userIdentifier": "user123",
                   "tokensRequested": 1, "operation": "send_email"})
        );
    }

    #[test]
    fn golden_path_request() {
        assert_eq!(
            body(&Target::path(Method::POST, "/api/v1/emails/send"), 3, None),
            json!({"applicationId": "app_1", "userIdentifier": "user123", "tokensRequested": 3,
                   "path": "/api/v1/emails/send", "httpMethod": "POST"})
        );
    }

    #[test]
    fn golden_default_rule_request_has_neither_operation_nor_path() {
        assert_eq!(
            body(&Target::Default, 2, None),
            json!({"applicationId": "app_1", "userIdentifier": "user123", "tokensRequested": 2})
        );
    }

    #[test]
    fn golden_local_bucket_lease_request() {
        assert_eq!(
            body(&Target::operation("send_email"), 5, Some(1)),
            json!({"applicationId": "app_1", "userIdentifier": "user123", "tokensRequested": 5,
                   "operation": "send_email", "tokensRequestedForDefaultBucketMatch": 1})
        );
    }

    #[test]
    fn golden_request_field_order_and_no_nulls() {
        let target = Target::path(Method::GET, "/hello");
        let request = ConsumeRequest::new("u", &target, 5).with_default_bucket_match(1);
        let text = serde_json::to_string(&ConsumeTokensBody::new("a", &request)).unwrap();
        assert_eq!(
            text,
            r#"{"applicationId":"a","userIdentifier":"u","tokensRequested":5,"path":"/hello","httpMethod":"GET","tokensRequestedForDefaultBucketMatch":1}"#
        );
    }

    #[test]
    fn extension_methods_are_sent_as_given() {
        let method = Method::from_bytes(b"PURGE").unwrap();
        let v = body(&Target::path(method, "/cache"), 1, None);
        assert_eq!(v["httpMethod"], "PURGE");
    }

    #[test]
    fn parses_documented_granted_response() {
        let r: ConsumeTokensResponse = serde_json::from_value(json!({
            "tokensRemaining": 37, "tokensConsumed": 5, "throttles": 0,
            "rule": {"id": "rule_abc123", "name": "Send Email", "refillRate": 10, "burstRate": 100,
                     "isDefault": false, "matcher": "^send_email$", "httpMethod": null}
        }))
        .unwrap();
        assert!(r.is_granted());
        assert_eq!(r.tokens_remaining, 37);
        assert_eq!(r.tokens_consumed, 5);
        assert_eq!(
            r.rule,
            Rule {
                id: "rule_abc123".into(),
                name: "Send Email".into(),
                refill_rate: RefillRate::per_second(10),
                burst_rate: 100,
                is_default: false,
                matcher: Some("^send_email$".into()),
                http_method: None,
            }
        );
    }

    #[test]
    fn parses_partial_grant_and_denial() {
        let partial: ConsumeTokensResponse = serde_json::from_value(json!({
            "tokensRemaining": 0, "tokensConsumed": 2, "throttles": 1,
            "rule": {"id": "r", "name": "n", "refillRate": 1, "burstRate": 5, "isDefault": false,
                     "matcher": "^/hello", "httpMethod": "GET"}
        }))
        .unwrap();
        assert_eq!(partial.tokens_consumed, 2);
        assert_eq!(partial.throttles, 1);
        assert_eq!(partial.rule.http_method.as_deref(), Some("GET"));

        let denied: ConsumeTokensResponse = serde_json::from_value(json!({
            "tokensRemaining": 0, "tokensConsumed": 0,
            "rule": {"id": "r", "name": "n", "refillRate": 1, "burstRate": 5, "isDefault": false,
                     "matcher": "x", "httpMethod": null}
        }))
        .unwrap();
        assert!(!denied.is_granted());
    }

    #[test]
    fn parses_default_rule_with_null_matcher_and_tolerates_unknown_fields() {
        let r: ConsumeTokensResponse = serde_json::from_value(json!({
            "tokensRemaining": 4, "tokensConsumed": 1, "somethingNew": [1, 2],
            "rule": {"id": "d", "name": "Default", "refillRate": 0.5, "burstRate": 5,
                     "isDefault": true, "matcher": null, "httpMethod": null, "createdAt": "x"}
        }))
        .unwrap();
        assert!(r.rule.is_default);
        assert_eq!(r.rule.matcher, None);
        assert_eq!(
            r.rule.refill_rate,
            RefillRate::from_millitokens_per_second(500)
        );
    }

    #[test]
    fn rejects_unusable_numbers() {
        for bad in [json!(-1), json!("ten"), json!(null)] {
            let v = json!({"tokensRemaining": 0, "tokensConsumed": 0,
                "rule": {"id": "d", "refillRate": bad, "burstRate": 5}});
            assert!(serde_json::from_value::<ConsumeTokensResponse>(v).is_err());
        }
        let negative_consumed = json!({"tokensRemaining": 0, "tokensConsumed": -3,
            "rule": {"id": "d", "refillRate": 1, "burstRate": 5}});
        assert!(serde_json::from_value::<ConsumeTokensResponse>(negative_consumed).is_err());
    }

    #[test]
    fn response_round_trips_with_explicit_nulls() {
        let r = ConsumeTokensResponse {
            tokens_remaining: 1,
            tokens_consumed: 1,
            throttles: 0,
            rule: Rule {
                id: "d".into(),
                name: "Default".into(),
                refill_rate: RefillRate::from_millitokens_per_second(1500),
                burst_rate: 5,
                is_default: true,
                matcher: None,
                http_method: None,
            },
            retry_after_ms: None,
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["rule"]["matcher"], serde_json::Value::Null);
        assert_eq!(v["rule"]["refillRate"], json!(1.5));
        assert_eq!(
            serde_json::from_value::<ConsumeTokensResponse>(v).unwrap(),
            r
        );
    }
}
