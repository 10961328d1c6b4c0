//! One call to the token source: timed, bounded by the limiter's own deadline when it has one,
//! checked (a grant of more than was asked is not believed), and told to the breaker.

use super::stats::bump;
use super::tally::CallResult;
use super::Inner;
use crate::clock::Timestamp;
use crate::{ConsumeRequest, ConsumeTokensResponse, Error, ErrorKind, Target};

impl Inner {
    /// One call to the source, counted and timed, with the breaker told how it went.
    pub(super) async fn call(
        &self,
        user: &str,
        target: &Target<'_>,
        tokens: u64,
        default_match: Option<u64>,
    ) -> Result<ConsumeTokensResponse, Error> {
        bump(&self.counters.source_calls, 1);
        let mut request = ConsumeRequest::new(user, target, tokens);
        request.tokens_requested_for_default_bucket_match = default_match;
        let started = self.clock.now();
        let call = self.source.consume_tokens_boxed(request);
        let result = match self.source_timeout {
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
        let now = self.clock.now();
        self.tally.call(match &result {
            Ok(answer) if answer.tokens_consumed > tokens => CallResult::Failed(ErrorKind::Decode),
            Ok(answer) if answer.tokens_consumed > 0 => CallResult::Granted,
            Ok(_) => CallResult::Denied,
            Err(error) => CallResult::Failed(error.kind()),
        });
        #[cfg(feature = "metrics")]
        metrics::histogram!(crate::metrics::SOURCE_CALL_DURATION)
            .record(now.saturating_duration_since(started).as_secs_f64());
        match result {
            Ok(answer) if answer.tokens_consumed > tokens => {
                // An answer that contradicts the request cannot be trusted at all.
                let error = Error::new(
                    ErrorKind::Decode,
                    format!(
                        "the token source granted {} tokens for a request of {tokens}",
                        answer.tokens_consumed
                    ),
                );
                self.failed(&error, now);
                Err(error)
            }
            Ok(answer) => {
                self.breaker.success();
                self.latencies
                    .record(now.saturating_duration_since(started));
                Ok(answer)
            }
            Err(error) => {
                self.failed(&error, now);
                Err(error)
            }
        }
    }

    /// Counts and reports a failed call.
    fn failed(&self, error: &Error, now: Timestamp) {
        let counter = if error.is_configuration() {
            &self.counters.configuration_errors
        } else if error.is_outage() {
            &self.counters.outage_errors
        } else {
            &self.counters.other_errors
        };
        bump(counter, 1);
        if !error.is_configuration() {
            tracing::debug!(target: "lightrate::limiter", error = %error, "token source call failed");
        }
        self.breaker.failure(error, now);
    }
}
