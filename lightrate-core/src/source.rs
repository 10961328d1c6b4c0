//! The [`TokenSource`] trait: where tokens come from.

use std::future::Future;
use std::sync::Arc;

use crate::{ConsumeRequest, ConsumeTokensResponse, Error};

/// Something that can grant tokens: the LightRate API ([`LightRateClient`](crate::LightRateClient)),
/// the in-process [`EmbeddedSource`](crate::EmbeddedSource), or your own.
///
/// One call consumes up to `request.tokens_requested` tokens of `request.user_identifier` for
/// `request.target` and says how many were granted (possibly fewer, possibly none) under which
/// rule. Being rate limited is an answer (`tokens_consumed == 0`), not an error; `Err` means the
/// source could not answer.
///
/// Implement it with an `async fn`:
///
/// ```
/// use lightrate_core::{ConsumeRequest, ConsumeTokensResponse, Error, RefillRate, Rule, TokenSource};
///
/// /// Grants everything, under one rule.
/// struct Unlimited;
///
/// impl TokenSource for Unlimited {
///     async fn consume_tokens(&self, request: ConsumeRequest<'_>) -> Result<ConsumeTokensResponse, Error> {
///         Ok(ConsumeTokensResponse {
///             tokens_remaining: u64::MAX,
///             tokens_consumed: request.tokens_requested,
///             throttles: 0,
///             rule: Rule {
///                 id: "unlimited".into(),
///                 name: "Unlimited".into(),
///                 refill_rate: RefillRate::per_second(1_000_000),
///                 burst_rate: u64::MAX,
///                 is_default: true,
///                 matcher: None,
///                 http_method: None,
///             },
///             retry_after_ms: None,
///         })
///     }
/// }
/// ```
pub trait TokenSource: Send + Sync + 'static {
    /// Consumes up to `request.tokens_requested` tokens and says what was granted.
    fn consume_tokens(
        &self,
        request: ConsumeRequest<'_>,
    ) -> impl Future<Output = Result<ConsumeTokensResponse, Error>> + Send;
}

impl<T: TokenSource> TokenSource for Arc<T> {
    fn consume_tokens(
        &self,
        request: ConsumeRequest<'_>,
    ) -> impl Future<Output = Result<ConsumeTokensResponse, Error>> + Send {
        (**self).consume_tokens(request)
    }
}

/// A boxed future of a source's answer.
pub(crate) type BoxConsume<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<ConsumeTokensResponse, Error>> + Send + 'a>>;

/// The object-safe form of [`TokenSource`], so that a limiter can hold any source behind one
/// pointer. Implemented for every `TokenSource`; only a call to the source pays for the box.
pub(crate) trait DynTokenSource: Send + Sync + 'static {
    fn consume_tokens_boxed<'a>(&'a self, request: ConsumeRequest<'a>) -> BoxConsume<'a>;
}

impl<T: TokenSource> DynTokenSource for T {
    fn consume_tokens_boxed<'a>(&'a self, request: ConsumeRequest<'a>) -> BoxConsume<'a> {
        Box::pin(self.consume_tokens(request))
    }
}
