//! The `client` module when lightrate-core is built without its `client` feature: no API
//! client, and no reqwest. What `Limiter::builder_from_env` reaches for when both
//! `LIGHTRATE_API_KEY` and `LIGHTRATE_APPLICATION_ID` are set is an error saying why.
//!
//! Crate-private, and uninhabited past the error: nothing here can be built.

use std::convert::Infallible;
use std::time::Duration;

use crate::env_vars;
use crate::{ConsumeRequest, ConsumeTokensResponse, Error, ErrorKind, TokenSource};

/// A client builder that cannot be built.
pub(crate) struct ClientBuilder(Infallible);

/// A client that cannot exist.
pub(crate) enum LightRateClient {}

/// What a client's settings would be.
pub(crate) struct Configuration {
    pub(crate) base_url: String,
    pub(crate) application_id: String,
    pub(crate) timeout: Duration,
    pub(crate) default_local_bucket_size: u64,
}

impl ClientBuilder {
    /// The error: tokens from the API need the `client` feature.
    pub(crate) fn from_lookup(_var: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        Err(Error::new(
            ErrorKind::Configuration,
            format!(
                "{} and {} are set, but lightrate was built without its `client` feature: \
                 enable it to take tokens from the LightRate API",
                env_vars::API_KEY,
                env_vars::APPLICATION_ID
            ),
        ))
    }

    pub(crate) fn build(self) -> Result<LightRateClient, Error> {
        match self.0 {}
    }
}

impl LightRateClient {
    pub(crate) fn get_configuration(&self) -> Configuration {
        match *self {}
    }
}

impl TokenSource for LightRateClient {
    async fn consume_tokens(
        &self,
        _request: ConsumeRequest<'_>,
    ) -> Result<ConsumeTokensResponse, Error> {
        match *self {}
    }
}
