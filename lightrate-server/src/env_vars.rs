//! The `LIGHTRATE_*` variables of the `lightrate-server` binary beyond those of the library
//! (`LIGHTRATE_API_KEY`, `LIGHTRATE_APPLICATION_ID`, `LIGHTRATE_REDIS_URL` and
//! `LIGHTRATE_REDIS_CLUSTER_URLS` are in `lightrate_core::env_vars`). Each is the fallback of
//! the flag it names: the flag wins.
/// `--request-timeout`: the time a request has to arrive whole (`10s`, `500ms`, `2m`, or
/// seconds).
pub const REQUEST_TIMEOUT: &str = "LIGHTRATE_REQUEST_TIMEOUT";
/// `--max-connections`: the connections served at once (a positive integer).
pub const MAX_CONNECTIONS: &str = "LIGHTRATE_MAX_CONNECTIONS";
/// `--drain-timeout`: the time requests in flight have to finish on SIGTERM or SIGINT.
pub const DRAIN_TIMEOUT: &str = "LIGHTRATE_DRAIN_TIMEOUT";
/// `--log-format`: `text` or `json`.
pub const LOG_FORMAT: &str = "LIGHTRATE_LOG_FORMAT";
