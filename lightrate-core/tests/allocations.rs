//! What the allocator says: a local hit allocates nothing; a live bucket costs under 256
//! bytes; memory stays flat under a stream of new users.
//!
//! One test binary with a counting global allocator; the tests take turns (the counts are
//! process-wide).
#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

use std::sync::Mutex;
use std::time::Duration;

use lightrate_core::http::Method;
use lightrate_core::{Limiter, ManualClock, Target};
use lightrate_testing::{allocations, live_bytes, new_buckets, Counting, Unlimited};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

#[test]
fn a_local_hit_allocates_nothing() {
    let _turn = turn();
    let runtime = runtime();
    let limiter = Limiter::builder(Unlimited)
        .lease_size(1_000_000)
        .refill_ahead(false)
        .build();
    let targets = [
        Target::path(Method::GET, "/m/items"),
        Target::path(Method::GET, "/m/other"),
    ];
    for target in &targets {
        for user in ["alice", "a-user-identifier-longer-than-22-bytes"] {
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
    let early = *bytes[10..20].iter().max().unwrap();
    let late = *bytes[30..40].iter().max().unwrap();
    assert!(
        late <= early + early / 4,
        "early {early} bytes, late {late} bytes"
    );
    assert!(limiter.stats().expired_tokens > 0);
}
