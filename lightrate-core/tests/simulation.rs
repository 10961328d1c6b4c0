//! Four limiter instances (four processes of one service) against one embedded source, on a
//! manual clock, under random traffic for twenty simulated minutes.
//!
//! Checks the bounds the design states: the limiters never admit more than the source granted,
//! and for every (user, rule) and every window T, admitted ≤ burst + refill·T + P·(S + L)
//! (P processes, S the lease size, L the low-water mark of refill-ahead, 0 without it).
#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lightrate_core::http::Method;
use lightrate_core::{
    Clock, ConsumeRequest, ConsumeTokensResponse, DecisionSource, EmbeddedSource, Error, Limiter,
    ManualClock, RuleSet, Target, Timestamp, TokenSource,
};

/// The shared source, counting what it grants.
struct Counted {
    inner: EmbeddedSource,
    granted: AtomicU64,
}

impl TokenSource for Counted {
    async fn consume_tokens(
        &self,
        request: ConsumeRequest<'_>,
    ) -> Result<ConsumeTokensResponse, Error> {
        let answer = self.inner.consume_now(request)?;
        self.granted
            .fetch_add(answer.tokens_consumed, Ordering::SeqCst);
        Ok(answer)
    }
}

const PROCESSES: usize = 4;
const LEASE: u64 = 5;

struct Outcome {
    admitted: u64,
    granted: u64,
    expired: u64,
    calls: u64,
    requests: u64,
}

fn simulate(seed: u64, refill_ahead: bool) -> Outcome {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let clock = ManualClock::new();
        clock.advance(Duration::from_secs(1));
        let source = Arc::new(Counted {
            inner: EmbeddedSource::new(RuleSet::demo()).with_clock(clock.clone()),
            granted: AtomicU64::new(0),
        });
        let limiters: Vec<Limiter> = (0..PROCESSES)
            .map(|_| {
                Limiter::builder(source.clone())
                    .clock(clock.clone())
                    .lease_size(LEASE)
                    .refill_ahead(refill_ahead)
                    .build()
            })
            .collect();
        let low_water = if refill_ahead { LEASE / 2 } else { 0 };
        let targets = [
            Target::operation("send_email"),       // burst 10, 1/s
            Target::path(Method::GET, "/hello"),   // burst 20, 1/s
            Target::path(Method::GET, "/items/1"), // default: burst 5, 1/s
            Target::path(Method::GET, "/items/2"), // default
        ];
        let mut rng = fastrand::Rng::with_seed(seed);
        // (user, rule id) -> times of admitted requests.
        let mut admitted_at: HashMap<(usize, String), Vec<Timestamp>> = HashMap::new();
        let mut requests = 0;
        let end = clock.now() + Duration::from_secs(20 * 60);
        while clock.now() < end {
            // Bursts and lulls: mostly short gaps, sometimes long ones (past the bucket TTL).
            let gap = match rng.u32(0..100) {
                0..=79 => rng.u64(0..150),
                80..=97 => rng.u64(150..3_000),
                _ => rng.u64(3_000..90_000),
            };
            clock.advance(Duration::from_millis(gap));
            let process = rng.usize(0..PROCESSES);
            let user = rng.usize(0..3);
            let target = &targets[rng.usize(0..targets.len())];
            let name = format!("user-{user}");
            let decision = limiters[process].check(&name, target).await.unwrap();
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

        let rules = RuleSet::demo();
        for ((user, rule_id), times) in &admitted_at {
            let rule = rules.rules().find(|r| r.id == *rule_id).unwrap();
            let rate = rule.refill_rate.millitokens_per_second() as u128; // per 1000 s
            let slack =
                rule.burst_rate as u128 + (PROCESSES as u128) * u128::from(LEASE + low_water);
            // Every window that starts and ends on an admission (the tightest ones).
            for i in 0..times.len() {
                for j in i..times.len() {
                    let count = (j - i + 1) as u128;
                    let window_ns = times[j].as_nanos() as u128 - times[i].as_nanos() as u128;
                    // count ≤ slack + rate·T, in thousandths of a token per nanosecond units.
                    let allowed = slack * 1_000_000_000_000 + rate * window_ns;
                    assert!(
                        count * 1_000_000_000_000 <= allowed,
                        "user {user}, rule {rule_id}: {count} admitted in {:?} (bound {} + {}/s·T)",
                        Duration::from_nanos(window_ns as u64),
                        slack,
                        rule.refill_rate
                    );
                }
            }
        }
        let admitted: u64 = admitted_at.values().map(|v| v.len() as u64).sum();
        let granted = source.granted.load(Ordering::SeqCst);
        let stats: Vec<_> = limiters.iter().map(Limiter::stats).collect();
        Outcome {
            admitted,
            granted,
            expired: stats.iter().map(|s| s.expired_tokens).sum(),
            calls: stats.iter().map(|s| s.source_calls).sum(),
            requests,
        }
    })
}

fn check(seed: u64, refill_ahead: bool) {
    let o = simulate(seed, refill_ahead);
    println!(
        "seed {seed}, refill-ahead {refill_ahead}: {} requests, {} admitted, {} granted by the \
         source, {} expired unused in local buckets, {} source calls",
        o.requests, o.admitted, o.granted, o.expired, o.calls
    );
    assert!(o.admitted <= o.granted, "admitted more than granted");
    assert!(o.admitted > 0);
    // Local buckets serve most admitted requests without a call.
    assert!(
        o.calls < o.requests,
        "{} calls for {} requests",
        o.calls,
        o.requests
    );
}

#[test]
fn four_processes_respect_the_bounds_without_refill_ahead() {
    for seed in [1, 2, 3] {
        check(seed, false);
    }
}

#[test]
fn four_processes_respect_the_bounds_with_refill_ahead() {
    for seed in [4, 5, 6] {
        check(seed, true);
    }
}
