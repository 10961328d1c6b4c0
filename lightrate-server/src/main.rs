//! `lightrate-server`: a LightRate-compatible token server.
//!
//! ```text
//! LIGHTRATE_API_KEY=... LIGHTRATE_APPLICATION_ID=... lightrate-server [--listen ADDR] [--config rules.toml]
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;
use std::process::ExitCode;

use lightrate_core::{EmbeddedSource, RuleSet};
use lightrate_server::{LightRateServer, ServerConfig};

const USAGE: &str = "\
usage: lightrate-server [--listen ADDR] [--config FILE]

Serves the LightRate token API (POST /api/v1/tokens/consume) from an in-process rules engine.

options:
  --listen ADDR   address to listen on (default 127.0.0.1:8080; port 0 picks a free one)
  --config FILE   rules in TOML (default: the demo rules)
  -h, --help      this text

environment:
  LIGHTRATE_API_KEY          the API key clients must present (required)
  LIGHTRATE_APPLICATION_ID   the application id clients must name (required)
  RUST_LOG                   log filter (default: info)";

struct Args {
    listen: String,
    config: Option<String>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut parsed = Args {
        listen: "127.0.0.1:8080".into(),
        config: None,
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
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(parsed))
}

fn env(name: &str) -> Result<String, String> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| format!("{name} must be set"))
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
    let config = ServerConfig::new(
        env("LIGHTRATE_API_KEY")?,
        env("LIGHTRATE_APPLICATION_ID")?,
        EmbeddedSource::new(rules),
    )
    .map_err(|e| e.to_string())?;
    let server = LightRateServer::new(config)
        .bind(args.listen.as_str())
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    println!("listening on {}", server.base_url());
    let _ = std::io::stdout().flush();
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("shutting down");
    server.shutdown().await;
    Ok(())
}
