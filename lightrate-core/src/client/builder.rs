//! [`LightRateClient`] and [`ClientBuilder`]: the client, its settings, and how it is built
//! (checked once, at construction).

use std::fmt;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};

use super::transport::Api;
use crate::protocol::CONSUME_PATH;
use crate::{
    ConsumeRequest, ConsumeTokensResponse, Error, ErrorKind, Limiter, Target, TokenSource,
    DEFAULT_LEASE_SIZE,
};

/// The hosted API's base URL.
pub const DEFAULT_BASE_URL: &str = "https://api.lightrate.lightbournetechnologies.ca";
/// The default deadline for one API call, retries included.
pub const DEFAULT_API_TIMEOUT: Duration = Duration::from_secs(30);
/// The default number of retries after a first attempt that may be retried.
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 3;

/// The client of the LightRate token API.
///
/// Cheap to clone: clones share one connection pool. Construct it with [`new`](Self::new),
/// [`builder`](Self::builder) or [`from_env`](Self::from_env); an empty API key or application
/// id is an error at construction, not at the first request.
///
/// ```
/// use lightrate::{LightRateClient, Target};
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
/// # async fn call(client: LightRateClient) -> Result<(), lightrate::Error> {
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
    pub(super) api: Arc<Api>,
    /// The local buckets of `consume_local_bucket_token`, made on first use. The limiter holds
    /// the `Api`, not the client, so there is no reference cycle.
    pub(super) local: Arc<OnceLock<Limiter>>,
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
    /// The most tokens one API call of the local buckets may lease
    /// ([`LimiterBuilder::lease_size`](crate::LimiterBuilder::lease_size)).
    pub lease_size: u64,
    /// The `User-Agent` header.
    pub user_agent: String,
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
            lease_size: api.lease_size,
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

impl fmt::Debug for LightRateClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LightRateClient")
            .field("configuration", &self.get_configuration())
            .finish()
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

/// Builds a [`LightRateClient`]. See [`LightRateClient::builder`].
#[derive(Clone)]
pub struct ClientBuilder {
    api_key: String,
    application_id: String,
    base_url: String,
    timeout: Duration,
    retry_attempts: u32,
    lease_size: u64,
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
            .field("lease_size", &self.lease_size)
            .field("user_agent", &self.user_agent)
            .field("send_x_api_key", &self.send_x_api_key)
            .finish()
    }
}

/// Keys shorter than this are warned about when a client is built.
const SHORT_KEY_BYTES: usize = 16;

impl ClientBuilder {
    pub(super) fn new(api_key: String, application_id: String) -> Self {
        ClientBuilder {
            api_key,
            application_id,
            base_url: DEFAULT_BASE_URL.into(),
            timeout: DEFAULT_API_TIMEOUT,
            retry_attempts: DEFAULT_RETRY_ATTEMPTS,
            lease_size: DEFAULT_LEASE_SIZE,
            user_agent: concat!("lightrate-rust/", env!("CARGO_PKG_VERSION")).into(),
            send_x_api_key: true,
        }
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

    /// The most tokens one API call of
    /// [`consume_local_bucket_token`](LightRateClient::consume_local_bucket_token) may lease
    /// (the SDKs' `default_local_bucket_size`, there the size of every lease; here leases are
    /// sized by demand and scarcity up to it, as a [`Limiter`](crate::Limiter)'s are: the same
    /// knob, [`LimiterBuilder::lease_size`](crate::LimiterBuilder::lease_size), the same
    /// variable, `LIGHTRATE_LOCAL_BUCKET_SIZE`). Default
    /// [`DEFAULT_LEASE_SIZE`](crate::DEFAULT_LEASE_SIZE).
    pub fn lease_size(mut self, size: u64) -> Self {
        self.lease_size = size;
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
        if self.lease_size == 0 {
            return Err(config("the lease size must be at least 1"));
        }
        let endpoint = endpoint(&self.base_url)?;
        if self.api_key.len() < SHORT_KEY_BYTES {
            // Without the key or any part of it: its length is all that is said.
            tracing::warn!(
                target: "lightrate::client",
                key_bytes = self.api_key.len(),
                "the API key is shorter than {SHORT_KEY_BYTES} bytes: it is unlikely to be a \
                 real key, and a key under {} bytes is not scrubbed from error messages \
                 (it cannot be told from ordinary text)",
                crate::error::MIN_SCRUBBED_SECRET_BYTES
            );
        }

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
                lease_size: self.lease_size,
                base_url: self.base_url,
                user_agent: self.user_agent,
            }),
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

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
        assert_eq!(c.lease_size, crate::DEFAULT_LEASE_SIZE);
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
    fn zero_timeout_or_bucket_is_rejected() {
        assert!(LightRateClient::builder("k", "a")
            .timeout(Duration::ZERO)
            .build()
            .is_err());
        assert!(LightRateClient::builder("k", "a")
            .lease_size(0)
            .build()
            .is_err());
        assert!(LightRateClient::builder("k\n", "a").build().is_err());
    }
}
