//! Token sources for tests and benchmarks.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lightrate_core::{
    ConsumeRequest, ConsumeTokensResponse, EmbeddedSource, Error, Limiter, LimiterBuilder,
    ManualClock, OnUnavailable, RefillRate, Rule, RuleSet, Target, TokenSource, MAX_LEASE_SIZE,
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
        Ok(granted_all(
            &request,
            Rule {
                id: "unlimited".into(),
                name: "Unlimited".into(),
                is_default: false,
                matcher: Some("^/".into()),
                http_method: Some("GET".into()),
                ..UNLIMITED_RULE
            },
        ))
    }
}

/// The rates of the unlimited sources' rules (2^30 a second, burst 2^40); the rest is each
/// source's own.
const UNLIMITED_RULE: Rule = Rule {
    id: String::new(),
    name: String::new(),
    refill_rate: RefillRate::per_second(1 << 30),
    burst_rate: 1 << 40,
    is_default: false,
    matcher: None,
    http_method: None,
};

/// An answer granting everything `request` asked, under `rule`, out of a budget that never
/// runs out.
fn granted_all(request: &ConsumeRequest<'_>, rule: Rule) -> ConsumeTokensResponse {
    ConsumeTokensResponse {
        tokens_remaining: 1 << 40,
        tokens_consumed: request.tokens_requested,
        throttles: 0,
        rule,
        retry_after_ms: None,
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
        Recording::with_rules(RuleSet::demo())
    }

    /// One default rule with room to spare (1 000 tokens a second, a burst of 10 000), time
    /// standing still: leases grow past one request's cost.
    pub fn ample() -> Arc<Self> {
        Recording::with_rules(
            RuleSet::builder()
                .default_rule(RefillRate::per_second(1000), 10_000)
                .build()
                .unwrap_or_else(|_| unreachable!("one default rule is valid")),
        )
    }

    /// These rules, time standing still.
    pub fn with_rules(rules: RuleSet) -> Arc<Self> {
        Arc::new(Recording {
            inner: EmbeddedSource::new(rules).with_clock(ManualClock::new()),
            calls: Mutex::new(Vec::new()),
            fail: Mutex::new(None),
        })
    }

    /// A limiter over this source leasing one token per call, so that every decision is one
    /// recorded call, with `policy` for an unavailable source.
    pub fn limiter(self: &Arc<Self>, policy: OnUnavailable) -> Limiter {
        self.builder(1).on_unavailable(policy).build()
    }

    /// A limiter builder over this source leasing `lease_size` tokens per call, without
    /// refill-ahead, time standing still.
    pub fn builder(self: &Arc<Self>, lease_size: u64) -> LimiterBuilder {
        Limiter::builder(self.clone())
            .clock(ManualClock::new())
            .lease_size(lease_size)
            .refill_ahead(false)
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

impl Unlimited {
    /// A limiter over [`Unlimited`] that never runs out: leases as large as the cap, no
    /// refill-ahead, hour-long TTLs. After the first two requests of a (user, target) (the
    /// first learns the rule, the second leases), every one is a local hit.
    pub fn limiter() -> Limiter {
        unlimited_limiter(Unlimited)
    }
}

/// Grants whatever is asked, as [`Unlimited`] does, but under one rule per target (its id the
/// target's operation or path, its matcher that name exactly): two limits of a user on two
/// targets are two rules, two buckets, as a per-second and a per-day limit are.
/// Names are used as regular expressions unescaped: keep them to letters, digits, `/`, `_`.
#[derive(Clone, Copy, Debug, Default)]
pub struct UnlimitedPerTarget;

impl TokenSource for UnlimitedPerTarget {
    async fn consume_tokens(
        &self,
        request: ConsumeRequest<'_>,
    ) -> Result<ConsumeTokensResponse, Error> {
        let (name, method) = match request.target {
            Target::Operation(op) => (op.to_string(), None),
            Target::Path { method, path } => (path.to_string(), Some(method.to_string())),
            Target::Default => ("default".to_owned(), None),
        };
        let rule = Rule {
            id: name.clone(),
            name: name.clone(),
            is_default: matches!(request.target, Target::Default),
            matcher: Some(format!("^{name}$")),
            http_method: method,
            ..UNLIMITED_RULE
        };
        Ok(granted_all(&request, rule))
    }
}

impl UnlimitedPerTarget {
    /// A limiter over [`UnlimitedPerTarget`] set up as [`Unlimited::limiter`] is.
    pub fn limiter() -> Limiter {
        unlimited_limiter(UnlimitedPerTarget)
    }
}

/// A limiter that never runs out: leases as large as the cap, no refill-ahead, hour-long TTLs.
fn unlimited_limiter(source: impl TokenSource) -> Limiter {
    Limiter::builder(source)
        .lease_size(MAX_LEASE_SIZE)
        .min_lease_size(MAX_LEASE_SIZE)
        .refill_ahead(false)
        .bucket_ttl(Duration::from_secs(3600))
        .rule_ttl(Duration::from_secs(3600))
        .build()
}
