//! A client of a rate-limited LLM API that keeps under the API's limits on requests per second
//! and tokens per second: each call reserves its worst case (`max_tokens`) before it is sent,
//! and is settled at the tokens the answer says it used, so that what it did not use is spent
//! by the next calls at once.
//!
//! ```text
//! UPSTREAM_URL=http://127.0.0.1:8080 RPS=50 TPS=2000 cargo run --release --example llm_client
//! UPSTREAM_URL=... RPS=50 TPS=2000 SETTLE=0 cargo run --release --example llm_client
//! ```
//!
//! It sends `JOBS` calls `POST {UPSTREAM_URL}/v1/chat/completions` with the body
//! `{"max_tokens": MAX_TOKENS}`, `CONCURRENCY` at a time, each answered
//! `{"usage": {"total_tokens": U}}` or 429 (the API's own limits refused it), and prints one
//! last line, `jobs=N ok=N upstream_429=N elapsed_s=F tokens_used=N`.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `UPSTREAM_URL` | the API's base URL | required |
//! | `RPS`, `TPS` | the API's limits: requests and tokens per second, each with a burst of one second's worth | required |
//! | `JOBS` | how many calls | 200 |
//! | `CONCURRENCY` | how many calls in flight | 16 |
//! | `MAX_TOKENS` | each call's `max_tokens`, what it reserves | 400 |
//! | `SETTLE` | `1`: settle each call at its usage; `0`: keep what it reserved | 1 |
//!
//! Each call takes both limits at once, as one [`Limiter::acquire`]: operation `llm_requests`
//! (cost 1) and `llm_tokens` (cost `MAX_TOKENS`), waiting its turn (up to [`MAX_WAIT`]) as
//! soon as one of the `CONCURRENCY` slots is free. The tokens come from the embedded source
//! with those two rules, or, with `LIGHTRATE_API_KEY` and `LIGHTRATE_APPLICATION_ID`, from the
//! LightRate API, where a fleet of clients shares one quota: the application's rules for the
//! two operations are then the limits, and `RPS` and `TPS` only say what they should be. An
//! upstream 429 still spent a request, and no token; a call that got no answer at all keeps
//! its whole reservation.
//!
//! The exit status is 0 when every call was answered (a 429 is an answer), 1 otherwise, or
//! when a variable is wrong.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lightrate::{EnvSource, Limit, Limiter, RefillRate, Reservation, RuleSet, Target};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use tokio::sync::Semaphore;

/// The operation that counts requests.
const REQUESTS: &str = "llm_requests";

/// The operation that counts tokens.
const TOKENS: &str = "llm_tokens";

/// Whose quota the calls spend: one identifier for every client, so that a fleet on the
/// LightRate API shares the upstream's limits.
const ACCOUNT: &str = "upstream";

/// The longest a call waits for its turn before it gives up.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The longest a call waits for the upstream's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// A run, as the environment describes it.
#[derive(Clone, Debug)]
struct Config {
    /// `{UPSTREAM_URL}/v1/chat/completions`.
    endpoint: Url,
    /// Requests per second, and the burst of requests.
    rps: u64,
    /// Tokens per second, and the burst of tokens.
    tps: u64,
    /// How many calls.
    jobs: u64,
    /// How many calls in flight.
    concurrency: u64,
    /// Each call's `max_tokens`.
    max_tokens: u64,
    /// Whether calls are settled at their usage (else at their reservation).
    settle: bool,
}

impl Config {
    /// Reads every variable, each once; the first wrong one is the error.
    fn from_env() -> Result<Config, String> {
        let upstream = std::env::var("UPSTREAM_URL")
            .map_err(|_| "UPSTREAM_URL must be set to the API's base URL".to_owned())?;
        let endpoint = Url::parse(&format!(
            "{}/v1/chat/completions",
            upstream.trim().trim_end_matches('/')
        ))
        .ok()
        .filter(|url| matches!(url.scheme(), "http" | "https"))
        .ok_or_else(|| format!("UPSTREAM_URL must be an http(s) URL, not {upstream:?}"))?;
        let settle = match std::env::var("SETTLE") {
            Err(_) => true,
            Ok(value) => match value.trim() {
                "1" => true,
                "0" => false,
                _ => return Err(format!("SETTLE must be 0 or 1, not {value:?}")),
            },
        };
        let config = Config {
            endpoint,
            rps: positive("RPS", None)?,
            tps: positive("TPS", None)?,
            jobs: count("JOBS", 200)?,
            concurrency: positive("CONCURRENCY", Some(16))?,
            max_tokens: positive("MAX_TOKENS", Some(400))?,
            settle,
        };
        Ok(config)
    }

    /// The two rules of the embedded source: a burst of one second's worth each.
    fn rules(&self) -> Result<RuleSet, String> {
        RuleSet::builder()
            .default_rule(RefillRate::per_second(1), 1)
            .operation(
                REQUESTS,
                format!("^{REQUESTS}$"),
                RefillRate::per_second(self.rps),
                self.rps,
            )
            .operation(
                TOKENS,
                format!("^{TOKENS}$"),
                RefillRate::per_second(self.tps),
                self.tps,
            )
            .build()
            .map_err(|e| e.to_string())
    }
}

/// The variable `name`: a positive integer, or `default` when unset (required without one).
fn positive(name: &str, default: Option<u64>) -> Result<u64, String> {
    match (std::env::var(name), default) {
        (Err(_), Some(default)) => Ok(default),
        (Err(_), None) => Err(format!("{name} must be set to a positive integer")),
        (Ok(value), _) => value
            .trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{name} must be a positive integer, not {value:?}")),
    }
}

/// The variable `name`: an integer, 0 or more, or `default` when unset.
fn count(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(value) => value
            .trim()
            .parse()
            .map_err(|_| format!("{name} must be an integer, 0 or more, not {value:?}")),
    }
}

/// What one call came to.
#[derive(Debug)]
enum Outcome {
    /// Answered, with the tokens it used.
    Answered(u64),
    /// Refused by the upstream's own limits.
    TooManyRequests,
    /// No answer: why.
    Failed(String),
}

/// The upstream's answer, as far as it is read.
#[derive(Deserialize)]
struct Completion {
    usage: Usage,
}

/// What a call used.
#[derive(Deserialize)]
struct Usage {
    total_tokens: u64,
}

/// The counts of a run so far.
#[derive(Debug, Default)]
struct Counts {
    answered: AtomicU64,
    too_many: AtomicU64,
    failed: AtomicU64,
    tokens: AtomicU64,
}

/// What the calls of a run share.
#[derive(Debug)]
struct Run {
    config: Config,
    limiter: Limiter,
    http: reqwest::Client,
    counts: Counts,
}

impl Run {
    /// The limits of a call: one request, and `MAX_TOKENS` tokens.
    fn limits(&self) -> [Limit<'static>; 2] {
        [
            Limit::new(ACCOUNT, Target::operation(REQUESTS)),
            Limit::new(ACCOUNT, Target::operation(TOKENS)).with_cost(self.config.max_tokens),
        ]
    }

    /// Acquires the limits of the next call, waiting up to [`MAX_WAIT`] for its turn (woken
    /// early when a call settles below its reservation and gives tokens back).
    async fn acquire(&self) -> Result<Reservation, String> {
        match self.limiter.acquire(&self.limits(), MAX_WAIT).await {
            Ok(reservation) if reservation.is_allowed() => Ok(reservation),
            Ok(refused) => Err(format!(
                "its tokens would not exist for {} ms, past the wait of {} s",
                refused.retry_after().as_millis(),
                MAX_WAIT.as_secs()
            )),
            Err(e) => Err(format!("no tokens: {e}")),
        }
    }

    /// Sends a call, settles its reservation at what it used, and counts what it came to.
    async fn call(&self, reservation: Reservation) {
        let max_tokens = self.config.max_tokens;
        let outcome = self.send().await;
        // A 429 spent a request and no token; a call without an answer may have spent it all.
        let used = match outcome {
            Outcome::Answered(tokens) => tokens,
            Outcome::TooManyRequests => 0,
            Outcome::Failed(_) => max_tokens,
        };
        let used = if self.config.settle { used } else { max_tokens };
        let _ = reservation.settle(&[1, used]);
        self.count(outcome);
    }

    /// Sends a call to the upstream.
    async fn send(&self) -> Outcome {
        let body = serde_json::json!({ "max_tokens": self.config.max_tokens });
        let response = match self
            .http
            .post(self.config.endpoint.clone())
            .json(&body)
            .send()
            .await
        {
            Ok(response) => response,
            Err(e) => return Outcome::Failed(with_causes(&e)),
        };
        match response.status() {
            StatusCode::TOO_MANY_REQUESTS => Outcome::TooManyRequests,
            status if status.is_success() => match response.json::<Completion>().await {
                Ok(completion) => Outcome::Answered(completion.usage.total_tokens),
                Err(e) => {
                    Outcome::Failed(format!("an answer without its usage: {}", with_causes(&e)))
                }
            },
            status => Outcome::Failed(format!("the upstream answered {status}")),
        }
    }

    /// Counts what a call came to.
    fn count(&self, outcome: Outcome) {
        let counts = &self.counts;
        match outcome {
            Outcome::Answered(tokens) => {
                counts.answered.fetch_add(1, Ordering::Relaxed);
                counts.tokens.fetch_add(tokens, Ordering::Relaxed);
            }
            Outcome::TooManyRequests => {
                counts.too_many.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Failed(why) => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                eprintln!("llm_client: a call failed: {why}");
            }
        }
    }
}

/// An error and its causes, `: `-separated (reqwest's own message names no cause).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        message = format!("{message}: {e}");
        cause = e.source();
    }
    message
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("llm_client: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the calls and prints the last line; whether every call was answered.
async fn run() -> Result<bool, String> {
    let config = Config::from_env()?;
    let (builder, source) =
        Limiter::builder_from_env(config.rules()?).map_err(|e| e.to_string())?;
    match source {
        EnvSource::Embedded => {
            if config.max_tokens > config.tps {
                return Err(format!(
                    "MAX_TOKENS ({}) is more than TPS ({}), the burst of tokens: no call could \
                     ever be sent",
                    config.max_tokens, config.tps
                ));
            }
            eprintln!(
                "llm_client: {source}: {} requests/s and {} tokens/s",
                config.rps, config.tps
            );
        }
        _ => eprintln!("llm_client: tokens from {source}"),
    }
    let http = reqwest::Client::builder()
        .timeout(ANSWER_TIMEOUT)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let run = Arc::new(Run {
        limiter: builder.build(),
        http,
        counts: Counts::default(),
        config,
    });
    let concurrency = usize::try_from(run.config.concurrency)
        .unwrap_or(usize::MAX)
        .min(Semaphore::MAX_PERMITS);
    let in_flight = Arc::new(Semaphore::new(concurrency));
    let start = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..run.config.jobs {
        let slot = Arc::clone(&in_flight)
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        match run.acquire().await {
            Ok(reservation) => {
                let run = Arc::clone(&run);
                calls.spawn(async move {
                    run.call(reservation).await;
                    drop(slot);
                });
            }
            Err(why) => run.count(Outcome::Failed(why)),
        }
    }
    while let Some(call) = calls.join_next().await {
        call.map_err(|e| format!("a call stopped: {e}"))?;
    }
    let elapsed = start.elapsed();
    let counts = &run.counts;
    let failed = counts.failed.load(Ordering::Relaxed);
    println!(
        "jobs={} ok={} upstream_429={} elapsed_s={:.2} tokens_used={}",
        run.config.jobs,
        counts.answered.load(Ordering::Relaxed),
        counts.too_many.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        counts.tokens.load(Ordering::Relaxed),
    );
    Ok(failed == 0)
}
