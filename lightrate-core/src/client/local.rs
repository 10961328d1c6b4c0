//! The SDKs' local-bucket API: [`LightRateClient::consume_local_bucket_token`] and its
//! companions, over a [`Limiter`] that leases from the client's API.

use super::builder::LightRateClient;
use crate::{BucketStatus, Decision, DecisionSource, Error, Limiter, OnUnavailable, Target};

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

impl LightRateClient {
    /// Takes one token of `user_identifier` for `target` from a local bucket, leasing up to
    /// [`lease_size`](crate::ClientBuilder::lease_size) tokens per API call (sized by demand
    /// and scarcity): the SDKs' method, with single flight, a
    /// denial cache, refill-ahead, default-rule leasing and bounded memory (see
    /// [`Limiter`]). Errors when the API cannot answer, as the SDKs do; for an outage policy,
    /// use a [`Limiter`] over the client instead.
    ///
    /// ```
    /// # use lightrate::{LightRateClient, Target};
    /// # async fn call(client: LightRateClient) -> Result<(), lightrate::Error> {
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
                .lease_size(self.api.lease_size)
                .on_unavailable(OnUnavailable::Error)
                .build()
        })
    }
}
