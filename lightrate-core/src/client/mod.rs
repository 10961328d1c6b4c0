//! [`LightRateClient`]: the client of the hosted LightRate token API (or of any server that
//! speaks its protocol, such as `lightrate-server`).
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | the client, its settings, the consume call |
//! | `builder.rs` | [`ClientBuilder`]: settings, the environment, validation |
//! | `transport.rs` | the HTTP side: one call, its retries and deadline, reading answers |
//! | `local.rs` | the SDKs' local-bucket API over a [`Limiter`](crate::Limiter) |

mod builder;
mod local;
mod transport;

use std::fmt;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub use builder::{
    ClientBuilder, DEFAULT_BASE_URL, DEFAULT_LOCAL_BUCKET_SIZE, DEFAULT_RETRY_ATTEMPTS,
    DEFAULT_TIMEOUT,
};
pub use local::LocalBucketResponse;

use self::builder::mask;
use self::transport::Api;
use crate::{ConsumeRequest, ConsumeTokensResponse, Error, Limiter, Target, TokenSource};

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
    api: Arc<Api>,
    /// The local buckets of `consume_local_bucket_token`, made on first use. The limiter holds
    /// the `Api`, not the client, so there is no reference cycle.
    local: Arc<OnceLock<Limiter>>,
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
