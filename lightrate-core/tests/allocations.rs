//! What the allocator says: a local hit allocates nothing, nor does a local in-flight slot or a
//! local reserve and settle; a
//! live bucket costs under 256 bytes; memory stays flat under a stream of new users.
//!
//! One test binary with a counting global allocator; the tests take turns (the counts are
//! process-wide).
#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

use std::sync::Mutex;
use std::time::Duration;

use lightrate_core::http::Method;
use lightrate_core::{ConsumeRequest, InFlight, Limit, Limiter, ManualClock, RefillRate, Target};
use lightrate_testing::{allocations, live_bytes, new_buckets, Counting, Unlimited};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// Memory reached early is reused later: the late peak of live bytes is within 25% of the
/// early one (a table resize). Returns the late peak.
fn assert_flat(early: &[isize], late: &[isize]) -> isize {
    let early = *early.iter().max().unwrap();
    let late = *late.iter().max().unwrap();
    assert!(
        late <= early + early / 4,
        "early {early} bytes, late {late} bytes"
    );
    late
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// A limiter of an unlimited source leasing up to 1 000 000 tokens at a time, so that the
/// hits of a test never run dry; no refill-ahead.
fn ample_limiter() -> Limiter {
    Limiter::builder(Unlimited)
        .lease_size(1_000_000)
        .min_lease_size(1_000_000)
        .refill_ahead(false)
        .build()
}

#[test]
fn a_local_hit_allocates_nothing() {
    let _turn = turn();
    let runtime = runtime();
    let limiter = ample_limiter();
    let targets = [
        Target::path(Method::GET, "/m/items"),
        Target::path(Method::GET, "/m/other"),
    ];
    for target in &targets {
        for user in ["alice", "a-user-identifier-longer-than-22-bytes"] {
            // The first learns the rule; the second leases for the bucket.
            runtime.block_on(limiter.check(user, target)).unwrap();
            runtime.block_on(limiter.check(user, target)).unwrap();
            // Warm this thread's epoch registration and target memo.
            limiter.check_local(user, target, 1).unwrap();
        }
    }
    let before = allocations();
    let mut allowed = 0;
    for i in 0..10_000 {
        let user = if i % 2 == 0 {
            "alice"
        } else {
            "a-user-identifier-longer-than-22-bytes"
        };
        let decision = limiter.check_local(user, &targets[i % 2], 1).unwrap();
        allowed += usize::from(decision.is_allowed());
    }
    let allocations = allocations() - before;
    assert_eq!(allowed, 10_000);
    assert_eq!(
        allocations, 0,
        "{allocations} allocations in 10 000 local hits"
    );
}

#[test]
fn two_limits_decided_locally_allocate_nothing() {
    let _turn = turn();
    let runtime = runtime();
    let limiter = ample_limiter();
    let limits = [
        Limit::new("alice", Target::operation("search_per_second")),
        Limit::new("alice", Target::operation("search_per_day")),
        Limit::new("acme", Target::operation("org_reports")),
    ];
    for _ in 0..3 {
        assert!(runtime
            .block_on(limiter.check_all(&limits))
            .unwrap()
            .is_allowed());
    }
    // Warm this thread's epoch registration and memos (a hot bucket moves there once).
    for _ in 0..4 {
        limiter.check_all_local(&limits).unwrap();
    }
    let before = allocations();
    let mut allowed = 0;
    for _ in 0..10_000 {
        let decisions = limiter.check_all_local(&limits).unwrap();
        allowed += usize::from(decisions.is_allowed());
    }
    let allocations = allocations() - before;
    assert_eq!(allowed, 10_000);
    assert_eq!(
        allocations, 0,
        "{allocations} allocations in 10 000 decisions"
    );
}

#[test]
fn a_local_reserve_and_settle_allocate_nothing() {
    let _turn = turn();
    let runtime = runtime();
    let limiter = ample_limiter();
    let limits = [
        Limit::new("alice", Target::operation("llm_requests")),
        Limit::new("alice", Target::operation("llm_tokens")).with_cost(500),
    ];
    for _ in 0..3 {
        let reservation = runtime.block_on(limiter.reserve(&limits)).unwrap();
        assert!(reservation.is_allowed());
        let _ = reservation.settle(&[1, 100]);
    }
    for _ in 0..4 {
        let _ = limiter.reserve_local(&limits).unwrap().settle(&[1, 10]);
    }
    let before = allocations();
    let mut returned = 0;
    for _ in 0..10_000 {
        let reservation = limiter.reserve_local(&limits).unwrap();
        assert!(reservation.is_allowed());
        returned += reservation.settle(&[1, 10])[1].returned;
    }
    let allocations = allocations() - before;
    assert_eq!(returned, 10_000 * 490, "490 of each 500 back");
    assert_eq!(
        allocations, 0,
        "{allocations} allocations in 10 000 reservations"
    );
}

#[test]
fn a_live_bucket_costs_under_256_bytes() {
    let _turn = turn();
    const BUCKETS: usize = 50_000;
    let limiter = Limiter::builder(Unlimited)
        .refill_ahead(false)
        .sweep_interval(Duration::from_secs(3600))
        .build();
    let cost = new_buckets(&limiter, &Target::path(Method::GET, "/m/items"), BUCKETS);
    let per_bucket = cost.bytes_per_bucket;
    println!("{per_bucket:.1} bytes per live (user, rule) bucket over {BUCKETS} buckets");
    assert!(per_bucket < 256.0, "{per_bucket:.1} bytes per bucket");
}

#[test]
fn memory_stays_flat_under_a_stream_of_new_users() {
    let _turn = turn();
    let runtime = runtime();
    let clock = ManualClock::new();
    let limiter = Limiter::builder(Unlimited)
        .clock(clock.clone())
        .refill_ahead(false)
        .bucket_ttl(Duration::from_secs(60))
        .sweep_interval(Duration::from_secs(10))
        .build();
    let target = Target::path(Method::GET, "/m/items");
    const PER_ROUND: usize = 2_000;
    let mut live = Vec::new();
    let mut bytes = Vec::new();
    for round in 0..40 {
        for i in 0..PER_ROUND {
            let user = format!("r{round}-u{i}");
            runtime.block_on(limiter.check(&user, &target)).unwrap();
        }
        // Thirty seconds per round: users of two rounds ago are past the 60 s TTL.
        clock.advance(Duration::from_secs(30));
        live.push(limiter.stats().live_buckets);
        bytes.push(live_bytes());
    }
    println!("live buckets per round: {live:?}");
    // Never more than the users of the last TTL (three rounds) plus those swept late.
    assert!(live.iter().all(|&n| n <= 4 * PER_ROUND as u64), "{live:?}");
    // Flat: the last ten rounds hold no more memory than rounds ten to twenty did, give or
    // take a table resize.
    assert_flat(&bytes[10..20], &bytes[30..40]);
    // Every new user leased what its one request cost: nothing was left to expire.
    assert_eq!(limiter.stats().expired_tokens, 0);
}

/// A flood of a million new users, a thousand a simulated second for 1000 s, against an
/// embedded source capped at 20 000 buckets: the cap holds, full buckets make room, nothing
/// is granted past a limit, and the memory of the first half is reused by the second.
#[test]
fn a_flood_of_new_users_stays_under_the_embedded_sources_cap() {
    let _turn = turn();
    let clock = ManualClock::new();
    let rules = lightrate_core::RuleSet::builder()
        // 1 per 10 s, burst 5: a bucket is full again 10 s after its one request.
        .default_rule(RefillRate::new(1, 10_000).unwrap(), 5)
        .build()
        .unwrap();
    let source = lightrate_core::EmbeddedSource::new(rules)
        .with_clock(clock.clone())
        .with_max_buckets(20_000);
    let target = Target::path(Method::GET, "/anything");
    let mut bytes = Vec::new();
    let mut most = 0;
    let mut refused = 0u64;
    for second in 0..1000u64 {
        for i in 0..1000u64 {
            let user = format!("s{second}-u{i}");
            match source.consume_now(ConsumeRequest::new(&user, &target, 1)) {
                Ok(answer) => assert_eq!(answer.tokens_consumed, 1),
                Err(e) => {
                    assert_eq!(e.kind(), lightrate_core::ErrorKind::Unavailable);
                    refused += 1;
                }
            }
            most = most.max(source.bucket_count());
        }
        clock.advance(Duration::from_secs(1));
        if second % 50 == 49 {
            bytes.push(live_bytes());
        }
    }
    let stats = source.stats();
    println!("embedded source: at most {most} buckets, {stats:?}, bytes every 50 s: {bytes:?}");
    assert!(most <= 20_000, "{most} buckets held");
    // Ten seconds of users (10 000) fit: nobody is refused.
    assert_eq!(refused, 0);
    assert_eq!(stats.refused_at_capacity, 0);
    let late = assert_flat(&bytes[2..10], &bytes[10..]);
    // What a bucket costs, the tables' slack included: 193 bytes with these identifiers (337
    // while a user's first bucket made room for four).
    let per_bucket = late as f64 / most as f64;
    println!("embedded source: {per_bucket:.0} bytes per bucket");
    assert!(per_bucket < 256.0, "{per_bucket:.0} bytes per bucket");
}

/// A flood of a million new users, a thousand every ten simulated seconds (nearly three hours),
/// against a limiter capped at 5 000 buckets: the cap holds, idle buckets go first, the memory
/// of the first rounds is reused by the last, and the limiter never admits more than the
/// source granted.
#[test]
fn a_flood_of_new_users_stays_under_the_limiters_cap() {
    let _turn = turn();
    let runtime = runtime();
    let clock = ManualClock::new();
    let limiter = Limiter::builder(Unlimited)
        .clock(clock.clone())
        .refill_ahead(false)
        .max_buckets(5_000)
        .build();
    let target = Target::path(Method::GET, "/m/items");
    let mut most = 0;
    let mut bytes = Vec::new();
    let mut admitted = 0u64;
    for round in 0..1000u64 {
        for i in 0..1000u64 {
            let user = format!("r{round}-u{i}");
            if runtime
                .block_on(limiter.check(&user, &target))
                .unwrap()
                .is_allowed()
            {
                admitted += 1;
            }
            if i % 100 == 99 {
                most = most.max(limiter.stats().live_buckets);
            }
        }
        clock.advance(Duration::from_secs(10));
        if round % 100 == 99 {
            bytes.push(live_bytes());
        }
    }
    let stats = limiter.stats();
    println!(
        "limiter: at most {most} live buckets, {} evicted, bytes every 100 rounds: {bytes:?}",
        stats.evicted_buckets
    );
    // The cap, plus what requests in flight created while one of them made room.
    assert!(most <= 5_000, "{most} live buckets");
    assert!(stats.evicted_buckets > 0);
    assert_eq!(admitted, 1_000_000);
    assert!(admitted <= stats.leased_tokens + stats.per_request_tokens);
    assert_flat(&bytes[1..4], &bytes[4..]);
}

#[test]
fn inflight_local_slots_allocate_nothing() {
    let _turn = turn();
    let cap = InFlight::new(4);
    let users: Vec<String> = (0..64).map(|i| format!("user-{i:08}")).collect();
    // Every identifier has its entry (and this thread its epoch registration and memo).
    for user in &users {
        for _ in 0..3 {
            drop(cap.try_acquire_local(user).unwrap());
        }
    }
    let before = allocations();
    let mut taken = 0;
    for i in 0..10_000 {
        // Runs of six of one identifier (from the map twice, which memoizes it, then from this
        // thread's memo), and two others between (from the map).
        let user = if i % 8 < 6 {
            &users[(i / 8) % users.len()]
        } else {
            &users[(i * 7) % users.len()]
        };
        let slot = cap.try_acquire_local(user).unwrap().into_slot();
        taken += usize::from(slot.is_some());
    }
    let allocations = allocations() - before;
    assert_eq!(taken, 10_000);
    assert_eq!(allocations, 0, "{allocations} allocations in 10 000 slots");
}
