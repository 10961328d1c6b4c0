//! Token sources for tests and benchmarks.

use std::sync::{Arc, Mutex, MutexGuard};

use lightrate_core::{
    ConsumeRequest, ConsumeTokensResponse, EmbeddedSource, Error, Limiter, ManualClock,
    OnUnavailable, RefillRate, Rule, RuleSet, TokenSource,
};

/// Grants whatever is asked, under one rule (every `GET` path), keeping no state of its own:
/// after the first request every request is a local hit, and what is measured is the limiter
/// (or the middleware) alone.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unlimited;

impl TokenSource for Unlimited {
    async fn consume_tokens(
        &self,
        request: ConsumeRequest<'_>,
    ) -> Result<ConsumeTokensResponse, Error> {
        Ok(ConsumeTokensResponse {
            tokens_remaining: 1 << 40,
            tokens_consumed: request.tokens_requested,
            throttles: 0,
            rule: Rule {
                id: "unlimited".into(),
                name: "Unlimited".into(),
                refill_rate: RefillRate::per_second(1 << 30),
                burst_rate: 1 << 40,
                is_default: false,
                matcher: Some("^/".into()),
                http_method: Some("GET".into()),
            },
        })
    }
}

/// The embedded source with the demo rules on a manual clock, recording every call's target
/// and size, and failing with a given error on demand.
#[derive(Debug)]
pub struct Recording {
    inner: EmbeddedSource,
    calls: Mutex<Vec<(String, u64)>>,
    fail: Mutex<Option<Error>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Recording {
    /// The demo rules (`RuleSet::demo`), time standing still.
    pub fn demo() -> Arc<Self> {
        Arc::new(Recording {
            inner: EmbeddedSource::new(RuleSet::demo()).with_clock(ManualClock::new()),
            calls: Mutex::new(Vec::new()),
            fail: Mutex::new(None),
        })
    }

    /// A limiter over this source leasing one token per call, so that every decision is one
    /// recorded call, with `policy` for an unavailable source.
    pub fn limiter(self: &Arc<Self>, policy: OnUnavailable) -> Limiter {
        Limiter::builder(self.clone())
            .clock(ManualClock::new())
            .lease_size(1)
            .refill_ahead(false)
            .on_unavailable(policy)
            .build()
    }

    /// Every call so far: (target, tokens requested).
    pub fn calls(&self) -> Vec<(String, u64)> {
        lock(&self.calls).clone()
    }

    /// From now on, every call fails with `error` (or succeeds again, with `None`).
    pub fn fail_with(&self, error: Option<Error>) {
        *lock(&self.fail) = error;
    }
}

impl TokenSource for Recording {
    async fn consume_tokens(
        &self,
        request: ConsumeRequest<'_>,
    ) -> Result<ConsumeTokensResponse, Error> {
        lock(&self.calls).push((request.target.to_string(), request.tokens_requested));
        if let Some(error) = lock(&self.fail).clone() {
            return Err(error);
        }
        self.inner.consume_now(request)
    }
}
