//! A stateless token source for benchmarks: grants whatever is asked, under one rule, so that
//! what is measured is the limiter alone.

use lightrate_core::{ConsumeRequest, ConsumeTokensResponse, Error, RefillRate, Rule, TokenSource};

/// Grants everything asked for.
#[derive(Debug)]
pub(crate) struct Unlimited;

impl TokenSource for Unlimited {
    async fn consume_tokens(
        &self,
        request: ConsumeRequest<'_>,
    ) -> Result<ConsumeTokensResponse, Error> {
        Ok(ConsumeTokensResponse {
            tokens_remaining: 1 << 40,
            tokens_consumed: request.tokens_requested,
            throttles: 0,
            rule: Rule {
                id: "bench".into(),
                name: "Bench".into(),
                refill_rate: RefillRate::per_second(1 << 30),
                burst_rate: 1 << 40,
                is_default: false,
                matcher: Some("^/bench".into()),
                http_method: Some("GET".into()),
            },
            retry_after_ms: None,
        })
    }
}
