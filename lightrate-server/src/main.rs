//! `lightrate-server`: a LightRate-compatible token server.
//!
//! ```text
//! LIGHTRATE_API_KEY=... LIGHTRATE_APPLICATION_ID=... lightrate-server [--listen ADDR] [--config rules.toml]
//!     [--redis URL | --redis-cluster URL,URL,...]
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;
use std::process::ExitCode;

use std::sync::Arc;

use lightrate_core::{EmbeddedSource, RuleSet};
use lightrate_redis::RedisSource;
use lightrate_server::{LightRateServer, ServerConfig, TokenStore};

const USAGE: &str = "\
usage: lightrate-server [--listen ADDR] [--config FILE] [--redis URL | --redis-cluster URLS]

Serves the LightRate token API (POST /api/v1/tokens/consume) from an in-process rules engine,
with its buckets in memory, or in Redis so that every replica shares them.

options:
  --listen ADDR          address to listen on (default 127.0.0.1:8080; port 0 picks a free one)
  --config FILE          rules in TOML (default: the demo rules)
  --redis URL            buckets in this Redis (redis://[user:password@]host:port[/db], rediss://)
  --redis-cluster URLS   buckets in the Redis Cluster of these nodes (comma-separated URLs)
  -h, --help             this text

environment:
  LIGHTRATE_API_KEY              the API key clients must present (required)
  LIGHTRATE_APPLICATION_ID       the application id clients must name (required; also the
                                 application part of every Redis key)
  LIGHTRATE_REDIS_URL            as --redis (the flag wins)
  LIGHTRATE_REDIS_CLUSTER_URLS   as --redis-cluster (the flag wins)
  RUST_LOG                       log filter (default: info)

GET /health answers 200 while the buckets can be reached, 503 while Redis cannot.";

/// Where the buckets live.
#[derive(Debug, PartialEq, Eq)]
enum Store {
    Memory,
    Redis(String),
    RedisCluster(Vec<String>),
}

struct Args {
    listen: String,
    config: Option<String>,
    redis: Option<String>,
    redis_cluster: Option<String>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut parsed = Args {
        listen: "127.0.0.1:8080".into(),
        config: None,
        redis: None,
        redis_cluster: None,
    };
    while let Some(arg) = args.next() {
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
            "--listen" => parsed.listen = value()?,
            "--config" => parsed.config = Some(value()?),
            "--redis" => parsed.redis = Some(value()?),
            "--redis-cluster" => parsed.redis_cluster = Some(value()?),
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(parsed))
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
        (
            var("LIGHTRATE_REDIS_URL"),
            var("LIGHTRATE_REDIS_CLUSTER_URLS"),
        )
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

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("lightrate-server: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let Some(args) = parse_args(std::env::args().skip(1)).map_err(|e| format!("{e}\n\n{USAGE}"))?
    else {
        println!("{USAGE}");
        return Ok(());
    };
    let rules = match &args.config {
        Some(path) => RuleSet::from_toml_file(path).map_err(|e| e.to_string())?,
        None => RuleSet::demo(),
    };
    eprintln!(
        "rules ({}):\n{rules}",
        args.config
            .as_deref()
            .unwrap_or("demo rules, no --config given")
    );
    let api_key = env("LIGHTRATE_API_KEY")?;
    let application_id = env("LIGHTRATE_APPLICATION_ID")?;
    match store(&args, optional_env)? {
        Store::Memory => {
            eprintln!("buckets: in memory (this process only)");
            let config = ServerConfig::new(api_key, application_id, EmbeddedSource::new(rules))
                .map_err(|e| e.to_string())?;
            serve(config, &args.listen).await
        }
        Store::Redis(url) => {
            let source = RedisSource::builder(rules)
                .application_id(application_id.as_str())
                .connect(&url)
                .map_err(|e| e.to_string())?;
            eprintln!("buckets: Redis at {}", source.addresses().join(", "));
            serve_redis(source, api_key, application_id, &args.listen).await
        }
        Store::RedisCluster(urls) => {
            let source = RedisSource::builder(rules)
                .application_id(application_id.as_str())
                .connect_cluster(&urls)
                .map_err(|e| e.to_string())?;
            eprintln!(
                "buckets: Redis Cluster at {}",
                source.addresses().join(", ")
            );
            serve_redis(source, api_key, application_id, &args.listen).await
        }
    }
}

/// Serves `source`, after saying whether Redis answers now (a Redis that does not is not a
/// reason to stop: consumes get 503 until it does).
async fn serve_redis(
    source: RedisSource,
    api_key: String,
    application_id: String,
    listen: &str,
) -> Result<(), String> {
    if let Err(e) = source.ping().await {
        eprintln!("warning: Redis does not answer yet ({e}); consumes get 503 until it does");
    }
    let config = ServerConfig::with_store(api_key, application_id, Arc::new(source))
        .map_err(|e| e.to_string())?;
    serve(config, listen).await
}

async fn serve<S: TokenStore>(config: ServerConfig<S>, listen: &str) -> Result<(), String> {
    let server = LightRateServer::new(config)
        .bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    println!("listening on {}", server.base_url());
    let _ = std::io::stdout().flush();
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("shutting down");
    server.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        parse_args(list.iter().map(|s| (*s).to_owned()))
            .unwrap()
            .unwrap()
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
}
