//! `lightrate-server`: a LightRate-compatible token server. `lightrate-server --help` says how
//! to run it; every flag with a `LIGHTRATE_*` fallback takes it from one clap definition.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::ffi::OsString;
use std::io::Write;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;
#[cfg(feature = "redis")]
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use lightrate_core::{env_vars, EmbeddedSource, RuleSet};
#[cfg(feature = "redis")]
use lightrate_redis::RedisSource;
use lightrate_server::env_vars as server_vars;
use lightrate_server::{LightRateServer, RunningServer, ServerConfig, TokenStore};

const ABOUT: &str = "Serves the LightRate token API (POST /api/v1/tokens/consume) from an \
in-process rules engine.";

#[cfg(feature = "redis")]
const LONG_ABOUT: &str = "Serves the LightRate token API (POST /api/v1/tokens/consume) from an \
in-process rules engine, with its buckets in memory, or in Redis so that every replica shares \
them.

GET /health answers 200 while the buckets can be reached, 503 while Redis cannot. GET /metrics \
is the server's counters in the Prometheus text format (no key needed).";
#[cfg(not(feature = "redis"))]
const LONG_ABOUT: &str = "Serves the LightRate token API (POST /api/v1/tokens/consume) from an \
in-process rules engine, with its buckets in memory (this build has no Redis: its `redis` \
feature is off).

GET /health answers 200; GET /metrics is the server's counters in the Prometheus text format \
(no key needed).";

/// The command line: serve (the flags), or `check FILE`.
#[derive(Debug, Parser)]
#[command(
    name = "lightrate-server",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    args_conflicts_with_subcommands = true,
    disable_help_subcommand = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Check>,
    #[command(flatten)]
    serve: Args,
}

#[derive(Debug, Subcommand)]
enum Check {
    /// Validates a rules file and prints its rules (exit 1 and the line of the fault on a bad
    /// file); needs no key.
    Check {
        /// The rules file (TOML).
        file: PathBuf,
    },
}

/// The options of serving: each from its flag, else from its variable.
#[derive(Debug, clap::Args)]
struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Rules in TOML (default: the demo rules); read again on SIGHUP.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Buckets in this Redis (redis://[user:password@]host:port[/db], rediss://).
    #[cfg(feature = "redis")]
    #[arg(long, value_name = "URL", env = env_vars::REDIS_URL, hide_env_values = true)]
    redis: Option<String>,
    /// Buckets in the Redis Cluster of these nodes (comma-separated URLs).
    #[cfg(feature = "redis")]
    #[arg(long, value_name = "URLS", env = env_vars::REDIS_CLUSTER_URLS, hide_env_values = true)]
    redis_cluster: Option<String>,
    /// Time a request has to arrive whole, headers and body [default: 10s].
    #[arg(long, value_name = "DUR", env = server_vars::REQUEST_TIMEOUT, hide_env_values = true,
          value_parser = duration, allow_hyphen_values = true)]
    request_timeout: Option<Duration>,
    /// Connections served at once; past it, 503 and closed [default: from the limit on open
    /// files, 896 for 1024].
    #[arg(long, value_name = "N", env = server_vars::MAX_CONNECTIONS, hide_env_values = true,
          value_parser = positive, allow_hyphen_values = true)]
    max_connections: Option<NonZeroUsize>,
    /// On SIGTERM/SIGINT, time requests in flight have to finish [default: 10s].
    #[arg(long, value_name = "DUR", env = server_vars::DRAIN_TIMEOUT, hide_env_values = true,
          value_parser = duration, allow_hyphen_values = true)]
    drain_timeout: Option<Duration>,
    /// How log lines are written (json: one JSON object a line).
    #[arg(long, value_name = "FORMAT", env = server_vars::LOG_FORMAT, hide_env_values = true,
          value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Do not serve GET /metrics.
    #[arg(long)]
    no_metrics: bool,
    /// Answer every request N ms late (a distant source, for load tests).
    #[cfg(feature = "test-util")]
    #[arg(long, value_name = "N", help_heading = FAULT_HEADING)]
    fault_delay_ms: Option<u64>,
    /// With --fault-delay-ms: N ms give or take up to J, uniformly.
    #[cfg(feature = "test-util")]
    #[arg(long, value_name = "J", help_heading = FAULT_HEADING, requires = "fault_delay_ms")]
    fault_jitter_ms: Option<u64>,
    /// With --fault-delay-ms: one answer in K five times as late.
    #[cfg(feature = "test-util")]
    #[arg(long, value_name = "K", help_heading = FAULT_HEADING, requires = "fault_delay_ms")]
    fault_slow_one_in: Option<u32>,
}

#[cfg(feature = "test-util")]
const FAULT_HEADING: &str = "Fault injection (this build has the test-util feature)";

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

/// `10s`, `500ms`, `2m` (any humantime duration), or a whole number of seconds.
fn duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse()
            .map(Duration::from_secs)
            .map_err(|e| format!("{e}"));
    }
    humantime::parse_duration(text).map_err(|e| format!("{e} (write 10s, 500ms, 2m or 10)"))
}

/// A whole number above 0.
fn positive(text: &str) -> Result<NonZeroUsize, String> {
    text.trim()
        .parse()
        .map_err(|_| "not a positive integer".to_owned())
}

/// The help's closing text: the variables that are no flag's fallback, and the signals.
fn after_help() -> String {
    format!(
        "Environment (a flag wins over its variable, shown as [env: ...]; a blank variable is \
         unset):
  {key:<28} the API key clients must present (required)
  {app:<28} the application id clients must name (required{redis_keys})
  {log:<28} log filter (default: info)

Signals: SIGHUP reloads --config (an invalid file is refused, the rules in force stay); SIGTERM
and SIGINT stop accepting, let requests in flight finish, and exit 0.",
        key = env_vars::API_KEY,
        app = env_vars::APPLICATION_ID,
        redis_keys = if cfg!(feature = "redis") {
            concat!(
                "; also the\n",
                "                               application part of every Redis key"
            )
        } else {
            ""
        },
        log = "RUST_LOG",
    )
}

/// The command, with the variables of this process (clap reads them as it builds the command):
/// a blank one counts as unset.
fn command() -> clap::Command {
    let mut command = Cli::command().after_help(after_help());
    let blank: Vec<clap::Id> = command
        .get_arguments()
        .filter(|arg| {
            arg.get_env()
                .and_then(std::env::var_os)
                .is_some_and(|value| value.to_string_lossy().trim().is_empty())
        })
        .map(|arg| arg.get_id().clone())
        .collect();
    for id in blank {
        command = command.mut_arg(id, |arg| arg.env(None));
    }
    command
}

/// What the command line asks for.
#[derive(Debug)]
enum Command {
    Serve(Box<Args>),
    Check(PathBuf),
}

fn parse(
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
) -> Result<Command, clap::Error> {
    let matches = command().try_get_matches_from(args)?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    if let Some(Check::Check { file }) = cli.command {
        return Ok(Command::Check(file));
    }
    flags_win(&mut cli.serve, &matches);
    Ok(Command::Serve(Box::new(cli.serve)))
}

/// One of Redis and Redis Cluster given by a flag: the other's variable is not read.
#[cfg(feature = "redis")]
fn flags_win(args: &mut Args, matches: &ArgMatches) {
    use clap::parser::ValueSource;
    let flag = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
    if flag("redis") && !flag("redis_cluster") {
        args.redis_cluster = None;
    }
    if flag("redis_cluster") && !flag("redis") {
        args.redis = None;
    }
}

#[cfg(not(feature = "redis"))]
fn flags_win(_args: &mut Args, _matches: &ArgMatches) {}

/// Where the buckets live.
#[derive(Debug, PartialEq, Eq)]
enum Store {
    Memory,
    #[cfg(feature = "redis")]
    Redis(String),
    #[cfg(feature = "redis")]
    RedisCluster(Vec<String>),
}

/// The store the options name: memory, or one of Redis and Redis Cluster.
#[cfg(feature = "redis")]
fn store(args: &Args) -> Result<Store, String> {
    match (&args.redis, &args.redis_cluster) {
        (None, None) => Ok(Store::Memory),
        (Some(url), None) => Ok(Store::Redis(url.clone())),
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

/// Memory: a Redis asked for by its variable is refused, not ignored (replicas that believe
/// they share their buckets would each keep their own).
#[cfg(not(feature = "redis"))]
fn store(_args: &Args) -> Result<Store, String> {
    for name in [env_vars::REDIS_URL, env_vars::REDIS_CLUSTER_URLS] {
        if std::env::var_os(name).is_some_and(|v| !v.to_string_lossy().trim().is_empty()) {
            return Err(format!(
                "{name} is set, but this lightrate-server was built without its redis feature"
            ));
        }
    }
    Ok(Store::Memory)
}

fn env(name: &str) -> Result<String, String> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| format!("{name} must be set"))
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
    // Help, --version and usage errors end here (clap's exit codes: 0, and 2 for an error).
    let command = parse(std::env::args_os()).unwrap_or_else(|e| e.exit());
    match command {
        Command::Check(file) => check(&file),
        Command::Serve(args) => {
            init_logs(args.log_format);
            match run(&args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    match args.log_format {
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
fn check(path: &std::path::Path) -> ExitCode {
    let file = path.display();
    match RuleSet::from_toml_file(path) {
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

async fn run(args: &Args) -> Result<(), String> {
    let rules = match &args.config {
        Some(path) => RuleSet::from_toml_file(path)
            .map_err(|e| format!("{}: {}", path.display(), e.message()))?,
        None => RuleSet::demo(),
    };
    let origin = match &args.config {
        Some(path) => path.display().to_string(),
        None => "demo rules, no --config given".to_owned(),
    };
    announce_rules(&rules, &origin, args.log_format);
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
    match store(args)? {
        Store::Memory => {
            tracing::info!(target: "lightrate::server", "buckets in memory (this process only)");
            let config = ServerConfig::new(api_key, application_id, EmbeddedSource::new(rules))
                .map_err(|e| e.to_string())?;
            serve(config, args).await
        }
        #[cfg(feature = "redis")]
        Store::Redis(url) => {
            let source = RedisSource::builder(rules)
                .application_id(application_id.as_str())
                .connect(&url)
                .map_err(|e| e.to_string())?;
            let addresses = source.addresses().join(", ");
            tracing::info!(target: "lightrate::server", redis = %addresses, "buckets in Redis");
            serve_redis(source, api_key, application_id, args).await
        }
        #[cfg(feature = "redis")]
        Store::RedisCluster(urls) => {
            let source = RedisSource::builder(rules)
                .application_id(application_id.as_str())
                .connect_cluster(&urls)
                .map_err(|e| e.to_string())?;
            let addresses = source.addresses().join(", ");
            tracing::info!(target: "lightrate::server", redis_cluster = %addresses, "buckets in Redis Cluster");
            serve_redis(source, api_key, application_id, args).await
        }
    }
}

/// Serves `source`, after saying whether Redis answers now (a Redis that does not is not a
/// reason to stop: consumes get 503 until it does).
#[cfg(feature = "redis")]
async fn serve_redis(
    source: RedisSource,
    api_key: String,
    application_id: String,
    args: &Args,
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
    serve(config, args).await
}

async fn serve<S: TokenStore>(config: ServerConfig<S>, args: &Args) -> Result<(), String> {
    let mut config = config.metrics(!args.no_metrics);
    if let Some(timeout) = args.request_timeout {
        config = config.request_timeout(timeout);
    }
    if let Some(max) = args.max_connections {
        config = config.max_connections(max.get());
    }
    if let Some(timeout) = args.drain_timeout {
        config = config.drain_timeout(timeout);
    }
    let server = LightRateServer::new(config);
    #[cfg(feature = "test-util")]
    let server = match args.fault_delay_ms {
        Some(delay) => {
            let jitter = args.fault_jitter_ms.unwrap_or(0);
            let slow_one_in = args.fault_slow_one_in.unwrap_or(0);
            let faults = lightrate_server::faults::Faults::new();
            faults.set_recording(false);
            faults.set_always(Some(lightrate_server::faults::Fault::Jitter {
                delay: Duration::from_millis(delay),
                jitter: Duration::from_millis(jitter),
                slow_one_in,
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
    let listen = &args.listen;
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
    config: Option<&std::path::Path>,
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
    _config: Option<&std::path::Path>,
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
fn reload<S: TokenStore>(server: &RunningServer<S>, config: Option<&std::path::Path>) {
    let Some(file) = config else {
        tracing::warn!(target: "lightrate::server", "SIGHUP: no --config was given, nothing to reload");
        return;
    };
    match server.reload_rules_file(file) {
        Ok(rules) => tracing::info!(
            target: "lightrate::server",
            path = %file.display(),
            rules = rules.rules().count(),
            "rules reloaded (buckets kept)"
        ),
        Err(e) => tracing::warn!(
            target: "lightrate::server",
            path = %file.display(),
            error = e.message(),
            "rules reload refused; the rules in force stay"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Mutex;

    /// Held while a test's variables are set: clap reads this process's environment.
    static ENVIRONMENT: Mutex<()> = Mutex::new(());

    /// `f` with the `LIGHTRATE_*` variables of the command line set to `vars` (the others
    /// unset).
    fn with_env<T>(vars: &[(&str, &str)], f: impl FnOnce() -> T) -> T {
        let _held = ENVIRONMENT.lock().unwrap_or_else(|e| e.into_inner());
        let names = [
            env_vars::REDIS_URL,
            env_vars::REDIS_CLUSTER_URLS,
            server_vars::REQUEST_TIMEOUT,
            server_vars::MAX_CONNECTIONS,
            server_vars::DRAIN_TIMEOUT,
            server_vars::LOG_FORMAT,
        ];
        for name in names {
            std::env::remove_var(name);
        }
        for (name, value) in vars {
            assert!(names.contains(name), "{name}");
            std::env::set_var(name, value);
        }
        let out = f();
        for name in names {
            std::env::remove_var(name);
        }
        out
    }

    fn parse_in(list: &[&str], vars: &[(&str, &str)]) -> Result<Command, clap::Error> {
        let argv = std::iter::once("lightrate-server").chain(list.iter().copied());
        with_env(vars, || parse(argv))
    }

    fn args_in(list: &[&str], vars: &[(&str, &str)]) -> Result<Args, String> {
        match parse_in(list, vars).map_err(|e| e.to_string())? {
            Command::Serve(args) => Ok(*args),
            Command::Check(_) => Err("check".into()),
        }
    }

    fn args(list: &[&str]) -> Args {
        args_in(list, &[]).unwrap()
    }

    #[cfg(feature = "redis")]
    #[test]
    fn the_store_comes_from_the_flags_then_the_environment() {
        let env = [("LIGHTRATE_REDIS_URL", "redis://env:6379")];
        let store_in = |list: &[&str], vars| store(&args_in(list, vars).unwrap());
        assert_eq!(store(&args(&[])).unwrap(), Store::Memory);
        assert_eq!(
            store_in(&[], &env).unwrap(),
            Store::Redis("redis://env:6379".into())
        );
        assert_eq!(
            store_in(&["--redis", "redis://flag"], &env).unwrap(),
            Store::Redis("redis://flag".into())
        );
        // A flag for one store: the other's variable is not read.
        assert_eq!(
            store_in(&["--redis-cluster=redis://a:1, redis://b:2,"], &env).unwrap(),
            Store::RedisCluster(vec!["redis://a:1".into(), "redis://b:2".into()])
        );
        let cluster_env = [("LIGHTRATE_REDIS_CLUSTER_URLS", "redis://a:1,redis://b:2")];
        assert_eq!(
            store_in(&[], &cluster_env).unwrap(),
            Store::RedisCluster(vec!["redis://a:1".into(), "redis://b:2".into()])
        );
        assert_eq!(
            store_in(&["--redis", "redis://flag"], &cluster_env).unwrap(),
            Store::Redis("redis://flag".into())
        );
        // A blank variable is unset.
        assert_eq!(
            store_in(&[], &[("LIGHTRATE_REDIS_URL", " ")]).unwrap(),
            Store::Memory
        );
        assert!(store(&args(&["--redis", "a", "--redis-cluster", "b"])).is_err());
        let both = [env[0], cluster_env[0]];
        assert!(store_in(&[], &both).is_err());
        assert!(store(&args(&["--redis-cluster", " , "])).is_err());
    }

    #[cfg(not(feature = "redis"))]
    #[test]
    fn without_the_redis_feature_redis_is_refused() {
        assert!(args_in(&["--redis", "redis://h"], &[]).is_err());
        let memory = args(&[]);
        assert_eq!(store(&memory), Ok(Store::Memory));
        let e = with_env(&[("LIGHTRATE_REDIS_URL", "redis://h")], || store(&memory)).unwrap_err();
        assert!(
            e.contains("LIGHTRATE_REDIS_URL") && e.contains("redis feature"),
            "{e}"
        );
    }

    #[test]
    fn settings_come_from_the_flags_then_the_environment() {
        let env = [
            ("LIGHTRATE_REQUEST_TIMEOUT", "3s"),
            ("LIGHTRATE_MAX_CONNECTIONS", "100"),
            ("LIGHTRATE_DRAIN_TIMEOUT", "250ms"),
            ("LIGHTRATE_LOG_FORMAT", "json"),
        ];
        let from_env = args_in(&[], &env).unwrap();
        assert_eq!(from_env.listen, "127.0.0.1:8080");
        assert_eq!(from_env.request_timeout, Some(Duration::from_secs(3)));
        assert_eq!(from_env.max_connections, NonZeroUsize::new(100));
        assert_eq!(from_env.drain_timeout, Some(Duration::from_millis(250)));
        assert_eq!(from_env.log_format, LogFormat::Json);
        let flags = [
            "--request-timeout=500ms",
            "--max-connections",
            "7",
            "--drain-timeout",
            "2m",
            "--log-format",
            "text",
            "--listen",
            "127.0.0.1:0",
        ];
        let from_flags = args_in(&flags, &env).unwrap();
        assert_eq!(from_flags.request_timeout, Some(Duration::from_millis(500)));
        assert_eq!(from_flags.max_connections, NonZeroUsize::new(7));
        assert_eq!(from_flags.drain_timeout, Some(Duration::from_secs(120)));
        assert_eq!(from_flags.log_format, LogFormat::Text);
        assert_eq!(from_flags.listen, "127.0.0.1:0");
        let none = args(&[]);
        assert_eq!(none.request_timeout, None);
        assert_eq!(none.max_connections, None);
        assert_eq!(none.log_format, LogFormat::Text);
        assert!(!none.no_metrics);
        assert!(args(&["--no-metrics"]).no_metrics);
        // A blank variable is unset, as if not there.
        let blank = args_in(&[], &[("LIGHTRATE_REQUEST_TIMEOUT", "  ")]).unwrap();
        assert_eq!(blank.request_timeout, None);
    }

    #[test]
    fn bad_values_are_refused_naming_the_flag() {
        for (bad, flag) in [
            (&["--request-timeout", "soon"][..], "--request-timeout"),
            (&["--max-connections", "0"], "--max-connections"),
            (&["--log-format", "xml"], "--log-format"),
            (&["--drain-timeout", "-1s"], "--drain-timeout"),
            (&["--bogus"], "--bogus"),
        ] {
            let e = args_in(bad, &[]).unwrap_err();
            assert!(e.contains(flag), "{bad:?}: {e}");
        }
        // From a variable too: the message names the flag the variable stands for.
        let e = args_in(&[], &[("LIGHTRATE_DRAIN_TIMEOUT", "later")]).unwrap_err();
        assert!(e.contains("--drain-timeout"), "{e}");
    }

    #[test]
    fn durations_in_seconds_milliseconds_or_minutes() {
        assert_eq!(duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(duration(" 750ms "), Ok(Duration::from_millis(750)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(duration("1.5s"), Ok(Duration::from_millis(1_500)));
        assert!(duration("-1s").is_err());
        assert!(duration("").is_err());
        assert!(duration("99999999999999999999").is_err());
    }

    #[test]
    fn check_takes_one_file_and_no_flags() {
        let parse = |list: &[&str]| parse_in(list, &[]);
        assert!(
            matches!(parse(&["check", "r.toml"]), Ok(Command::Check(f)) if f == std::path::Path::new("r.toml"))
        );
        assert!(parse(&["check"]).is_err());
        assert!(parse(&["check", "a", "b"]).is_err());
        assert!(parse(&["--listen", "x", "check", "a"]).is_err());
        let help = parse(&["--help"]).unwrap_err();
        assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
        let version = parse(&["--version"]).unwrap_err();
        assert_eq!(version.kind(), clap::error::ErrorKind::DisplayVersion);
        assert!(version.to_string().contains(env!("CARGO_PKG_VERSION")));
    }

    #[test]
    fn the_help_lists_what_the_build_has() {
        let help = with_env(&[], || command().render_long_help().to_string());
        for name in [
            "LIGHTRATE_API_KEY",
            "LIGHTRATE_APPLICATION_ID",
            "LIGHTRATE_LOG_FORMAT",
        ] {
            assert!(help.contains(name), "{name}: {help}");
        }
        assert_eq!(
            help.contains("--fault-delay-ms"),
            cfg!(feature = "test-util")
        );
        assert_eq!(help.contains("test-util"), cfg!(feature = "test-util"));
        assert_eq!(help.contains("--redis-cluster"), cfg!(feature = "redis"));
        // The values of the variables are not shown (a Redis URL may hold a password).
        let help = with_env(&[("LIGHTRATE_REDIS_URL", "redis://:hunter2@h")], || {
            command().render_long_help().to_string()
        });
        assert!(!help.contains("hunter2"));
    }

    #[test]
    fn the_command_is_well_formed() {
        with_env(&[], || command().debug_assert());
    }
}
