//! The HTTP side of the client: one consume call, retried only where a retry cannot charge
//! twice, within its deadline; reading and checking the answer.

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use http::header::RETRY_AFTER;
use http::StatusCode;

use crate::protocol::ConsumeTokensBody;
use crate::{ConsumeRequest, ConsumeTokensResponse, Error, ErrorKind, TokenSource};

/// The largest answer body read from the API; a larger one is a decode error.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// First backoff step; doubled per retry, with full jitter.
const BACKOFF_BASE: Duration = Duration::from_millis(50);
/// Largest backoff step.
const BACKOFF_CAP: Duration = Duration::from_secs(2);

/// The HTTP side of the client, shared by its clones.
pub(crate) struct Api {
    pub(super) http: reqwest::Client,
    pub(super) endpoint: reqwest::Url,
    pub(super) api_key: String,
    pub(super) application_id: String,
    pub(super) timeout: Duration,
    pub(super) retry_attempts: u32,
    pub(super) lease_size: u64,
    pub(super) base_url: String,
    pub(super) user_agent: String,
}

impl fmt::Debug for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Api")
            .field("endpoint", &self.endpoint.as_str())
            .field("application_id", &self.application_id)
            .finish_non_exhaustive()
    }
}

impl TokenSource for Api {
    fn consume_tokens(
        &self,
        request: ConsumeRequest<'_>,
    ) -> impl Future<Output = Result<ConsumeTokensResponse, Error>> + Send {
        self.consume(request)
    }
}

/// The outcome of one attempt.
enum Attempt {
    Done(Result<ConsumeTokensResponse, Error>),
    /// Certainly not processed; may be retried after the given wait (`None`: backoff).
    Retry(Error, Option<Duration>),
}

impl Api {
    pub(crate) async fn consume(
        &self,
        request: ConsumeRequest<'_>,
    ) -> Result<ConsumeTokensResponse, Error> {
        // What no LightRate server would accept; the identifier's length is the server's to
        // judge (the hosted API's limit is its own).
        if request.user_identifier.trim().is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "the user identifier is blank",
            ));
        }
        if request.tokens_requested == 0 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "tokens_requested must be at least 1",
            ));
        }
        let body = serde_json::to_vec(&ConsumeTokensBody::new(&self.application_id, &request))
            .map_err(|e| {
                Error::new(ErrorKind::InvalidInput, "the request cannot be encoded").with_source(e)
            })?;

        let started = Instant::now();
        let deadline = started + self.timeout;
        let mut retries = 0u32;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(self.timed_out());
            }
            let attempt = match tokio::time::timeout(remaining, self.attempt(&body)).await {
                Ok(attempt) => attempt,
                Err(_) => Attempt::Done(Err(self.timed_out())),
            };
            match attempt {
                Attempt::Done(result) => {
                    match &result {
                        Ok(answer) => tracing::debug!(
                            target: "lightrate::client",
                            user = request.user_identifier,
                            %request.target,
                            requested = request.tokens_requested,
                            granted = answer.tokens_consumed,
                            rule = %answer.rule.id,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "consume"
                        ),
                        Err(e) => {
                            tracing::debug!(target: "lightrate::client", error = %e, "consume failed")
                        }
                    }
                    return result;
                }
                Attempt::Retry(error, wait) => {
                    if retries >= self.retry_attempts {
                        return Err(error);
                    }
                    let wait = wait.unwrap_or_else(|| backoff(retries));
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if wait >= remaining {
                        // Waiting would pass the deadline: the caller hears now.
                        return Err(error);
                    }
                    retries += 1;
                    tracing::debug!(
                        target: "lightrate::client",
                        error = %error,
                        retry = retries,
                        wait_ms = wait.as_millis() as u64,
                        "retrying"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    fn timed_out(&self) -> Error {
        Error::new(
            ErrorKind::Timeout,
            format!("no answer within {} ms", self.timeout.as_millis()),
        )
    }

    async fn attempt(&self, body: &[u8]) -> Attempt {
        let sent = self
            .http
            .post(self.endpoint.clone())
            .body(body.to_vec())
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(e) => {
                let error = Error::new(
                    if e.is_timeout() {
                        ErrorKind::Timeout
                    } else {
                        ErrorKind::Network
                    },
                    error_chain(&e),
                )
                .scrub(&self.api_key);
                // A failed connection never carried the request: safe to retry.
                return if e.is_connect() && !e.is_timeout() {
                    Attempt::Retry(error, None)
                } else {
                    Attempt::Done(Err(error))
                };
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = match read_limited(&mut response).await {
            Ok(body) => body,
            Err(e) => return Attempt::Done(Err(e.scrub(&self.api_key))),
        };
        if status.is_success() {
            let parsed = serde_json::from_slice::<ConsumeTokensResponse>(&body).map_err(|e| {
                Error::new(
                    ErrorKind::Decode,
                    format!(
                        "the answer is not a consume response ({e}): {}",
                        preview(&body)
                    ),
                )
                .scrub(&self.api_key)
            });
            return Attempt::Done(parsed);
        }
        let mut error =
            Error::from_status(status, server_message(status, &body)).scrub(&self.api_key);
        if let Some(wait) = retry_after {
            error = error.with_retry_after(wait);
        }
        if matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS
                | StatusCode::BAD_GATEWAY
                | StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::GATEWAY_TIMEOUT
        ) {
            Attempt::Retry(error, retry_after)
        } else {
            Attempt::Done(Err(error))
        }
    }
}

/// Exponential backoff with full jitter: uniform in `[0, min(cap, base·2^retry)]`.
fn backoff(retry: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32 << retry.min(16))
        .min(BACKOFF_CAP);
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(0..=nanos))
}

async fn read_limited(response: &mut reqwest::Response) -> Result<Vec<u8>, Error> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(Error::new(
                        ErrorKind::Decode,
                        format!("the answer is larger than {MAX_ANSWER_BYTES} bytes"),
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                let kind = if e.is_timeout() {
                    ErrorKind::Timeout
                } else {
                    ErrorKind::Network
                };
                return Err(Error::new(
                    kind,
                    format!("reading the answer: {}", error_chain(&e)),
                ));
            }
        }
    }
}

/// The server's message: the body's `message` or `error` field, else `HTTP <code> Error`.
fn server_message(status: StatusCode, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        message: Option<serde_json::Value>,
        error: Option<serde_json::Value>,
    }
    let text = |v: Option<serde_json::Value>| match v {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s),
        _ => None,
    };
    serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|b| text(b.message).or_else(|| text(b.error)))
        .unwrap_or_else(|| format!("HTTP {} Error", status.as_u16()))
}

/// The start of a body, for error messages.
fn preview(body: &[u8]) -> String {
    const MAX: usize = 120;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]);
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if body.len() > MAX {
        out.push('…');
    }
    if out.trim().is_empty() {
        "(empty body)".into()
    } else {
        out
    }
}

/// An error and its causes, `: `-separated (reqwest's own message is terse).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_messages_follow_the_sdks() {
        let s = StatusCode::BAD_REQUEST;
        assert_eq!(server_message(s, br#"{"message":"m","error":"e"}"#), "m");
        assert_eq!(server_message(s, br#"{"error":"e"}"#), "e");
        assert_eq!(server_message(s, b"<html>"), "HTTP 400 Error");
        assert_eq!(
            server_message(s, br#"{"error":{"nested":1}}"#),
            "HTTP 400 Error"
        );
    }

    #[test]
    fn backoff_is_bounded_and_grows() {
        for retry in 0..40 {
            let b = backoff(retry);
            assert!(b <= BACKOFF_CAP);
            assert!(b <= BACKOFF_BASE * 2u32.pow(retry.min(6)));
        }
    }

    #[test]
    fn preview_is_short_and_printable() {
        assert_eq!(preview(b""), "(empty body)");
        let long = vec![b'a'; 500];
        assert_eq!(preview(&long).chars().count(), 121);
        assert_eq!(preview(b"a\nb"), "a b");
    }
}
