//! [`LightRateClient`]: the client of the hosted LightRate token API (or of any server that
//! speaks its protocol, such as `lightrate-server`).

use std::fmt;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::header::{
    HeaderMap, HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER,
};
use http::StatusCode;

use crate::protocol::{ConsumeTokensBody, CONSUME_PATH};
use crate::{
    BucketStatus, ConsumeRequest, ConsumeTokensResponse, Decision, DecisionSource, Error,
    ErrorKind, Limiter, OnUnavailable, Target, TokenSource,
};

/// The hosted API's base URL.
pub const DEFAULT_BASE_URL: &str = "https://api.lightrate.lightbournetechnologies.ca";
/// The default deadline for one API call, retries included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The default number of retries after a first attempt that may be retried.
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 3;
/// The default number of tokens leased per API call by local buckets.
pub const DEFAULT_LOCAL_BUCKET_SIZE: u64 = 5;
/// The largest answer body read from the API; a larger one is a decode error.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// First backoff step; doubled per retry, with full jitter.
const BACKOFF_BASE: Duration = Duration::from_millis(50);
/// Largest backoff step.
const BACKOFF_CAP: Duration = Duration::from_secs(2);

/// The client of the LightRate token API.
///
/// Cheap to clone: clones share one connection pool. Construct it with [`new`](Self::new),
/// [`builder`](Self::builder) or [`from_env`](Self::from_env); an empty API key or application
/// id is an error at construction, not at the first request.
///
/// ```
/// use lightrate_core::{LightRateClient, Target};
/// use std::time::Duration;
///
/// let client = LightRateClient::builder("sk_live_0123456789abcdef", "app_1")
///     .base_url("http://127.0.0.1:8080")
///     .timeout(Duration::from_secs(2))
///     .build()
///     .unwrap();
/// // The key never shows: not in Debug, not in the configuration.
/// assert!(!format!("{client:?}").contains("0123456789"));
/// assert_eq!(client.get_configuration().api_key, "****cdef");
///
/// # async fn call(client: LightRateClient) -> Result<(), lightrate_core::Error> {
/// let answer = client.consume_tokens("user123", 1, Target::operation("send_email")).await?;
/// if answer.is_granted() {
///     // proceed
/// }
/// # Ok(()) }
/// ```
///
/// # Retries
///
/// A consume call is not idempotent: a request that reached the server may have been charged,
/// so retrying it could charge twice. The client therefore retries (up to `retry_attempts`
/// times, with exponential backoff and full jitter, never past the call's deadline) only when
/// the request certainly was not processed: the connection failed before the request was sent,
/// or the server answered 429, 502, 503 or 504 (honouring its `Retry-After`). A request that
/// timed out, or whose connection broke after it was sent, is not retried: the server may have
/// charged it, and the caller's outage policy is a better judge than a blind second charge.
#[derive(Clone)]
pub struct LightRateClient {
    api: Arc<Api>,
    /// The local buckets of `consume_local_bucket_token`, made on first use. The limiter holds
    /// the `Api`, not the client, so there is no reference cycle.
    local: Arc<OnceLock<Limiter>>,
}

/// The answer of [`LightRateClient::consume_local_bucket_token`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LocalBucketResponse {
    /// Whether a token was granted.
    pub success: bool,
    /// Whether it came from a local bucket, without an API call.
    pub used_local_token: bool,
    /// The (user, rule) bucket after this request, when there is one.
    pub bucket_status: Option<BucketStatus>,
    /// The full decision (retry-after, rule, where it came from).
    pub decision: Decision,
}

/// The HTTP side of the client, shared by its clones.
pub(crate) struct Api {
    http: reqwest::Client,
    endpoint: reqwest::Url,
    api_key: String,
    application_id: String,
    timeout: Duration,
    retry_attempts: u32,
    default_local_bucket_size: u64,
    base_url: String,
    user_agent: String,
}

/// A client's settings, with the API key masked: what
/// [`LightRateClient::get_configuration`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Configuration {
    /// The API key, masked: `****` and, for keys of 16 characters or more, the last four.
    pub api_key: String,
    /// The application id.
    pub application_id: String,
    /// The API base URL.
    pub base_url: String,
    /// The deadline of one API call, retries included.
    pub timeout: Duration,
    /// How many times a call that certainly was not processed is retried.
    pub retry_attempts: u32,
    /// Tokens leased per API call by local buckets.
    pub default_local_bucket_size: u64,
    /// The `User-Agent` header.
    pub user_agent: String,
}

/// Builds a [`LightRateClient`]. See [`LightRateClient::builder`].
#[derive(Clone)]
pub struct ClientBuilder {
    api_key: String,
    application_id: String,
    base_url: String,
    timeout: Duration,
    retry_attempts: u32,
    default_local_bucket_size: u64,
    user_agent: String,
    send_x_api_key: bool,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("api_key", &mask(&self.api_key))
            .field("application_id", &self.application_id)
            .field("base_url", &self.base_url)
            .field("timeout", &self.timeout)
            .field("retry_attempts", &self.retry_attempts)
            .field("default_local_bucket_size", &self.default_local_bucket_size)
            .field("user_agent", &self.user_agent)
            .field("send_x_api_key", &self.send_x_api_key)
            .finish()
    }
}

impl ClientBuilder {
    fn new(api_key: String, application_id: String) -> Self {
        ClientBuilder {
            api_key,
            application_id,
            base_url: DEFAULT_BASE_URL.into(),
            timeout: DEFAULT_TIMEOUT,
            retry_attempts: DEFAULT_RETRY_ATTEMPTS,
            default_local_bucket_size: DEFAULT_LOCAL_BUCKET_SIZE,
            user_agent: concat!("lightrate-rust/", env!("CARGO_PKG_VERSION")).into(),
            send_x_api_key: true,
        }
    }

    /// A builder from the environment: `LIGHTRATE_API_KEY` and `LIGHTRATE_APPLICATION_ID`
    /// (required), `LIGHTRATE_BASE_URL`, `LIGHTRATE_TIMEOUT_MS` and
    /// `LIGHTRATE_LOCAL_BUCKET_SIZE` (optional).
    pub fn from_env() -> Result<Self, Error> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub(crate) fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let required = |name: &str| {
            var(name)
                .ok_or_else(|| Error::new(ErrorKind::Configuration, format!("{name} is not set")))
        };
        let mut builder = ClientBuilder::new(
            required("LIGHTRATE_API_KEY")?,
            required("LIGHTRATE_APPLICATION_ID")?,
        );
        if let Some(url) = var("LIGHTRATE_BASE_URL").filter(|v| !v.is_empty()) {
            builder = builder.base_url(url);
        }
        if let Some(ms) = var("LIGHTRATE_TIMEOUT_MS").filter(|v| !v.is_empty()) {
            builder = builder.timeout(Duration::from_millis(parse_env(
                "LIGHTRATE_TIMEOUT_MS",
                &ms,
            )?));
        }
        if let Some(size) = var("LIGHTRATE_LOCAL_BUCKET_SIZE").filter(|v| !v.is_empty()) {
            builder =
                builder.default_local_bucket_size(parse_env("LIGHTRATE_LOCAL_BUCKET_SIZE", &size)?);
        }
        Ok(builder)
    }

    /// The API base: scheme, host, port and optional path prefix. The client appends
    /// `/api/v1/tokens/consume`. Default: the hosted API.
    pub fn base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = base_url.into();
        self
    }

    /// The deadline of one call, retries and backoff included. Default 30 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many times a call that certainly was not processed is retried. Default 3.
    pub fn retry_attempts(mut self, retry_attempts: u32) -> Self {
        self.retry_attempts = retry_attempts;
        self
    }

    /// Tokens leased per API call by local buckets. Default 5.
    pub fn default_local_bucket_size(mut self, size: u64) -> Self {
        self.default_local_bucket_size = size;
        self
    }

    /// The `User-Agent` header. Default `lightrate-rust/<version>`.
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = user_agent.into();
        self
    }

    /// Whether to send the key in `x-api-key` as well as in `Authorization: Bearer`.
    /// Default `true`: the API reference documents `x-api-key`, the SDKs send `Bearer`.
    pub fn send_x_api_key(mut self, send: bool) -> Self {
        self.send_x_api_key = send;
        self
    }

    /// Checks the settings and builds the client.
    ///
    /// Errors (kind [`ErrorKind::Configuration`]): an empty API key or application id, a key
    /// that cannot be a header value, a base URL that is not `http(s)://host[:port][/prefix]`,
    /// a zero timeout or bucket size.
    pub fn build(self) -> Result<LightRateClient, Error> {
        let config = |msg: &str| Error::new(ErrorKind::Configuration, msg);
        if self.api_key.trim().is_empty() {
            return Err(config("the API key is empty"));
        }
        if self.application_id.trim().is_empty() {
            return Err(config("the application id is empty"));
        }
        if self.timeout.is_zero() {
            return Err(config("the timeout must be greater than zero"));
        }
        if self.default_local_bucket_size == 0 {
            return Err(config("the local bucket size must be at least 1"));
        }
        let endpoint = endpoint(&self.base_url)?;

        let mut headers = HeaderMap::new();
        let mut bearer = HeaderValue::try_from(format!("Bearer {}", self.api_key))
            .map_err(|_| config("the API key contains characters not allowed in a header"))?;
        bearer.set_sensitive(true);
        headers.insert(AUTHORIZATION, bearer);
        if self.send_x_api_key {
            let mut key = HeaderValue::try_from(self.api_key.as_str())
                .map_err(|_| config("the API key contains characters not allowed in a header"))?;
            key.set_sensitive(true);
            headers.insert(HeaderName::from_static("x-api-key"), key);
        }
        let app = HeaderValue::try_from(self.application_id.as_str()).map_err(|_| {
            config("the application id contains characters not allowed in a header")
        })?;
        headers.insert(HeaderName::from_static("x-application-id"), app);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));

        let http = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(self.user_agent.clone())
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| config("the HTTP client cannot be built").with_source(e))?;

        Ok(LightRateClient {
            local: Arc::new(OnceLock::new()),
            api: Arc::new(Api {
                http,
                endpoint,
                api_key: self.api_key,
                application_id: self.application_id,
                timeout: self.timeout,
                retry_attempts: self.retry_attempts,
                default_local_bucket_size: self.default_local_bucket_size,
                base_url: self.base_url,
                user_agent: self.user_agent,
            }),
        })
    }
}

fn parse_env<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, Error> {
    value.trim().parse().map_err(|_| {
        Error::new(
            ErrorKind::Configuration,
            format!("{name} must be a non-negative integer, not {value:?}"),
        )
    })
}

fn endpoint(base_url: &str) -> Result<reqwest::Url, Error> {
    let bad = |why: &str| {
        Error::new(
            ErrorKind::Configuration,
            format!("invalid base URL {base_url:?}: {why}"),
        )
    };
    let url = reqwest::Url::parse(base_url).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("a base URL has no query or fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("credentials go in the API key, not the URL"));
    }
    let prefix = url.path().trim_end_matches('/');
    let mut with_path = url.clone();
    with_path.set_path(&format!("{prefix}{CONSUME_PATH}"));
    Ok(with_path)
}

/// Masks an API key: `****` plus, for keys of 16 characters or more, the last four.
fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() >= 16 {
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("****{tail}")
    } else {
        "****".into()
    }
}

impl LightRateClient {
    /// A client of the hosted API with default settings.
    ///
    /// Errors (kind [`ErrorKind::Configuration`]) when the key or application id is empty.
    pub fn new(
        api_key: impl Into<String>,
        application_id: impl Into<String>,
    ) -> Result<Self, Error> {
        Self::builder(api_key, application_id).build()
    }

    /// A builder, to set the base URL, timeout, retries, bucket size or user agent.
    pub fn builder(api_key: impl Into<String>, application_id: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(api_key.into(), application_id.into())
    }

    /// A client configured from the environment; see [`ClientBuilder::from_env`].
    pub fn from_env() -> Result<Self, Error> {
        ClientBuilder::from_env()?.build()
    }

    /// The client's settings, with the API key masked.
    pub fn get_configuration(&self) -> Configuration {
        let api = &self.api;
        Configuration {
            api_key: mask(&api.api_key),
            application_id: api.application_id.clone(),
            base_url: api.base_url.clone(),
            timeout: api.timeout,
            retry_attempts: api.retry_attempts,
            default_local_bucket_size: api.default_local_bucket_size,
            user_agent: api.user_agent.clone(),
        }
    }

    /// Consumes `tokens_requested` tokens of `user_identifier` for `target`: one
    /// `POST /api/v1/tokens/consume` (plus retries where they cannot charge twice).
    ///
    /// Being rate limited is `Ok` with `tokens_consumed == 0`.
    pub async fn consume_tokens(
        &self,
        user_identifier: &str,
        tokens_requested: u64,
        target: Target<'_>,
    ) -> Result<ConsumeTokensResponse, Error> {
        self.api
            .consume(ConsumeRequest::new(
                user_identifier,
                &target,
                tokens_requested,
            ))
            .await
    }
}

impl LightRateClient {
    /// Takes one token of `user_identifier` for `target` from a local bucket, leasing
    /// `default_local_bucket_size` tokens per API call: the SDKs' method, with single flight, a
    /// denial cache, refill-ahead, default-rule leasing and bounded memory (see
    /// [`Limiter`]). Errors when the API cannot answer, as the SDKs do; for an outage policy,
    /// use a [`Limiter`] over the client instead.
    ///
    /// ```
    /// # use lightrate_core::{LightRateClient, Target};
    /// # async fn call(client: LightRateClient) -> Result<(), lightrate_core::Error> {
    /// let answer = client
    ///     .consume_local_bucket_token("user123", Target::operation("send_email"))
    ///     .await?;
    /// if answer.success {
    ///     // proceed; answer.used_local_token says whether the API was called
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn consume_local_bucket_token(
        &self,
        user_identifier: &str,
        target: Target<'_>,
    ) -> Result<LocalBucketResponse, Error> {
        let limiter = self.local_buckets();
        let decision = limiter.check(user_identifier, &target).await?;
        Ok(LocalBucketResponse {
            success: decision.is_allowed(),
            used_local_token: decision.source() == DecisionSource::LocalBucket,
            bucket_status: decision
                .rule()
                .and_then(|rule| limiter.bucket_status(user_identifier, &rule)),
            decision,
        })
    }

    /// Every live local bucket of [`consume_local_bucket_token`](Self::consume_local_bucket_token).
    pub fn get_all_bucket_statuses(&self) -> Vec<BucketStatus> {
        self.local
            .get()
            .map(Limiter::bucket_statuses)
            .unwrap_or_default()
    }

    /// Empties every local bucket (their tokens are lost).
    pub fn reset_all_buckets(&self) {
        if let Some(limiter) = self.local.get() {
            limiter.reset();
        }
    }

    fn local_buckets(&self) -> &Limiter {
        self.local.get_or_init(|| {
            Limiter::builder(self.api.clone())
                .lease_size(self.api.default_local_bucket_size)
                .on_unavailable(OnUnavailable::Error)
                .build()
        })
    }
}

impl fmt::Debug for LightRateClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LightRateClient")
            .field("configuration", &self.get_configuration())
            .finish()
    }
}

impl fmt::Debug for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Api")
            .field("endpoint", &self.endpoint.as_str())
            .field("application_id", &self.application_id)
            .finish_non_exhaustive()
    }
}

impl TokenSource for LightRateClient {
    fn consume_tokens(
        &self,
        request: ConsumeRequest<'_>,
    ) -> impl Future<Output = Result<ConsumeTokensResponse, Error>> + Send {
        self.api.consume(request)
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
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn empty_key_or_application_is_a_configuration_error_at_construction() {
        for (key, app) in [("", "app"), ("  ", "app"), ("key", ""), ("key", " ")] {
            let e = LightRateClient::new(key, app).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Configuration);
        }
    }

    #[test]
    fn defaults_match_the_sdks() {
        let c = LightRateClient::new("k", "app")
            .unwrap()
            .get_configuration();
        assert_eq!(c.base_url, DEFAULT_BASE_URL);
        assert_eq!(c.timeout, Duration::from_secs(30));
        assert_eq!(c.retry_attempts, 3);
        assert_eq!(c.default_local_bucket_size, 5);
        assert_eq!(
            c.user_agent,
            format!("lightrate-rust/{}", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn key_is_masked_everywhere() {
        let key = "sk_live_SECRET_0123456789";
        let builder = LightRateClient::builder(key, "app");
        assert!(!format!("{builder:?}").contains("SECRET"));
        let client = builder.build().unwrap();
        let debug = format!("{client:?} {:?}", client.get_configuration());
        assert!(!debug.contains("SECRET"), "{debug}");
        assert_eq!(client.get_configuration().api_key, "****6789");
        assert_eq!(mask("short"), "****");
    }

    #[test]
    fn endpoint_appends_the_consume_path() {
        assert_eq!(
            endpoint("http://127.0.0.1:8080").unwrap().as_str(),
            "http://127.0.0.1:8080/api/v1/tokens/consume"
        );
        assert_eq!(
            endpoint("https://example.com/prefix/").unwrap().as_str(),
            "https://example.com/prefix/api/v1/tokens/consume"
        );
        for bad in ["ftp://x", "not a url", "http://h/?q=1", "http://user:pw@h"] {
            assert_eq!(
                endpoint(bad).unwrap_err().kind(),
                ErrorKind::Configuration,
                "{bad}"
            );
        }
    }

    #[test]
    fn from_env_reads_every_variable() {
        let b = ClientBuilder::from_lookup(lookup(&[
            ("LIGHTRATE_API_KEY", "k"),
            ("LIGHTRATE_APPLICATION_ID", "app"),
            ("LIGHTRATE_BASE_URL", "http://127.0.0.1:1"),
            ("LIGHTRATE_TIMEOUT_MS", "250"),
            ("LIGHTRATE_LOCAL_BUCKET_SIZE", "9"),
        ]))
        .unwrap();
        let c = b.build().unwrap().get_configuration();
        assert_eq!(c.base_url, "http://127.0.0.1:1");
        assert_eq!(c.timeout, Duration::from_millis(250));
        assert_eq!(c.default_local_bucket_size, 9);

        let missing =
            ClientBuilder::from_lookup(lookup(&[("LIGHTRATE_API_KEY", "k")])).unwrap_err();
        assert!(missing.message().contains("LIGHTRATE_APPLICATION_ID"));
        let bad = ClientBuilder::from_lookup(lookup(&[
            ("LIGHTRATE_API_KEY", "k"),
            ("LIGHTRATE_APPLICATION_ID", "a"),
            ("LIGHTRATE_TIMEOUT_MS", "soon"),
        ]))
        .unwrap_err();
        assert_eq!(bad.kind(), ErrorKind::Configuration);
    }

    #[test]
    fn zero_timeout_or_bucket_is_rejected() {
        assert!(LightRateClient::builder("k", "a")
            .timeout(Duration::ZERO)
            .build()
            .is_err());
        assert!(LightRateClient::builder("k", "a")
            .default_local_bucket_size(0)
            .build()
            .is_err());
        assert!(LightRateClient::builder("k\n", "a").build().is_err());
    }

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
