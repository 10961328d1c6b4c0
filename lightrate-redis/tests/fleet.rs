//! Four limiters (four processes of one service), each over its own `RedisSource` on one Redis,
//! under random traffic for twenty simulated minutes (a manual clock drives the limiters and,
//! through the `test-util` hook, the script's time).
//!
//! Checks: the fleet never admits more than Redis granted, and per (user, rule), in every
//! window T between two admissions, admitted ≤ burst + refill·(T + H) (H the limiters' token
//! horizon), whatever the number of processes.
#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lightrate_core::http::Method;
use lightrate_core::{
    Clock, ConsumeRequest, ConsumeTokensResponse, DecisionSource, Error, Limiter, ManualClock,
    RuleSet, Target, Timestamp, TokenSource, DEFAULT_TOKEN_HORIZON,
};
use lightrate_redis::test_util::RedisServer;
use lightrate_redis::RedisSource;

/// The grants of every source, counted.
static GRANTED: AtomicU64 = AtomicU64::new(0);

/// One process's source, counting what Redis grants it.
struct Counted(RedisSource);

impl TokenSource for Counted {
    async fn consume_tokens(
        &self,
        request: ConsumeRequest<'_>,
    ) -> Result<ConsumeTokensResponse, Error> {
        let answer = self.0.consume_tokens(request).await?;
        GRANTED.fetch_add(answer.tokens_consumed, Ordering::SeqCst);
        Ok(answer)
    }
}

const PROCESSES: usize = 4;
const LEASE: u64 = 5;

async fn simulate(url: &str, seed: u64, refill_ahead: bool) {
    let clock = ManualClock::new();
    clock.advance(Duration::from_secs(1));
    let application = support::unique_app();
    let limiters: Vec<Limiter> = (0..PROCESSES)
        .map(|_| {
            let source = RedisSource::builder(RuleSet::demo())
                .application_id(application.clone())
                .clock(clock.clone())
                .connect(url)
                .unwrap();
            Limiter::builder(Counted(source))
                .clock(clock.clone())
                .lease_size(LEASE)
                .refill_ahead(refill_ahead)
                .build()
        })
        .collect();
    let targets = [
        Target::operation("send_email"),       // burst 10, 1/s
        Target::path(Method::GET, "/hello"),   // burst 20, 1/s
        Target::path(Method::GET, "/items/1"), // default: burst 5, 1/s
        Target::path(Method::GET, "/items/2"), // default
    ];
    let granted_before = GRANTED.load(Ordering::SeqCst);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut admitted_at: HashMap<(usize, String), Vec<Timestamp>> = HashMap::new();
    let mut requests = 0;
    let end = clock.now() + Duration::from_secs(20 * 60);
    while clock.now() < end {
        let gap = match rng.u32(0..100) {
            0..=79 => rng.u64(0..150),
            80..=97 => rng.u64(150..3_000),
            _ => rng.u64(3_000..90_000),
        };
        clock.advance(Duration::from_millis(gap));
        let process = rng.usize(0..PROCESSES);
        let user = rng.usize(0..3);
        let target = &targets[rng.usize(0..targets.len())];
        let decision = limiters[process]
            .check(&format!("user-{user}"), target)
            .await
            .unwrap();
        requests += 1;
        assert_ne!(decision.source(), DecisionSource::Unavailable);
        if decision.is_allowed() {
            let rule = limiters[process]
                .rule_id(&decision.rule().unwrap())
                .unwrap();
            admitted_at
                .entry((user, rule.to_string()))
                .or_default()
                .push(clock.now());
        }
        // Let background leases land, as other tasks would run in a real server.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
    }
    // A background lease still in flight has admitted nothing yet: it need not be awaited.

    let rules = RuleSet::demo();
    let horizon = DEFAULT_TOKEN_HORIZON.as_nanos();
    for ((user, rule_id), times) in &admitted_at {
        let rule = rules.rules().find(|r| r.id == *rule_id).unwrap();
        // One token is `unit` units; the rate adds `per_ns` units per nanosecond.
        let (per_ns, period_ms) = rule.refill_rate.tokens_per_period();
        let (per_ns, unit) = (u128::from(per_ns), u128::from(period_ms) * 1_000_000);
        let burst = u128::from(rule.burst_rate);
        for i in 0..times.len() {
            for j in i..times.len() {
                let count = (j - i + 1) as u128;
                let window_ns = u128::from(times[j].as_nanos() - times[i].as_nanos());
                assert!(
                    count * unit <= burst * unit + per_ns * (window_ns + horizon),
                    "user {user}, rule {rule_id}: {count} admitted in {:?}",
                    Duration::from_nanos(window_ns as u64)
                );
            }
        }
    }
    let admitted: u64 = admitted_at.values().map(|v| v.len() as u64).sum();
    let granted = GRANTED.load(Ordering::SeqCst) - granted_before;
    let calls: u64 = limiters.iter().map(|l| l.stats().source_calls).sum();
    println!(
        "seed {seed}, refill-ahead {refill_ahead}: {requests} requests, {admitted} admitted, \
         {granted} granted by Redis, {calls} Redis calls"
    );
    assert!(
        admitted <= granted,
        "admitted {admitted} > granted {granted}"
    );
    assert!(admitted > 0);
}

#[tokio::test]
async fn four_limiters_on_one_redis_respect_the_bounds() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // The sources share GRANTED: one simulation at a time.
    for (seed, refill_ahead) in [(1, false), (2, false), (3, true), (4, true)] {
        simulate(&redis.url(), seed, refill_ahead).await;
    }
}
