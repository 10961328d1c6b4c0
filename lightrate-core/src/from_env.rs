//! A limiter configured from the environment, as the demo apps document it: each
//! `LIGHTRATE_*` variable read once (names and parsers in `env_vars`), whichever source is
//! chosen.

use std::time::Duration;

use crate::env_vars;
use crate::{EmbeddedSource, Error, ErrorKind, Limiter, LimiterBuilder, OnUnavailable, RuleSet};

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
    /// The given rules with buckets in a Redis Cluster (`LIGHTRATE_REDIS_CLUSTER_URLS` and no
    /// API key; chosen by `lightrate_redis::builder_from_env`): the seed nodes' `host:port`,
    /// never credentials.
    RedisCluster {
        /// The seed nodes, `host:port`.
        nodes: Vec<String>,
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
            EnvSource::RedisCluster { nodes } => {
                write!(f, "the Redis Cluster of {}", nodes.join(", "))
            }
        }
    }
}

impl Limiter {
    /// A limiter builder configured from the environment:
    ///
    /// | variable | meaning |
    /// |---|---|
    /// | `LIGHTRATE_API_KEY`, `LIGHTRATE_APPLICATION_ID` | both set: tokens from the LightRate API (needs the `client` feature); neither: the embedded source with `rules`; one alone is an error |
    /// | `LIGHTRATE_BASE_URL`, `LIGHTRATE_TIMEOUT_MS` | the API client's base URL and deadline |
    /// | `LIGHTRATE_LOCAL_BUCKET_SIZE`, `LIGHTRATE_ON_UNAVAILABLE` | see [`LimiterBuilder::env_settings`] |
    ///
    /// `lightrate::redis::builder_from_env` adds Redis to the choice (`LIGHTRATE_REDIS_URL`).
    pub fn builder_from_env(rules: RuleSet) -> Result<(LimiterBuilder, EnvSource), Error> {
        builder_from_lookup(rules, env_vars::process_var)
    }
}

impl LimiterBuilder {
    /// Applies the limiter's own settings from the environment, whatever the source:
    ///
    /// | variable | meaning |
    /// |---|---|
    /// | `LIGHTRATE_LOCAL_BUCKET_SIZE` | the cap of a lease, [`lease_size`](Self::lease_size) (default [`DEFAULT_LEASE_SIZE`](crate::DEFAULT_LEASE_SIZE); leases are sized by demand and scarcity up to it) |
    /// | `LIGHTRATE_ON_UNAVAILABLE` | `allow`, `deny` or `error` (default `allow`) |
    ///
    /// ```
    /// use lightrate_core::{EmbeddedSource, Limiter, RuleSet};
    ///
    /// let limiter = Limiter::builder(EmbeddedSource::new(RuleSet::demo()))
    ///     .env_settings()?
    ///     .build();
    /// # Ok::<(), lightrate_core::Error>(())
    /// ```
    pub fn env_settings(self) -> Result<Self, Error> {
        self.env_settings_from(env_vars::process_var)
    }

    /// [`env_settings`](Self::env_settings) from `var` instead of the process environment
    /// (for sources built from the environment elsewhere, and their tests).
    pub fn env_settings_from(
        mut self,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, Error> {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        if let Some(size) = var(env_vars::LOCAL_BUCKET_SIZE) {
            self = self.lease_size(env_vars::local_bucket_size(&size)?);
        }
        if let Some(policy) = var(env_vars::ON_UNAVAILABLE) {
            self = self.on_unavailable(policy.parse::<OnUnavailable>()?);
        }
        Ok(self)
    }
}

pub(crate) fn builder_from_lookup(
    rules: RuleSet,
    var: impl Fn(&str) -> Option<String>,
) -> Result<(LimiterBuilder, EnvSource), Error> {
    let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    let (builder, source) = match (set(env_vars::API_KEY), set(env_vars::APPLICATION_ID)) {
        (Some(_), Some(_)) => api(&var)?,
        (None, None) => (
            Limiter::builder(EmbeddedSource::new(rules)),
            EnvSource::Embedded,
        ),
        _ => {
            return Err(Error::new(
                ErrorKind::Configuration,
                format!(
                    "set both {} and {}, or neither",
                    env_vars::API_KEY,
                    env_vars::APPLICATION_ID
                ),
            ))
        }
    };
    Ok((builder.env_settings_from(var)?, source))
}

/// The LightRate API as the source. Unset, `LIGHTRATE_LOCAL_BUCKET_SIZE` leaves the limiter's
/// own cap, not the SDKs' 5.
#[cfg(feature = "client")]
fn api(var: &impl Fn(&str) -> Option<String>) -> Result<(LimiterBuilder, EnvSource), Error> {
    let client = crate::ClientBuilder::from_lookup(var)?.build()?;
    let config = client.get_configuration();
    let source = EnvSource::Api {
        base_url: config.base_url,
        application_id: config.application_id,
        timeout: config.timeout,
    };
    Ok((Limiter::builder(client), source))
}

/// Without the `client` feature there is no API client to build.
#[cfg(not(feature = "client"))]
fn api(_var: &impl Fn(&str) -> Option<String>) -> Result<(LimiterBuilder, EnvSource), Error> {
    Err(Error::new(
        ErrorKind::Configuration,
        format!(
            "{} and {} are set, but lightrate was built without its `client` feature: enable \
             it to take tokens from the LightRate API",
            env_vars::API_KEY,
            env_vars::APPLICATION_ID
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env_vars::lookup;

    #[test]
    fn no_key_means_the_embedded_source() {
        let (builder, source) = builder_from_lookup(RuleSet::demo(), lookup(&[])).unwrap();
        assert_eq!(source, EnvSource::Embedded);
        let limiter = builder.build();
        assert_eq!(limiter.on_unavailable(), OnUnavailable::Allow);
    }

    #[cfg(feature = "client")]
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

    #[cfg(feature = "client")]
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

    #[test]
    fn settings_apply_to_any_source() {
        let limiter = Limiter::builder(EmbeddedSource::new(RuleSet::demo()))
            .env_settings_from(lookup(&[
                ("LIGHTRATE_LOCAL_BUCKET_SIZE", "7"),
                ("LIGHTRATE_ON_UNAVAILABLE", "deny"),
            ]))
            .unwrap()
            .build();
        assert_eq!(limiter.on_unavailable(), OnUnavailable::Deny);
        assert!(format!("{limiter:?}").contains("lease_size: 7"));
        let e = Limiter::builder(EmbeddedSource::new(RuleSet::demo()))
            .env_settings_from(lookup(&[("LIGHTRATE_LOCAL_BUCKET_SIZE", "0")]))
            .unwrap_err();
        assert_eq!(
            e.message(),
            "LIGHTRATE_LOCAL_BUCKET_SIZE must be a positive integer, not \"0\""
        );
    }
}
