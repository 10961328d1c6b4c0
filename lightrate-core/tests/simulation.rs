//! A fleet of P limiters (P processes of one service) against one embedded source, in
//! simulated time: tokio's paused clock drives the traffic, the source's latency and every
//! limiter's clock, so requests overlap and wait for leases as they would in production.
//!
//! For P = 1, 4, 16 and 64, sources 0, 20 and 50 ms away, and three kinds of traffic (hot,
//! sparse, uneven), it checks what the design promises:
//!
//! - the fleet never admits more than the source granted;
//! - per (user, rule), every window T holds at most `burst + refill·(T + H)` admissions,
//!   whatever P is (H, the token horizon, bounds the age of a leased token);
//! - no request is denied while the source held tokens for it (no false denials);
//! - under sparse traffic, under 5% of the tokens granted expire unused;
//! - uneven demand on a quota strands (almost) nothing: 990 to 1000 of 1000 admitted.
//!
//! It prints calls per admitted request for each run (see BENCHMARKS.md).
#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lightrate_core::http::Method;
use lightrate_core::{
    Clock, ConsumeRequest, ConsumeTokensResponse, DecisionSource, EmbeddedSource, Error, Limiter,
    RefillRate, RuleSet, RuleSpec, Target, Timestamp, TokenSource, DEFAULT_TOKEN_HORIZON,
};

/// Simulated time: tokio's (paused) clock, from one second after the start.
#[derive(Clone, Copy, Debug)]
struct SimClock(tokio::time::Instant);

impl Clock for SimClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_nanos(1_000_000_000 + self.0.elapsed().as_nanos() as u64)
    }
}

/// The shared source: `latency` away (the grant happens half-way), counting what it grants.
struct SimSource {
    inner: EmbeddedSource,
    latency: Duration,
    granted: AtomicU64,
    calls: AtomicU64,
}

impl TokenSource for SimSource {
    async fn consume_tokens(
        &self,
        request: ConsumeRequest<'_>,
    ) -> Result<ConsumeTokensResponse, Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.latency / 2).await;
        let answer = self.inner.consume_now(request)?;
        self.granted
            .fetch_add(answer.tokens_consumed, Ordering::SeqCst);
        tokio::time::sleep(self.latency / 2).await;
        Ok(answer)
    }
}

fn rules() -> RuleSet {
    RuleSet::builder()
        .default_rule(RefillRate::per_second(1), 5)
        .rule(
            RuleSpec::operation(
                "search",
                "^search$",
                RefillRate::per_second(100_000),
                100_000,
            )
            .with_id("search"),
        )
        .rule(
            RuleSpec::operation("send email", "^send_email$", RefillRate::per_second(1), 10)
                .with_id("email"),
        )
        .rule(
            RuleSpec::path(Method::GET, "^/hello", RefillRate::per_second(1), 20).with_id("hello"),
        )
        .rule(
            RuleSpec::operation("quota", "^quota$", RefillRate::per_hour(1), 1000).with_id("quota"),
        )
        .build()
        .unwrap()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Traffic {
    /// 100 requests/s per process from 2 users: mostly `search` (room to spare), some
    /// near-limit rules.
    Hot,
    /// 0.8 requests/s over 36 (user, target) pairs.
    Sparse,
    /// One user's quota of 1000: 5 requests on the first process, 300/s on the others.
    Uneven,
}

/// One request's fate.
#[derive(Debug)]
struct Record {
    at: Timestamp,
    user: usize,
    rule: String,
    allowed: bool,
    false_denial: bool,
}

#[derive(Debug, Default)]
struct Outcome {
    requests: u64,
    admitted: u64,
    granted: u64,
    expired: u64,
    calls: u64,
    false_denials: u64,
    quota_admitted: u64,
}

fn simulate(traffic: Traffic, processes: usize, latency: Duration, seed: u64) -> Outcome {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async move {
        let clock = SimClock(tokio::time::Instant::now());
        let source = Arc::new(SimSource {
            inner: EmbeddedSource::new(rules()).with_clock(clock),
            latency,
            granted: AtomicU64::new(0),
            calls: AtomicU64::new(0),
        });
        let limiters: Vec<Limiter> = (0..processes)
            .map(|_| Limiter::builder(source.clone()).clock(clock).build())
            .collect();
        let records = Arc::new(Mutex::new(Vec::<Record>::new()));
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut tasks = tokio::task::JoinSet::new();

        let (duration, rate_per_s) = match traffic {
            Traffic::Hot => (Duration::from_secs(5), 100.0 * processes as f64),
            Traffic::Sparse => (Duration::from_secs(30 * 60), 0.8),
            Traffic::Uneven => (Duration::from_secs(10), 300.0),
        };
        let start = tokio::time::Instant::now();
        let mut at = start;
        let mut uneven_light = 0;
        loop {
            // Poisson arrivals.
            let gap = -(1.0 - rng.f64()).ln() / rate_per_s;
            at += Duration::from_secs_f64(gap);
            if at >= start + duration {
                break;
            }
            tokio::time::sleep_until(at).await;
            let (process, user, target) = match traffic {
                Traffic::Hot => {
                    let target = match rng.u32(0..100) {
                        0..=69 => Target::operation("search"),
                        70..=79 => Target::operation("send_email"),
                        _ => Target::path(Method::GET, "/hello"),
                    };
                    (rng.usize(0..processes), rng.usize(0..2), target)
                }
                Traffic::Sparse => {
                    let target = match rng.u32(0..3) {
                        0 => Target::operation("send_email"),
                        1 => Target::path(Method::GET, "/hello"),
                        _ => Target::path(Method::GET, "/items/1"),
                    };
                    (rng.usize(0..processes), rng.usize(0..12), target)
                }
                Traffic::Uneven => {
                    // The first process sees 5 requests, spread over the run; the others
                    // all the rest.
                    let light = processes > 1 && uneven_light < 5 && rng.u32(0..600) == 0;
                    let process = if processes == 1 || light {
                        uneven_light += usize::from(light);
                        0
                    } else {
                        rng.usize(1..processes)
                    };
                    (process, 0, Target::operation("quota"))
                }
            };
            let limiter = limiters[process].clone();
            let source = source.clone();
            let records = records.clone();
            tasks.spawn(async move {
                let name = format!("user-{user}");
                let decision = limiter.check(&name, &target).await.unwrap();
                assert_ne!(decision.source(), DecisionSource::Unavailable);
                let rule = limiter
                    .rule_id(&decision.rule().unwrap())
                    .unwrap()
                    .to_string();
                // A false denial: the source holds a token for it now, beyond what could have
                // become whole since the answer that denied it was made (half a latency ago,
                // plus the millisecond its answer is rounded to: at most one more than the
                // whole tokens the rate adds in that time, a fraction being already there).
                let available = source.inner.available(&name, &target);
                let window = latency / 2 + Duration::from_millis(1);
                let rate = decision.rule().unwrap().refill_rate();
                let accrued = rate.tokens_in(window) + u64::from(!rate.is_zero());
                let false_denial = !decision.is_allowed() && available > accrued;
                records.lock().unwrap().push(Record {
                    at: SimClock(clock.0).now(),
                    user,
                    rule,
                    allowed: decision.is_allowed(),
                    false_denial,
                });
            });
        }
        while tasks.join_next().await.is_some() {}
        // Let background leases land.
        tokio::time::sleep(Duration::from_secs(1)).await;

        let records = records.lock().unwrap();
        check_window_bound(&records);
        let stats: Vec<_> = limiters.iter().map(Limiter::stats).collect();
        Outcome {
            requests: records.len() as u64,
            admitted: records.iter().filter(|r| r.allowed).count() as u64,
            granted: source.granted.load(Ordering::SeqCst),
            expired: stats.iter().map(|s| s.expired_tokens).sum(),
            calls: source.calls.load(Ordering::SeqCst),
            false_denials: records.iter().filter(|r| r.false_denial).count() as u64,
            quota_admitted: records
                .iter()
                .filter(|r| r.allowed && r.rule == "quota")
                .count() as u64,
        }
    })
}

/// Per (user, rule), every window [t_i, t_j] between two admissions holds at most
/// `burst + refill·(T + H)` of them. Exact integer arithmetic in the rate's units.
fn check_window_bound(records: &[Record]) {
    let rules = rules();
    let horizon = DEFAULT_TOKEN_HORIZON.as_nanos() as i128;
    let mut admitted: HashMap<(usize, &str), Vec<i128>> = HashMap::new();
    for r in records.iter().filter(|r| r.allowed) {
        admitted
            .entry((r.user, r.rule.as_str()))
            .or_default()
            .push(i128::from(r.at.as_nanos() as i64));
    }
    for ((user, rule_id), mut times) in admitted {
        times.sort_unstable();
        let rule = rules.rules().find(|r| r.id == rule_id).unwrap();
        let (a, period_ms) = rule.refill_rate.tokens_per_period();
        // One token is `unit` units; the rate adds `a` units per nanosecond.
        let unit = i128::from(period_ms) * 1_000_000;
        let a = i128::from(a);
        let burst = i128::from(rule.burst_rate);
        // (j - i + 1)·unit ≤ burst·unit + a·(t_j - t_i + H) for all i ≤ j, i.e.
        // max_{j ≥ i} [(j + 1)·unit - a·t_j] ≤ burst·unit + a·H + i·unit - a·t_i.
        let g: Vec<i128> = times
            .iter()
            .enumerate()
            .map(|(j, t)| (j as i128 + 1) * unit - a * t)
            .collect();
        let mut suffix_max = i128::MIN;
        for i in (0..times.len()).rev() {
            suffix_max = suffix_max.max(g[i]);
            let limit = burst * unit + a * horizon + i as i128 * unit - a * times[i];
            assert!(
                suffix_max <= limit,
                "user {user}, rule {rule_id}: a window from admission {i} holds more than \
                 burst + refill·(T + H)"
            );
        }
    }
}

fn run(traffic: Traffic) -> Vec<(usize, Duration, Outcome)> {
    let mut out = Vec::new();
    for (i, processes) in [1, 4, 16, 64].into_iter().enumerate() {
        for (j, latency_ms) in [0, 20, 50].into_iter().enumerate() {
            let latency = Duration::from_millis(latency_ms);
            let o = simulate(traffic, processes, latency, (i * 10 + j) as u64 + 1);
            println!(
                "{traffic:?}: P={processes:<2} latency {latency_ms:>2} ms: {} requests, {} \
                 admitted, {} granted, {} expired unused ({:.1}%), {} calls ({:.3} per admitted), \
                 {} false denials",
                o.requests,
                o.admitted,
                o.granted,
                o.expired,
                100.0 * o.expired as f64 / o.granted.max(1) as f64,
                o.calls,
                o.calls as f64 / o.admitted.max(1) as f64,
                o.false_denials,
            );
            assert!(o.admitted <= o.granted, "admitted more than granted");
            assert!(o.admitted > 0);
            assert_eq!(o.false_denials, 0, "denied while the source had tokens");
            out.push((processes, latency, o));
        }
    }
    out
}

#[test]
fn hot_traffic_keeps_the_bounds_for_any_fleet() {
    for (processes, latency, o) in run(Traffic::Hot) {
        // Most admissions are local: well under one call per admitted request.
        assert!(
            o.calls * 2 < o.admitted,
            "P={processes}, {latency:?}: {} calls for {} admitted",
            o.calls,
            o.admitted
        );
    }
}

#[test]
fn sparse_traffic_wastes_under_five_percent() {
    for (processes, latency, o) in run(Traffic::Sparse) {
        assert!(
            o.expired * 20 < o.granted,
            "P={processes}, {latency:?}: {} of {} granted tokens expired unused",
            o.expired,
            o.granted
        );
    }
}

#[test]
fn uneven_demand_strands_nothing_of_a_quota() {
    for (processes, latency, o) in run(Traffic::Uneven) {
        assert!(
            (990..=1000).contains(&o.quota_admitted),
            "P={processes}, {latency:?}: {} of the quota of 1000 admitted",
            o.quota_admitted
        );
    }
}
