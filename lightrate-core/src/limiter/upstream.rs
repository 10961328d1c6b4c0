//! [`Upstream`]: the token source and what the limiter knows of it: the circuit breaker and
//! the latency of recent calls. One call is timed, bounded by the limiter's own deadline when
//! it has one, checked (a grant of more than was asked is not believed), counted, and told to
//! the breaker.

use std::sync::Arc;
use std::time::Duration;

use super::breaker::{Breaker, BreakerState, Gate};

use super::counters::{CallResult, Counters};
use super::latency::Latencies;
use super::settings::BreakerSettings;
use crate::clock::{ClockHandle, Timestamp};
use crate::source::DynTokenSource;
use crate::{ConsumeRequest, ConsumeTokensResponse, Error, ErrorKind};

/// The token source, its breaker and its latency.
pub(super) struct Upstream {
    source: Arc<dyn DynTokenSource>,
    breaker: Breaker,
    latencies: Latencies,
}

impl Upstream {
    pub(super) fn new(source: Arc<dyn DynTokenSource>, breaker: &BreakerSettings) -> Self {
        Upstream {
            source,
            breaker: Breaker::new(
                breaker.threshold,
                breaker.cooldown,
                breaker.configuration_backoff,
            ),
            latencies: Latencies::default(),
        }
    }

    /// Whether the source may be called now.
    pub(super) fn gate(&self, now: Timestamp) -> Gate {
        self.breaker.gate(now)
    }

    /// The circuit breaker's state at `now`.
    pub(super) fn breaker_state(&self, now: Timestamp) -> BreakerState {
        self.breaker.state(now)
    }

    /// A high percentile of the recent calls' latency.
    pub(super) fn slow_latency(&self) -> Duration {
        self.latencies.slow()
    }

    /// One call to the source, counted and timed, with the breaker told how it went.
    pub(super) async fn call(
        &self,
        request: ConsumeRequest<'_>,
        timeout: Option<Duration>,
        clock: &ClockHandle,
        counters: &Counters,
    ) -> Result<ConsumeTokensResponse, Error> {
        let tokens = request.tokens_requested;
        let started = clock.now();
        let call = self.source.consume_tokens_boxed(request);
        let result = match timeout {
            Some(limit) => match tokio::time::timeout(limit, call).await {
                Ok(result) => result,
                Err(_) => Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "the token source did not answer within {} ms",
                        limit.as_millis()
                    ),
                )),
            },
            None => call.await,
        };
        let now = clock.now();
        #[cfg(feature = "metrics")]
        metrics::histogram!(crate::metrics::SOURCE_CALL_DURATION)
            .record(now.saturating_duration_since(started).as_secs_f64());
        let result = match result {
            Ok(answer) if answer.tokens_consumed > tokens => {
                // An answer that contradicts the request cannot be trusted at all.
                Err(Error::new(
                    ErrorKind::Decode,
                    format!(
                        "the token source granted {} tokens for a request of {tokens}",
                        answer.tokens_consumed
                    ),
                ))
            }
            other => other,
        };
        match &result {
            Ok(answer) => {
                counters.call(if answer.tokens_consumed > 0 {
                    CallResult::Granted
                } else {
                    CallResult::Denied
                });
                self.breaker.success();
                self.latencies
                    .record(now.saturating_duration_since(started));
            }
            Err(error) => {
                counters.call(CallResult::failed(error));
                if !error.is_configuration() {
                    tracing::debug!(target: "lightrate::limiter", error = %error, "token source call failed");
                }
                self.breaker.failure(error, now);
            }
        }
        result
    }
}
