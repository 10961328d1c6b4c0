//! The `LIGHTRATE_*` environment variables of lightrate: each name once, for every crate that
//! reads it (the API client, [`Limiter::builder_from_env`](crate::Limiter::builder_from_env),
//! `lightrate_redis::builder_from_env`, `lightrate-server`), and one parser per value.

#[cfg(feature = "client")]
use std::time::Duration;

use crate::{Error, ErrorKind};

/// The API key; with [`APPLICATION_ID`], tokens come from the LightRate API.
pub const API_KEY: &str = "LIGHTRATE_API_KEY";
/// The application id.
pub const APPLICATION_ID: &str = "LIGHTRATE_APPLICATION_ID";
/// The API base URL.
pub const BASE_URL: &str = "LIGHTRATE_BASE_URL";
/// The deadline of one API call, in milliseconds.
pub const TIMEOUT_MS: &str = "LIGHTRATE_TIMEOUT_MS";
/// The most tokens one call may lease.
pub const LOCAL_BUCKET_SIZE: &str = "LIGHTRATE_LOCAL_BUCKET_SIZE";
/// What requests get when the source cannot answer.
pub const ON_UNAVAILABLE: &str = "LIGHTRATE_ON_UNAVAILABLE";

/// Whether the demo apps' middleware enforces or only counts (`enforce`, `shadow`).
pub const MODE: &str = "LIGHTRATE_MODE";
/// With no API key: the Redis that holds the buckets (`lightrate_redis::builder_from_env`,
/// `lightrate-server`).
pub const REDIS_URL: &str = "LIGHTRATE_REDIS_URL";
/// With no API key: the Redis Cluster that holds the buckets, as comma-separated node URLs
/// (`lightrate_redis::builder_from_env`, `lightrate-server`).
pub const REDIS_CLUSTER_URLS: &str = "LIGHTRATE_REDIS_CLUSTER_URLS";

/// The process environment's value of `name`: the one place the engine reads it (every
/// reader takes a lookup function, so that tests pass their own).
pub(crate) fn process_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The value of variable `name` parsed as a `T`; the error says what was `expected`.
pub(crate) fn parse<T: std::str::FromStr>(
    name: &str,
    expected: &str,
    value: &str,
) -> Result<T, Error> {
    value.parse().map_err(|_| invalid(name, expected, value))
}

/// `LIGHTRATE_TIMEOUT_MS`: a whole number of milliseconds.
#[cfg(feature = "client")]
pub(crate) fn timeout(value: &str) -> Result<Duration, Error> {
    value
        .trim()
        .parse()
        .map(Duration::from_millis)
        .map_err(|_| invalid(TIMEOUT_MS, "a non-negative integer", value))
}

/// `LIGHTRATE_LOCAL_BUCKET_SIZE`: a positive whole number of tokens. The one parser of this
/// variable: the client's and the limiter's settings read it the same way.
pub(crate) fn local_bucket_size(value: &str) -> Result<u64, Error> {
    match value.trim().parse() {
        Ok(size) if size > 0 => Ok(size),
        _ => Err(invalid(LOCAL_BUCKET_SIZE, "a positive integer", value)),
    }
}

fn invalid(name: &str, what: &str, value: &str) -> Error {
    Error::new(
        ErrorKind::Configuration,
        format!("{name} must be {what}, not {value:?}"),
    )
}

/// An environment for tests: `vars` and nothing else.
#[cfg(test)]
pub(crate) fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: std::collections::HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_bucket_sizes_are_parsed_once_with_one_message() {
        assert_eq!(local_bucket_size("7").unwrap(), 7);
        for bad in ["five", "0", "-1", ""] {
            let e = local_bucket_size(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Configuration);
            assert_eq!(
                e.message(),
                format!("LIGHTRATE_LOCAL_BUCKET_SIZE must be a positive integer, not {bad:?}")
            );
        }
    }

    #[cfg(feature = "client")]
    #[test]
    fn timeouts_are_milliseconds() {
        assert_eq!(timeout(" 250 ").unwrap(), Duration::from_millis(250));
        assert_eq!(
            timeout("soon").unwrap_err().message(),
            "LIGHTRATE_TIMEOUT_MS must be a non-negative integer, not \"soon\""
        );
    }
}
