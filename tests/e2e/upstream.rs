//! A rate-limited LLM API, for the LLM client's tests (`examples/llm_client.rs`): a real HTTP
//! server on 127.0.0.1:0 answering `POST /v1/chat/completions` (`{"max_tokens": M}`) with
//! `{"usage": {"total_tokens": U}}`, U = min(M, its configured usage), after its configured
//! latency (the time a completion takes).
//!
//! It enforces requests per second and tokens per second as two token buckets, each with a
//! burst of one second's worth, full at the start:
//!
//! - a request is charged to the requests bucket when it arrives, and answered 429 at once
//!   when the bucket holds less than one request;
//! - its U tokens are charged to the tokens bucket when it is answered, and it is answered
//!   429 instead when the bucket holds less than U, without charging them (the request it
//!   spent stays spent).
//!
//! The tokens are charged when they are known, at the answer: a client that reserves M tokens
//! before it sends and gives back M − U after the answer has held them since before this
//! server charges them, so the tokens bucket does not refuse it. The requests bucket is
//! strict: a request that follows its predecessor more closely at arrival than when its
//! client decided to send it (the first request slower, on a new connection) can find the
//! bucket a fraction of a request short. The server counts what it received, refused and
//! charged.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

/// Nano-tokens in a token: the buckets count in them, so that any whole rate per second adds
/// a whole number of them every nanosecond.
const NANOS: i128 = 1_000_000_000;

/// What an upstream allows, and answers.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamLimits {
    /// Requests per second, and the burst of requests.
    pub rps: u64,
    /// Tokens per second, and the burst of tokens.
    pub tps: u64,
    /// The tokens each completion uses (at most its request's `max_tokens`).
    pub usage: u64,
    /// How long a completion takes, between the request's arrival and its answer.
    pub latency: Duration,
}

/// What an upstream received, refused and charged so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpstreamCounts {
    /// Requests received.
    pub requests: u64,
    /// Requests answered 429, by either bucket.
    pub too_many: u64,
    /// Requests answered 429 by the tokens bucket (a request it spent, no tokens).
    pub too_many_tokens: u64,
    /// Tokens charged: the sum of the usage answered.
    pub tokens: u64,
    /// The fewest whole tokens the tokens bucket held just after a charge: how much of its
    /// burst its clients never used (0: all of it, at least once).
    pub lowest_tokens: u64,
}

/// A token bucket counted in nano-tokens, refilled continuously, full at the start.
#[derive(Debug)]
struct Bucket {
    level: i128,
    capacity: i128,
    /// Nano-tokens per nanosecond: the rate in tokens per second.
    per_ns: i128,
    updated: Instant,
}

impl Bucket {
    fn full(per_second: u64, now: Instant) -> Bucket {
        let per_second = i128::from(per_second);
        Bucket {
            level: per_second * NANOS,
            capacity: per_second * NANOS,
            per_ns: per_second,
            updated: now,
        }
    }

    /// Takes `tokens` if the bucket holds them at `now`; whether it did.
    fn take(&mut self, tokens: u64, now: Instant) -> bool {
        let elapsed = i128::try_from(now.saturating_duration_since(self.updated).as_nanos())
            .unwrap_or(i128::MAX);
        self.level = self
            .level
            .saturating_add(elapsed.saturating_mul(self.per_ns))
            .min(self.capacity);
        self.updated = self.updated.max(now);
        let wanted = i128::from(tokens) * NANOS;
        if self.level < wanted {
            return false;
        }
        self.level -= wanted;
        true
    }

    /// Whole tokens held.
    fn tokens(&self) -> u64 {
        u64::try_from(self.level / NANOS).unwrap_or(0)
    }
}

/// The server's state: its limits, buckets and counts.
#[derive(Debug)]
struct Limits {
    config: UpstreamLimits,
    requests: Bucket,
    tokens: Bucket,
    counts: UpstreamCounts,
}

type Shared = Arc<Mutex<Limits>>;

/// The body of a completion request, as far as it is read.
#[derive(Deserialize)]
struct CompletionRequest {
    max_tokens: u64,
}

/// An upstream serving on 127.0.0.1; stopped when dropped.
#[derive(Debug)]
pub struct Upstream {
    base_url: String,
    limits: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// Starts an upstream with `limits` on the current tokio runtime, its buckets full.
    pub async fn start(limits: UpstreamLimits) -> Upstream {
        let now = Instant::now();
        let shared: Shared = Arc::new(Mutex::new(Limits {
            config: limits,
            requests: Bucket::full(limits.rps, now),
            tokens: Bucket::full(limits.tps, now),
            counts: UpstreamCounts {
                lowest_tokens: limits.tps,
                ..UpstreamCounts::default()
            },
        }));
        let app = Router::new()
            .route("/v1/chat/completions", post(complete))
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Upstream {
            base_url: format!("http://{address}"),
            limits: shared,
            task,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// What it received, refused and charged so far.
    pub fn counts(&self) -> UpstreamCounts {
        lock(&self.limits).counts
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(limits: &Shared) -> std::sync::MutexGuard<'_, Limits> {
    limits.lock().unwrap_or_else(|e| e.into_inner())
}

/// `POST /v1/chat/completions`: the request charged on arrival, its usage on the answer.
async fn complete(
    State(limits): State<Shared>,
    Json(request): Json<CompletionRequest>,
) -> (StatusCode, Json<Value>) {
    let (usage, latency) = {
        let mut limits = lock(&limits);
        limits.counts.requests += 1;
        if !limits.requests.take(1, Instant::now()) {
            limits.counts.too_many += 1;
            return too_many("requests per second");
        }
        let config = limits.config;
        (request.max_tokens.min(config.usage), config.latency)
    };
    tokio::time::sleep(latency).await;
    let mut limits = lock(&limits);
    if !limits.tokens.take(usage, Instant::now()) {
        limits.counts.too_many += 1;
        limits.counts.too_many_tokens += 1;
        return too_many("tokens per second");
    }
    let left = limits.tokens.tokens();
    let counts = &mut limits.counts;
    counts.tokens += usage;
    counts.lowest_tokens = counts.lowest_tokens.min(left);
    (
        StatusCode::OK,
        Json(json!({ "usage": { "total_tokens": usage } })),
    )
}

fn too_many(limit: &str) -> (StatusCode, Json<Value>) {
    (
        StatusCode::TOO_MANY_REQUESTS,
        Json(json!({ "error": { "type": "rate_limit_exceeded", "limit": limit } })),
    )
}
