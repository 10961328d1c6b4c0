//! Errors of token sources: the API client's taxonomy, shared by every source.
//!
//! A rate-limited request is not an error: it is a granted count of 0 (or a denied
//! [`Decision`](crate::Decision)). Errors are for a source that could not answer, or that
//! answered that the request or the configuration is wrong.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

/// What went wrong, in the vocabulary of the official SDKs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// HTTP 400: the server rejected the request as malformed.
    BadRequest,
    /// HTTP 401: the API key is missing or invalid.
    Unauthorized,
    /// HTTP 403: the API key may not do this.
    Forbidden,
    /// HTTP 404: the application (or endpoint) does not exist.
    NotFound,
    /// HTTP 422: the server understood the request but cannot process it.
    Unprocessable,
    /// HTTP 429: the API itself is rate limiting this client.
    TooManyRequests,
    /// HTTP 500: the server failed.
    Internal,
    /// HTTP 503: the server is unavailable.
    Unavailable,
    /// Any other non-2xx HTTP status.
    Api,
    /// The request could not be sent or its answer not received (connection refused, reset,
    /// DNS, TLS).
    Network,
    /// No answer before the deadline.
    Timeout,
    /// The client is misconfigured (empty API key or application id, bad base URL, ...).
    Configuration,
    /// The answer could not be read (not JSON, missing fields, too large).
    Decode,
    /// The request was rejected before it was sent (blank user identifier, zero tokens).
    InvalidInput,
}

impl ErrorKind {
    /// The kind for a non-2xx HTTP status.
    pub fn from_status(status: StatusCode) -> Self {
        match status.as_u16() {
            400 => ErrorKind::BadRequest,
            401 => ErrorKind::Unauthorized,
            403 => ErrorKind::Forbidden,
            404 => ErrorKind::NotFound,
            422 => ErrorKind::Unprocessable,
            429 => ErrorKind::TooManyRequests,
            500 => ErrorKind::Internal,
            503 => ErrorKind::Unavailable,
            _ => ErrorKind::Api,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad request",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not found",
            ErrorKind::Unprocessable => "unprocessable request",
            ErrorKind::TooManyRequests => "too many requests",
            ErrorKind::Internal => "internal server error",
            ErrorKind::Unavailable => "service unavailable",
            ErrorKind::Api => "API error",
            ErrorKind::Network => "network error",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Configuration => "configuration error",
            ErrorKind::Decode => "unreadable answer",
            ErrorKind::InvalidInput => "invalid input",
        }
    }
}

/// An error from a token source.
///
/// Cheap to clone (a request that many callers waited on hands each of them the same error).
/// Never contains the API key: the client scrubs it from anything a server echoes back.
///
/// ```
/// use lightrate_core::{Error, ErrorKind};
/// use http::StatusCode;
///
/// let e = Error::from_status(StatusCode::UNAUTHORIZED, "Invalid API key");
/// assert_eq!(e.kind(), ErrorKind::Unauthorized);
/// assert!(e.is_configuration());
/// assert!(!e.is_outage());
/// assert_eq!(e.to_string(), "LightRate unauthorized (HTTP 401): Invalid API key");
/// ```
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    status: Option<StatusCode>,
    message: String,
    retry_after: Option<Duration>,
    partial: bool,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    /// An error of `kind` with a message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            status: None,
            message: message.into(),
            retry_after: None,
            partial: false,
            source: None,
        }
    }

    /// The error for a non-2xx answer.
    pub fn from_status(status: StatusCode, message: impl Into<String>) -> Self {
        let mut e = Error::new(ErrorKind::from_status(status), message);
        e.status = Some(status);
        e
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// Attaches the server's `Retry-After`.
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }

    /// Marks this failure as one part of the source's (one Redis Cluster node's, say) while
    /// the rest of it answers: the request still follows the outage policy, but a limiter's
    /// circuit breaker does not count it, so that keys served elsewhere are not refused too.
    pub fn partial(mut self) -> Self {
        self.partial = true;
        self
    }

    /// Whether this failure concerns only part of the source (see [`partial`](Self::partial)).
    pub fn is_partial(&self) -> bool {
        self.partial
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The HTTP status of the answer, if there was one.
    pub fn status(&self) -> Option<StatusCode> {
        self.status
    }

    /// The server's message, or a description of the failure.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// How long the server asked us to wait, when it said (`Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Whether this is a configuration error: a bad or unauthorised API key, an unknown
    /// application, or a client that cannot be built. Retrying will not help; a person must.
    pub fn is_configuration(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Unauthorized
                | ErrorKind::Forbidden
                | ErrorKind::NotFound
                | ErrorKind::Configuration
        )
    }

    /// Whether the source could not answer: a timeout, a network failure, a 5xx or 429, or an
    /// unreadable answer. These are what an outage policy and a circuit breaker act on.
    pub fn is_outage(&self) -> bool {
        match self.kind {
            ErrorKind::Network
            | ErrorKind::Timeout
            | ErrorKind::Decode
            | ErrorKind::TooManyRequests
            | ErrorKind::Internal
            | ErrorKind::Unavailable => true,
            ErrorKind::Api => self.status.is_none_or(|s| s.is_server_error()),
            _ => false,
        }
    }

    /// Replaces every occurrence of `secret` in the message (servers sometimes echo what they
    /// were sent), when it is long enough to be a secret: [`MIN_SCRUBBED_SECRET_BYTES`] or
    /// more. A shorter one cannot be told from ordinary text (a key `k` would turn
    /// `/api/v1/tokens` into `/api/v1/to[redacted]ens`, and show which letters the key is);
    /// such keys are warned about when a client is built.
    #[cfg_attr(not(feature = "client"), allow(dead_code))]
    pub(crate) fn scrub(mut self, secret: &str) -> Self {
        if secret.len() >= MIN_SCRUBBED_SECRET_BYTES && self.message.contains(secret) {
            self.message = self.message.replace(secret, "[redacted]");
        }
        self
    }
}

/// The shortest secret scrubbed from error messages.
#[cfg_attr(not(feature = "client"), allow(dead_code))]
pub(crate) const MIN_SCRUBBED_SECRET_BYTES: usize = 8;

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind);
        if let Some(status) = self.status {
            d.field("status", &status.as_u16());
        }
        d.field("message", &self.message);
        if let Some(retry_after) = self.retry_after {
            d.field("retry_after", &retry_after);
        }
        if self.partial {
            d.field("partial", &true);
        }
        if let Some(source) = &self.source {
            d.field("source", &source.to_string());
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LightRate {}", self.kind.describe())?;
        if let Some(status) = self.status {
            write!(f, " (HTTP {})", status.as_u16())?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_the_sdk_taxonomy() {
        let cases = [
            (400, ErrorKind::BadRequest),
            (401, ErrorKind::Unauthorized),
            (403, ErrorKind::Forbidden),
            (404, ErrorKind::NotFound),
            (422, ErrorKind::Unprocessable),
            (429, ErrorKind::TooManyRequests),
            (500, ErrorKind::Internal),
            (503, ErrorKind::Unavailable),
            (502, ErrorKind::Api),
            (418, ErrorKind::Api),
        ];
        for (code, kind) in cases {
            let e = Error::from_status(StatusCode::from_u16(code).unwrap(), "m");
            assert_eq!(e.kind(), kind, "{code}");
            assert_eq!(e.status().map(|s| s.as_u16()), Some(code));
        }
    }

    #[test]
    fn outage_and_configuration_are_disjoint() {
        let outage = [
            Error::new(ErrorKind::Timeout, "t"),
            Error::new(ErrorKind::Network, "n"),
            Error::new(ErrorKind::Decode, "d"),
            Error::from_status(StatusCode::BAD_GATEWAY, "bg"),
            Error::from_status(StatusCode::SERVICE_UNAVAILABLE, "u"),
            Error::from_status(StatusCode::TOO_MANY_REQUESTS, "r"),
        ];
        for e in &outage {
            assert!(e.is_outage() && !e.is_configuration(), "{e}");
        }
        let config = [
            Error::from_status(StatusCode::UNAUTHORIZED, ""),
            Error::from_status(StatusCode::FORBIDDEN, ""),
            Error::from_status(StatusCode::NOT_FOUND, ""),
            Error::new(ErrorKind::Configuration, ""),
        ];
        for e in &config {
            assert!(e.is_configuration() && !e.is_outage(), "{e}");
        }
        let teapot = Error::from_status(StatusCode::IM_A_TEAPOT, "");
        assert!(!teapot.is_outage() && !teapot.is_configuration());
    }

    #[test]
    fn scrub_removes_secret_from_message() {
        let e = Error::from_status(StatusCode::UNAUTHORIZED, "bad key sk_live_123 given")
            .scrub("sk_live_123");
        assert_eq!(e.message(), "bad key [redacted] given");
        assert!(!format!("{e:?}{e}").contains("sk_live_123"));
        // Inside a longer token it is still the key.
        let e = Error::new(ErrorKind::Api, "key=sk_live_123abc").scrub("sk_live_123");
        assert_eq!(e.message(), "key=[redacted]abc");
    }

    #[test]
    fn short_keys_do_not_mangle_messages() {
        let text = "POST /api/v1/tokens/consume answered 401";
        for key in ["k", "to", "consume"] {
            assert_eq!(
                Error::new(ErrorKind::Api, text).scrub(key).message(),
                text,
                "{key}"
            );
        }
        let e = Error::new(ErrorKind::Api, "the key sk_12345 was refused").scrub("sk_12345");
        assert_eq!(e.message(), "the key [redacted] was refused");
    }
}
