//! The demo apps' choice of token source from the environment, with Redis among the choices.

use lightrate_core::{
    env_vars, EnvSource, Error, ErrorKind, InFlight, Limiter, LimiterBuilder, RuleSet,
};

use crate::RedisSource;

/// A limiter builder configured from the environment: what
/// [`Limiter::builder_from_env`] does, and buckets in Redis when `LIGHTRATE_REDIS_URL` or
/// `LIGHTRATE_REDIS_CLUSTER_URLS` is set and no API key is.
///
/// | variables set | tokens from |
/// |---|---|
/// | `LIGHTRATE_API_KEY` and `LIGHTRATE_APPLICATION_ID` | the LightRate API (the Redis variables are ignored; needs the `client` feature, on by default, else an error) |
/// | `LIGHTRATE_REDIS_URL` | a [`RedisSource`] with `rules` on that Redis ([`EnvSource::Redis`]) |
/// | `LIGHTRATE_REDIS_CLUSTER_URLS` (comma-separated node URLs) | a [`RedisSource`] with `rules` on that Redis Cluster ([`EnvSource::RedisCluster`]) |
/// | none | the embedded source with `rules` |
///
/// Both Redis variables at once are a configuration error.
///
/// `LIGHTRATE_LOCAL_BUCKET_SIZE` and `LIGHTRATE_ON_UNAVAILABLE` apply to every choice. Redis is
/// not contacted here: a Redis that is down at start is an outage of the first requests (the
/// `LIGHTRATE_ON_UNAVAILABLE` policy), not a failure to start, and it is served as soon as it
/// is back.
///
/// ```
/// let (builder, source) = lightrate_redis::builder_from_env(lightrate_core::RuleSet::demo())?;
/// eprintln!("tokens from {source}"); // "Redis at 127.0.0.1:6379", say
/// # Ok::<(), lightrate_core::Error>(())
/// ```
pub fn builder_from_env(rules: RuleSet) -> Result<(LimiterBuilder, EnvSource), Error> {
    match redis_from_lookup(&rules, |name| std::env::var(name).ok())? {
        Some(chosen) => Ok(chosen),
        None => Limiter::builder_from_env(rules),
    }
}

/// An in-flight cap of `max` per identifier, where the environment puts the buckets: shared
/// by every process on that Redis (or Redis Cluster) when `LIGHTRATE_REDIS_URL` or
/// `LIGHTRATE_REDIS_CLUSTER_URLS` is set and no API key is ([`RedisInFlight`](crate::RedisInFlight)),
/// else in this process only (the LightRate API has no in-flight slots).
///
/// ```
/// let export = lightrate_redis::in_flight_from_env(2)?.named("export");
/// assert_eq!(export.max(), 2);
/// # Ok::<(), lightrate_core::Error>(())
/// ```
pub fn in_flight_from_env(max: u32) -> Result<InFlight, Error> {
    in_flight_from_lookup(max, |name| std::env::var(name).ok())
}

fn in_flight_from_lookup(
    max: u32,
    var: impl Fn(&str) -> Option<String>,
) -> Result<InFlight, Error> {
    let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    if var(env_vars::API_KEY).is_some() || var(env_vars::APPLICATION_ID).is_some() {
        return Ok(InFlight::new(max));
    }
    match (var(env_vars::REDIS_URL), var(env_vars::REDIS_CLUSTER_URLS)) {
        (Some(url), None) => Ok(InFlight::shared(max, crate::RedisInFlight::connect(&url)?)),
        (None, Some(urls)) => Ok(InFlight::shared(
            max,
            crate::RedisInFlight::connect_cluster(cluster_urls(&urls))?,
        )),
        _ => Ok(InFlight::new(max)),
    }
}

/// The node URLs of `LIGHTRATE_REDIS_CLUSTER_URLS` (comma-separated, blanks skipped).
fn cluster_urls(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// The Redis choice, or `None` when the environment does not ask for Redis (then the core's
/// choice stands: the API, or the embedded source).
fn redis_from_lookup(
    rules: &RuleSet,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Option<(LimiterBuilder, EnvSource)>, Error> {
    let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    let api = var(env_vars::API_KEY).is_some() || var(env_vars::APPLICATION_ID).is_some();
    if api {
        return Ok(None);
    }
    let (url, cluster) = (var(env_vars::REDIS_URL), var(env_vars::REDIS_CLUSTER_URLS));
    let url = match (url, cluster) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(Error::new(
                ErrorKind::Configuration,
                format!(
                    "set {} or {}, not both",
                    env_vars::REDIS_URL,
                    env_vars::REDIS_CLUSTER_URLS
                ),
            ))
        }
        (Some(url), None) => url,
        (None, Some(urls)) => {
            let source = RedisSource::connect_cluster(cluster_urls(&urls), rules.clone())?;
            let nodes = source.addresses().to_vec();
            let builder = Limiter::builder(source).env_settings_from(var)?;
            return Ok(Some((builder, EnvSource::RedisCluster { nodes })));
        }
    };
    let source = RedisSource::connect(&url, rules.clone())?;
    let address = source.addresses().first().cloned().unwrap_or_default();
    let (host, port) = match address.rsplit_once(':') {
        Some((host, port)) if !address.starts_with("unix:/") => {
            (host.to_owned(), port.parse().unwrap_or(0))
        }
        _ => (address, 0),
    };
    // The limiter's own settings, read where every other choice reads them.
    let builder = Limiter::builder(source).env_settings_from(var)?;
    Ok(Some((builder, EnvSource::Redis { host, port })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lightrate_core::OnUnavailable;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn a_redis_url_without_a_key_means_redis() {
        let (builder, source) = redis_from_lookup(
            &RuleSet::demo(),
            lookup(&[
                ("LIGHTRATE_REDIS_URL", "redis://:hunter2@10.1.2.3:6380/1"),
                ("LIGHTRATE_ON_UNAVAILABLE", "deny"),
                ("LIGHTRATE_LOCAL_BUCKET_SIZE", "3"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            source,
            EnvSource::Redis {
                host: "10.1.2.3".into(),
                port: 6380
            }
        );
        assert_eq!(source.to_string(), "Redis at 10.1.2.3:6380");
        let limiter = builder.build();
        assert_eq!(limiter.on_unavailable(), OnUnavailable::Deny);
        let debug = format!("{limiter:?}{source:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn cluster_urls_without_a_key_mean_redis_cluster() {
        let (builder, source) = redis_from_lookup(
            &RuleSet::demo(),
            lookup(&[
                (
                    "LIGHTRATE_REDIS_CLUSTER_URLS",
                    "redis://:hunter2@10.0.0.1:7000, redis://:hunter2@10.0.0.2:7001,",
                ),
                ("LIGHTRATE_ON_UNAVAILABLE", "deny"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            source,
            EnvSource::RedisCluster {
                nodes: vec!["10.0.0.1:7000".into(), "10.0.0.2:7001".into()]
            }
        );
        assert_eq!(
            source.to_string(),
            "the Redis Cluster of 10.0.0.1:7000, 10.0.0.2:7001"
        );
        let limiter = builder.build();
        assert_eq!(limiter.on_unavailable(), OnUnavailable::Deny);
        assert!(!format!("{limiter:?}{source:?}").contains("hunter2"));
        // Both kinds of Redis: refused. An API key: the API, whatever the Redis variables.
        let both = lookup(&[
            ("LIGHTRATE_REDIS_URL", "redis://127.0.0.1"),
            ("LIGHTRATE_REDIS_CLUSTER_URLS", "redis://127.0.0.1:7000"),
        ]);
        let e = redis_from_lookup(&RuleSet::demo(), both).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Configuration);
        let api = lookup(&[
            ("LIGHTRATE_REDIS_CLUSTER_URLS", "redis://127.0.0.1:7000"),
            ("LIGHTRATE_API_KEY", "k"),
            ("LIGHTRATE_APPLICATION_ID", "a"),
        ]);
        assert!(redis_from_lookup(&RuleSet::demo(), api).unwrap().is_none());
        let empty = lookup(&[("LIGHTRATE_REDIS_CLUSTER_URLS", " , ")]);
        let e = redis_from_lookup(&RuleSet::demo(), empty).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Configuration);
    }

    #[test]
    fn an_api_key_wins_and_no_url_means_the_core_choice() {
        let api = lookup(&[
            ("LIGHTRATE_REDIS_URL", "redis://127.0.0.1"),
            ("LIGHTRATE_API_KEY", "k"),
            ("LIGHTRATE_APPLICATION_ID", "a"),
        ]);
        assert!(redis_from_lookup(&RuleSet::demo(), api).unwrap().is_none());
        assert!(redis_from_lookup(&RuleSet::demo(), lookup(&[]))
            .unwrap()
            .is_none());
    }

    #[test]
    fn bad_values_are_configuration_errors_without_the_password() {
        for vars in [
            vec![("LIGHTRATE_REDIS_URL", "http://:hunter2@host")],
            vec![
                ("LIGHTRATE_REDIS_URL", "redis://127.0.0.1"),
                ("LIGHTRATE_ON_UNAVAILABLE", "maybe"),
            ],
            vec![
                ("LIGHTRATE_REDIS_URL", "redis://127.0.0.1"),
                ("LIGHTRATE_LOCAL_BUCKET_SIZE", "five"),
            ],
        ] {
            let e = redis_from_lookup(&RuleSet::demo(), lookup(&vars)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Configuration, "{vars:?}");
            assert!(!format!("{e}{e:?}").contains("hunter2"));
        }
    }
}
