//! The client's settings from the `LIGHTRATE_*` environment variables.

use super::builder::ClientBuilder;
use crate::env_vars;
use crate::{Error, ErrorKind};

impl ClientBuilder {
    /// A builder from the environment: `LIGHTRATE_API_KEY` and `LIGHTRATE_APPLICATION_ID`
    /// (required), `LIGHTRATE_BASE_URL`, `LIGHTRATE_TIMEOUT_MS` and
    /// `LIGHTRATE_LOCAL_BUCKET_SIZE` (optional).
    pub fn from_env() -> Result<Self, Error> {
        Self::from_lookup(env_vars::process_var)
    }

    pub(crate) fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let required = |name: &str| {
            var(name)
                .ok_or_else(|| Error::new(ErrorKind::Configuration, format!("{name} is not set")))
        };
        let mut builder = ClientBuilder::new(
            required(env_vars::API_KEY)?,
            required(env_vars::APPLICATION_ID)?,
        );
        if let Some(url) = var(env_vars::BASE_URL).filter(|v| !v.is_empty()) {
            builder = builder.base_url(url);
        }
        if let Some(ms) = var(env_vars::TIMEOUT_MS).filter(|v| !v.is_empty()) {
            builder = builder.timeout(env_vars::timeout(&ms)?);
        }
        if let Some(size) = var(env_vars::LOCAL_BUCKET_SIZE).filter(|v| !v.is_empty()) {
            builder = builder.lease_size(env_vars::local_bucket_size(&size)?);
        }
        Ok(builder)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::env_vars::lookup;

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
        assert_eq!(c.lease_size, 9);

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
}
