//! `lightrate-server`: a LightRate-compatible token server.
//!
//! ```text
//! LIGHTRATE_API_KEY=... LIGHTRATE_APPLICATION_ID=... lightrate-server [--listen ADDR] [--config rules.toml]
//!     [--redis URL | --redis-cluster URL,URL,...] [--request-timeout 10s] [--max-connections N]
//!     [--drain-timeout 10s] [--log-format text|json] [--no-metrics]
//! lightrate-server check rules.toml
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use lightrate_core::{env_vars, EmbeddedSource, RuleSet};
use lightrate_redis::RedisSource;
use lightrate_server::{LightRateServer, RunningServer, ServerConfig, TokenStore};

const USAGE: &str = "\
usage: lightrate-server [OPTIONS]
       lightrate-server check FILE

Serves the LightRate token API (POST /api/v1/tokens/consume) from an in-process rules engine,
with its buckets in memory, or in Redis so that every replica shares them.

`check FILE` validates a rules file and prints its rules (exit 1 and the line of the fault
on a bad file); it needs no key.

options:
  --listen ADDR            address to listen on (default 127.0.0.1:8080; port 0 picks a free one)
  --config FILE            rules in TOML (default: the demo rules); read again on SIGHUP
  --redis URL              buckets in this Redis (redis://[user:password@]host:port[/db], rediss://)
  --redis-cluster URLS     buckets in the Redis Cluster of these nodes (comma-separated URLs)
  --request-timeout DUR    time a request has to arrive whole, headers and body (default 10s)
  --max-connections N      connections served at once; past it, 503 and closed
                           (default: from the limit on open files, 896 for 1024)
  --drain-timeout DUR      on SIGTERM/SIGINT, time requests in flight have to finish (default 10s)
  --log-format FORMAT      text (default) or json (one JSON object a line)
  --no-metrics             do not serve GET /metrics
  -h, --help               this text
DUR: 10s, 500ms, or a number of seconds.

environment:
  LIGHTRATE_API_KEY              the API key clients must present (required)
  LIGHTRATE_APPLICATION_ID       the application id clients must name (required; also the
                                 application part of every Redis key)
  LIGHTRATE_REDIS_URL            as --redis (the flag wins)
  LIGHTRATE_REDIS_CLUSTER_URLS   as --redis-cluster (the flag wins)
  LIGHTRATE_REQUEST_TIMEOUT      as --request-timeout (the flag wins)
  LIGHTRATE_MAX_CONNECTIONS      as --max-connections (the flag wins)
  LIGHTRATE_DRAIN_TIMEOUT        as --drain-timeout (the flag wins)
  LIGHTRATE_LOG_FORMAT           as --log-format (the flag wins)
  RUST_LOG                       log filter (default: info)

signals: SIGHUP reloads --config (an invalid file is refused, the rules in force stay);
SIGTERM and SIGINT stop accepting, let requests in flight finish, and exit 0.

GET /health answers 200 while the buckets can be reached, 503 while Redis cannot.
GET /metrics is the server's counters in the Prometheus text format (no key needed).";

#[cfg(feature = "test-util")]
const FAULT_USAGE: &str = "
built with the test-util feature:
  --fault-delay-ms N       answer every request N ms late (a distant source, for load tests)
  --fault-jitter-ms J      with --fault-delay-ms: N ms give or take up to J, uniformly
  --fault-slow-one-in K    with --fault-delay-ms: one answer in K five times as late";
#[cfg(not(feature = "test-util"))]
const FAULT_USAGE: &str = "";

/// Where the buckets live.
#[derive(Debug, PartialEq, Eq)]
enum Store {
    Memory,
    Redis(String),
    RedisCluster(Vec<String>),
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

/// What the command line asks for.
enum Command {
    Serve(Box<Args>),
    Check(String),
    Help,
}

/// The options of `serve`, as given (the environment is read later).
#[derive(Default)]
struct Args {
    listen: Option<String>,
    config: Option<String>,
    redis: Option<String>,
    redis_cluster: Option<String>,
    request_timeout: Option<String>,
    max_connections: Option<String>,
    drain_timeout: Option<String>,
    log_format: Option<String>,
    no_metrics: bool,
    #[cfg(feature = "test-util")]
    fault_delay_ms: Option<String>,
    #[cfg(feature = "test-util")]
    fault_jitter_ms: Option<String>,
    #[cfg(feature = "test-util")]
    fault_slow_one_in: Option<String>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut parsed = Args::default();
    let mut first = true;
    while let Some(arg) = args.next() {
        if std::mem::take(&mut first) && arg == "check" {
            let file = args.next().ok_or("check needs a rules file: check FILE")?;
            if let Some(extra) = args.next() {
                return Err(format!("unexpected argument {extra:?} after check FILE"));
            }
            return Ok(Command::Check(file));
        }
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => (arg, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "--listen" => parsed.listen = Some(value()?),
            "--config" => parsed.config = Some(value()?),
            "--redis" => parsed.redis = Some(value()?),
            "--redis-cluster" => parsed.redis_cluster = Some(value()?),
            "--request-timeout" => parsed.request_timeout = Some(value()?),
            "--max-connections" => parsed.max_connections = Some(value()?),
            "--drain-timeout" => parsed.drain_timeout = Some(value()?),
            "--log-format" => parsed.log_format = Some(value()?),
            "--no-metrics" => parsed.no_metrics = true,
            #[cfg(feature = "test-util")]
            "--fault-delay-ms" => parsed.fault_delay_ms = Some(value()?),
            #[cfg(feature = "test-util")]
            "--fault-jitter-ms" => parsed.fault_jitter_ms = Some(value()?),
            #[cfg(feature = "test-util")]
            "--fault-slow-one-in" => parsed.fault_slow_one_in = Some(value()?),
            "-h" | "--help" => return Ok(Command::Help),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Command::Serve(Box::new(parsed)))
}

/// `10s`, `500ms`, `2m`, or a number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let invalid = || format!("{text:?} is not a duration (write 10s, 500ms, 2m or 10)");
    let (number, unit_ms) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000)
    } else {
        (text, 1_000)
    };
    let n: u64 = number.trim().parse().map_err(|_| invalid())?;
    n.checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(invalid)
}

/// The server's own variables (those it shares with the library are in
/// `lightrate_core::env_vars`).
const REDIS_CLUSTER_URLS_VAR: &str = "LIGHTRATE_REDIS_CLUSTER_URLS";
const REQUEST_TIMEOUT_VAR: &str = "LIGHTRATE_REQUEST_TIMEOUT";
const MAX_CONNECTIONS_VAR: &str = "LIGHTRATE_MAX_CONNECTIONS";
const DRAIN_TIMEOUT_VAR: &str = "LIGHTRATE_DRAIN_TIMEOUT";
const LOG_FORMAT_VAR: &str = "LIGHTRATE_LOG_FORMAT";

/// A value from its flag, else from its environment variable.
fn flag_or_env(
    flag: &Option<String>,
    name: &str,
    var: &impl Fn(&str) -> Option<String>,
) -> Option<String> {
    flag.clone().or_else(|| var(name))
}

/// The serving options, from the flags then the environment.
#[derive(Debug, PartialEq)]
struct Settings {
    listen: String,
    request_timeout: Option<Duration>,
    max_connections: Option<usize>,
    drain_timeout: Option<Duration>,
    log_format: LogFormat,
}

fn settings(args: &Args, var: impl Fn(&str) -> Option<String>) -> Result<Settings, String> {
    let duration = |flag: &Option<String>, name: &str, what: &str| {
        flag_or_env(flag, name, &var)
            .map(|v| parse_duration(&v).map_err(|e| format!("{what}: {e}")))
            .transpose()
    };
    let max_connections = flag_or_env(&args.max_connections, MAX_CONNECTIONS_VAR, &var)
        .map(|v| match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "--max-connections: {v:?} is not a positive integer"
            )),
        })
        .transpose()?;
    let log_format = match flag_or_env(&args.log_format, LOG_FORMAT_VAR, &var).as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => return Err(format!("--log-format: {other:?} is not text or json")),
    };
    Ok(Settings {
        listen: args
            .listen
            .clone()
            .unwrap_or_else(|| "127.0.0.1:8080".into()),
        request_timeout: duration(
            &args.request_timeout,
            REQUEST_TIMEOUT_VAR,
            "--request-timeout",
        )?,
        max_connections,
        drain_timeout: duration(&args.drain_timeout, DRAIN_TIMEOUT_VAR, "--drain-timeout")?,
        log_format,
    })
}

fn env(name: &str) -> Result<String, String> {
    optional_env(name).ok_or_else(|| format!("{name} must be set"))
}

fn optional_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The store from the flags, else from the environment; one of Redis and Redis Cluster.
fn store(args: &Args, var: impl Fn(&str) -> Option<String>) -> Result<Store, String> {
    let (redis, cluster) = if args.redis.is_some() || args.redis_cluster.is_some() {
        (args.redis.clone(), args.redis_cluster.clone())
    } else {
        (var(env_vars::REDIS_URL), var(REDIS_CLUSTER_URLS_VAR))
    };
    match (redis, cluster) {
        (None, None) => Ok(Store::Memory),
        (Some(url), None) => Ok(Store::Redis(url)),
        (None, Some(urls)) => {
            let urls: Vec<String> = urls
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect();
            if urls.is_empty() {
                return Err("--redis-cluster needs at least one URL".into());
            }
            Ok(Store::RedisCluster(urls))
        }
        (Some(_), Some(_)) => Err("give --redis or --redis-cluster, not both".into()),
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let command = match parse_args(std::env::args().skip(1)) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("lightrate-server: {e}\n\n{USAGE}{FAULT_USAGE}");
            return ExitCode::FAILURE;
        }
    };
    match command {
        Command::Help => {
            println!("{USAGE}{FAULT_USAGE}");
            ExitCode::SUCCESS
        }
        Command::Check(file) => check(&file),
        Command::Serve(args) => {
            let settings = match settings(&args, optional_env) {
                Ok(settings) => settings,
                Err(e) => {
                    eprintln!("lightrate-server: {e}");
                    return ExitCode::FAILURE;
                }
            };
            init_logs(settings.log_format);
            match run(&args, &settings).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    match settings.log_format {
                        LogFormat::Text => eprintln!("lightrate-server: {message}"),
                        LogFormat::Json => {
                            tracing::error!(target: "lightrate::server", "{message}")
                        }
                    }
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `check FILE`: the rule table on stdout, or the fault on stderr and exit 1.
fn check(file: &str) -> ExitCode {
    match RuleSet::from_toml_file(file) {
        Ok(rules) => {
            let count = rules.rules().count();
            println!("{file}: valid, {count} rules (the first that matches wins; the default takes the rest):");
            println!("{rules}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lightrate-server: {file}: {}", e.message());
            ExitCode::FAILURE
        }
    }
}

/// Says which rules are served: the table itself on stderr in text logs, a count in JSON logs.
fn announce_rules(rules: &RuleSet, origin: &str, format: LogFormat) {
    let count = rules.rules().count();
    tracing::info!(target: "lightrate::server", origin, rules = count, "rules loaded");
    if format == LogFormat::Text {
        eprintln!("{rules}");
    }
}

/// Keys shorter than this are warned about at start-up.
const SHORT_KEY_BYTES: usize = 16;

async fn run(args: &Args, settings: &Settings) -> Result<(), String> {
    let rules = match &args.config {
        Some(path) => {
            RuleSet::from_toml_file(path).map_err(|e| format!("{path}: {}", e.message()))?
        }
        None => RuleSet::demo(),
    };
    let origin = args
        .config
        .as_deref()
        .unwrap_or("demo rules, no --config given");
    announce_rules(&rules, origin, settings.log_format);
    let api_key = env(env_vars::API_KEY)?;
    let application_id = env(env_vars::APPLICATION_ID)?;
    if api_key.len() < SHORT_KEY_BYTES {
        // Its length is all that is said of it.
        tracing::warn!(
            target: "lightrate::server",
            key_bytes = api_key.len(),
            "LIGHTRATE_API_KEY is shorter than {SHORT_KEY_BYTES} bytes: a key that short can be \
             guessed; use a long random one"
        );
    }
    match store(args, optional_env)? {
        Store::Memory => {
            tracing::info!(target: "lightrate::server", "buckets in memory (this process only)");
            let config = ServerConfig::new(api_key, application_id, EmbeddedSource::new(rules))
                .map_err(|e| e.to_string())?;
            serve(config, args, settings).await
        }
        Store::Redis(url) => {
            let source = RedisSource::builder(rules)
                .application_id(application_id.as_str())
                .connect(&url)
                .map_err(|e| e.to_string())?;
            let addresses = source.addresses().join(", ");
            tracing::info!(target: "lightrate::server", redis = %addresses, "buckets in Redis");
            serve_redis(source, api_key, application_id, args, settings).await
        }
        Store::RedisCluster(urls) => {
            let source = RedisSource::builder(rules)
                .application_id(application_id.as_str())
                .connect_cluster(&urls)
                .map_err(|e| e.to_string())?;
            let addresses = source.addresses().join(", ");
            tracing::info!(target: "lightrate::server", redis_cluster = %addresses, "buckets in Redis Cluster");
            serve_redis(source, api_key, application_id, args, settings).await
        }
    }
}

/// Serves `source`, after saying whether Redis answers now (a Redis that does not is not a
/// reason to stop: consumes get 503 until it does).
async fn serve_redis(
    source: RedisSource,
    api_key: String,
    application_id: String,
    args: &Args,
    settings: &Settings,
) -> Result<(), String> {
    if let Err(e) = source.ping().await {
        tracing::warn!(
            target: "lightrate::server",
            error = %e,
            "Redis does not answer yet; consumes get 503 until it does"
        );
    }
    let config = ServerConfig::with_store(api_key, application_id, Arc::new(source))
        .map_err(|e| e.to_string())?;
    serve(config, args, settings).await
}

async fn serve<S: TokenStore>(
    config: ServerConfig<S>,
    args: &Args,
    settings: &Settings,
) -> Result<(), String> {
    let mut config = config.metrics(!args.no_metrics);
    if let Some(timeout) = settings.request_timeout {
        config = config.request_timeout(timeout);
    }
    if let Some(max) = settings.max_connections {
        config = config.max_connections(max);
    }
    if let Some(timeout) = settings.drain_timeout {
        config = config.drain_timeout(timeout);
    }
    let server = LightRateServer::new(config);
    #[cfg(feature = "test-util")]
    let server = match &args.fault_delay_ms {
        Some(ms) => {
            let number = |flag: &str, value: Option<&String>| -> Result<u64, String> {
                value.map_or(Ok(0), |v| {
                    v.parse()
                        .map_err(|_| format!("{flag}: {v:?} is not a number"))
                })
            };
            let delay = number("--fault-delay-ms", Some(ms))?;
            let jitter = number("--fault-jitter-ms", args.fault_jitter_ms.as_ref())?;
            let slow_one_in = number("--fault-slow-one-in", args.fault_slow_one_in.as_ref())?;
            let faults = lightrate_server::faults::Faults::new();
            faults.set_recording(false);
            faults.set_always(Some(lightrate_server::faults::Fault::Jitter {
                delay: Duration::from_millis(delay),
                jitter: Duration::from_millis(jitter),
                slow_one_in: u32::try_from(slow_one_in).unwrap_or(u32::MAX),
            }));
            tracing::warn!(
                target: "lightrate::server",
                delay_ms = delay,
                jitter_ms = jitter,
                slow_one_in,
                "every answer is delayed (--fault-delay-ms)"
            );
            server.with_faults(faults)
        }
        None => server,
    };
    let listen = &settings.listen;
    let server = server
        .bind(listen.as_str())
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    // Ready once the signals are handled: a SIGTERM sent at once drains, it does not kill.
    let ready = || {
        println!("listening on {}", server.base_url());
        let _ = std::io::stdout().flush();
    };
    let signal = until_stopped(&server, args.config.as_deref(), ready).await?;
    tracing::info!(target: "lightrate::server", signal, "stopping: no new connections; draining requests in flight");
    server.shutdown().await;
    tracing::info!(target: "lightrate::server", "stopped");
    Ok(())
}

/// Reloads the rules on SIGHUP until SIGTERM or SIGINT; the name of the signal that stopped it.
/// Calls `ready` once the signals are handled.
#[cfg(unix)]
async fn until_stopped<S: TokenStore>(
    server: &RunningServer<S>,
    config: Option<&str>,
    ready: impl FnOnce(),
) -> Result<&'static str, String> {
    use tokio::signal::unix::{signal, SignalKind};
    let listen = |kind| signal(kind).map_err(|e| format!("cannot handle signals: {e}"));
    let mut hangup = listen(SignalKind::hangup())?;
    let mut terminate = listen(SignalKind::terminate())?;
    let mut interrupt = listen(SignalKind::interrupt())?;
    ready();
    loop {
        tokio::select! {
            _ = hangup.recv() => reload(server, config),
            _ = terminate.recv() => return Ok("SIGTERM"),
            _ = interrupt.recv() => return Ok("SIGINT"),
        }
    }
}

/// Until Ctrl-C (no SIGHUP here: no reload).
#[cfg(not(unix))]
async fn until_stopped<S: TokenStore>(
    _server: &RunningServer<S>,
    _config: Option<&str>,
    ready: impl FnOnce(),
) -> Result<&'static str, String> {
    ready();
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| format!("cannot handle Ctrl-C: {e}"))?;
    Ok("Ctrl-C")
}

/// SIGHUP: the rules file again, or a log line saying why the rules in force stay.
#[cfg(unix)]
fn reload<S: TokenStore>(server: &RunningServer<S>, config: Option<&str>) {
    let Some(path) = config else {
        tracing::warn!(target: "lightrate::server", "SIGHUP: no --config was given, nothing to reload");
        return;
    };
    match server.reload_rules_file(path) {
        Ok(rules) => tracing::info!(
            target: "lightrate::server",
            path,
            rules = rules.rules().count(),
            "rules reloaded (buckets kept)"
        ),
        Err(e) => tracing::warn!(
            target: "lightrate::server",
            path,
            error = e.message(),
            "rules reload refused; the rules in force stay"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        match parse_args(list.iter().map(|s| (*s).to_owned())).unwrap() {
            Command::Serve(args) => *args,
            _ => unreachable!("not serve"),
        }
    }

    #[test]
    fn the_store_comes_from_the_flags_then_the_environment() {
        let none = |_: &str| None;
        let env = |name: &str| match name {
            "LIGHTRATE_REDIS_URL" => Some("redis://env:6379".to_owned()),
            _ => None,
        };
        assert_eq!(store(&args(&[]), none).unwrap(), Store::Memory);
        assert_eq!(
            store(&args(&[]), env).unwrap(),
            Store::Redis("redis://env:6379".into())
        );
        assert_eq!(
            store(&args(&["--redis", "redis://flag"]), env).unwrap(),
            Store::Redis("redis://flag".into())
        );
        assert_eq!(
            store(&args(&["--redis-cluster=redis://a:1, redis://b:2,"]), env).unwrap(),
            Store::RedisCluster(vec!["redis://a:1".into(), "redis://b:2".into()])
        );
        let cluster_env = |name: &str| match name {
            "LIGHTRATE_REDIS_CLUSTER_URLS" => Some("redis://a:1,redis://b:2".to_owned()),
            _ => None,
        };
        assert_eq!(
            store(&args(&[]), cluster_env).unwrap(),
            Store::RedisCluster(vec!["redis://a:1".into(), "redis://b:2".into()])
        );
        assert!(store(&args(&["--redis", "a", "--redis-cluster", "b"]), none).is_err());
        assert!(store(&args(&["--redis-cluster", " , "]), none).is_err());
    }

    #[test]
    fn settings_come_from_the_flags_then_the_environment() {
        let env = |name: &str| match name {
            "LIGHTRATE_REQUEST_TIMEOUT" => Some("3s".to_owned()),
            "LIGHTRATE_MAX_CONNECTIONS" => Some("100".to_owned()),
            "LIGHTRATE_DRAIN_TIMEOUT" => Some("250ms".to_owned()),
            "LIGHTRATE_LOG_FORMAT" => Some("json".to_owned()),
            _ => None,
        };
        let from_env = settings(&args(&[]), env).unwrap();
        assert_eq!(
            from_env,
            Settings {
                listen: "127.0.0.1:8080".into(),
                request_timeout: Some(Duration::from_secs(3)),
                max_connections: Some(100),
                drain_timeout: Some(Duration::from_millis(250)),
                log_format: LogFormat::Json,
            }
        );
        let flags = args(&[
            "--request-timeout=500ms",
            "--max-connections",
            "7",
            "--drain-timeout",
            "2m",
            "--log-format",
            "text",
        ]);
        let from_flags = settings(&flags, env).unwrap();
        assert_eq!(from_flags.request_timeout, Some(Duration::from_millis(500)));
        assert_eq!(from_flags.max_connections, Some(7));
        assert_eq!(from_flags.drain_timeout, Some(Duration::from_secs(120)));
        assert_eq!(from_flags.log_format, LogFormat::Text);
        let none = |_: &str| None;
        assert_eq!(settings(&args(&[]), none).unwrap().request_timeout, None);
        for bad in [
            &["--request-timeout", "soon"][..],
            &["--max-connections", "0"],
            &["--log-format", "xml"],
            &["--drain-timeout", "-1s"],
        ] {
            assert!(settings(&args(bad), none).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_in_seconds_milliseconds_or_minutes() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration(" 750ms "), Ok(Duration::from_millis(750)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn check_takes_one_file() {
        let parse = |list: &[&str]| parse_args(list.iter().map(|s| (*s).to_owned()));
        assert!(matches!(parse(&["check", "r.toml"]), Ok(Command::Check(f)) if f == "r.toml"));
        assert!(parse(&["check"]).is_err());
        assert!(parse(&["check", "a", "b"]).is_err());
        assert!(matches!(parse(&["--help"]), Ok(Command::Help)));
        assert!(parse(&["--bogus"]).is_err());
    }
}
