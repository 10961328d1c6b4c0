//! A limiter configured from the environment, as the example apps document it.

use std::time::Duration;

use super::{LimiterBuilder, OnUnavailable};
use crate::client::ClientBuilder;
use crate::{EmbeddedSource, Error, ErrorKind, Limiter, RuleSet};

/// Where a limiter built by [`Limiter::builder_from_env`] takes its tokens from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnvSource {
    /// The LightRate API (`LIGHTRATE_API_KEY` and `LIGHTRATE_APPLICATION_ID` were set).
    Api {
        /// The API base URL.
        base_url: String,
        /// The application id.
        application_id: String,
        /// The deadline of one call.
        timeout: Duration,
    },
    /// The embedded source with the given rules (no API key configured).
    Embedded,
    /// The given rules with buckets in Redis (`LIGHTRATE_REDIS_URL` and no API key; chosen by
    /// `lightrate_redis::builder_from_env`). Host and port only, never credentials; port 0 for
    /// a Unix socket, whose path is the host.
    Redis {
        /// The Redis host.
        host: String,
        /// The Redis port.
        port: u16,
    },
}

impl std::fmt::Display for EnvSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnvSource::Api {
                base_url,
                application_id,
                timeout,
            } => write!(
                f,
                "the LightRate API at {base_url} (application {application_id}, timeout {} ms)",
                timeout.as_millis()
            ),
            EnvSource::Embedded => f.write_str("the embedded token source"),
            EnvSource::Redis { host, port: 0 } => write!(f, "Redis at {host}"),
            EnvSource::Redis { host, port } => write!(f, "Redis at {host}:{port}"),
        }
    }
}

impl Limiter {
    /// A limiter builder configured from the environment:
    ///
    /// | variable | meaning |
    /// |---|---|
    /// | `LIGHTRATE_API_KEY`, `LIGHTRATE_APPLICATION_ID` | both set: tokens from the LightRate API; neither: the embedded source with `rules`; one alone is an error |
    /// | `LIGHTRATE_BASE_URL`, `LIGHTRATE_TIMEOUT_MS` | the API client's base URL and deadline |
    /// | `LIGHTRATE_LOCAL_BUCKET_SIZE` | the most tokens one call may lease (default [`DEFAULT_LEASE_SIZE`](crate::DEFAULT_LEASE_SIZE); leases are sized by demand and scarcity up to it) |
    /// | `LIGHTRATE_ON_UNAVAILABLE` | `allow`, `deny` or `error` (default `allow`) |
    pub fn builder_from_env(rules: RuleSet) -> Result<(LimiterBuilder, EnvSource), Error> {
        builder_from_lookup(rules, |name| std::env::var(name).ok())
    }
}

pub(crate) fn builder_from_lookup(
    rules: RuleSet,
    var: impl Fn(&str) -> Option<String>,
) -> Result<(LimiterBuilder, EnvSource), Error> {
    let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    let (mut builder, source) = match (var("LIGHTRATE_API_KEY"), var("LIGHTRATE_APPLICATION_ID")) {
        (Some(_), Some(_)) => {
            let client = ClientBuilder::from_lookup(var)?.build()?;
            let config = client.get_configuration();
            // LIGHTRATE_LOCAL_BUCKET_SIZE, when set, caps leases (below); unset, the limiter's
            // own default cap applies, not the SDKs' 5.
            let builder = Limiter::builder(client);
            (
                builder,
                EnvSource::Api {
                    base_url: config.base_url,
                    application_id: config.application_id,
                    timeout: config.timeout,
                },
            )
        }
        (None, None) => (
            Limiter::builder(EmbeddedSource::new(rules)),
            EnvSource::Embedded,
        ),
        _ => {
            return Err(Error::new(
                ErrorKind::Configuration,
                "set both LIGHTRATE_API_KEY and LIGHTRATE_APPLICATION_ID, or neither",
            ))
        }
    };
    if let Some(size) = var("LIGHTRATE_LOCAL_BUCKET_SIZE") {
        let size: u64 = size.trim().parse().map_err(|_| {
            Error::new(
                ErrorKind::Configuration,
                format!("LIGHTRATE_LOCAL_BUCKET_SIZE must be a positive integer, not {size:?}"),
            )
        })?;
        builder = builder.lease_size(size);
    }
    if let Some(policy) = var("LIGHTRATE_ON_UNAVAILABLE") {
        builder = builder.on_unavailable(policy.parse::<OnUnavailable>()?);
    }
    Ok((builder, source))
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
    fn no_key_means_the_embedded_source() {
        let (builder, source) = builder_from_lookup(RuleSet::demo(), lookup(&[])).unwrap();
        assert_eq!(source, EnvSource::Embedded);
        let limiter = builder.build();
        assert_eq!(limiter.on_unavailable(), OnUnavailable::Allow);
    }

    #[test]
    fn a_key_and_an_application_mean_the_api() {
        let (builder, source) = builder_from_lookup(
            RuleSet::demo(),
            lookup(&[
                ("LIGHTRATE_API_KEY", "k"),
                ("LIGHTRATE_APPLICATION_ID", "app"),
                ("LIGHTRATE_BASE_URL", "http://127.0.0.1:9"),
                ("LIGHTRATE_TIMEOUT_MS", "250"),
                ("LIGHTRATE_LOCAL_BUCKET_SIZE", "7"),
                ("LIGHTRATE_ON_UNAVAILABLE", "deny"),
            ]),
        )
        .unwrap();
        assert_eq!(
            source,
            EnvSource::Api {
                base_url: "http://127.0.0.1:9".into(),
                application_id: "app".into(),
                timeout: Duration::from_millis(250),
            }
        );
        let limiter = builder.build();
        assert_eq!(limiter.on_unavailable(), OnUnavailable::Deny);
        assert!(format!("{limiter:?}").contains("lease_size: 7"));
    }

    #[test]
    fn without_a_bucket_size_the_cap_is_the_limiters_default() {
        let (builder, _) = builder_from_lookup(
            RuleSet::demo(),
            lookup(&[
                ("LIGHTRATE_API_KEY", "k"),
                ("LIGHTRATE_APPLICATION_ID", "app"),
            ]),
        )
        .unwrap();
        let debug = format!("{:?}", builder.build());
        assert!(
            debug.contains(&format!("lease_size: {}", crate::DEFAULT_LEASE_SIZE)),
            "{debug}"
        );
    }

    #[test]
    fn half_a_configuration_and_bad_values_are_errors() {
        for vars in [
            vec![("LIGHTRATE_API_KEY", "k")],
            vec![("LIGHTRATE_APPLICATION_ID", "a")],
            vec![("LIGHTRATE_ON_UNAVAILABLE", "maybe")],
            vec![("LIGHTRATE_LOCAL_BUCKET_SIZE", "five")],
        ] {
            let e = builder_from_lookup(RuleSet::demo(), lookup(&vars)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Configuration, "{vars:?}");
        }
    }
}
