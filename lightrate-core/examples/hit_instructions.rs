//! Runs N local hits (or N governor keyed checks), for counting instructions per decision
//! with callgrind, which unlike a timer gives the same answer on a busy machine:
//!
//! ```text
//! cargo build --release -p lightrate-core --example hit_instructions
//! valgrind --tool=callgrind target/release/examples/hit_instructions 100000 [governor]
//! valgrind --tool=callgrind target/release/examples/hit_instructions 300000 [governor]
//! # (difference of the two totals) / 200000 = instructions per decision
//! ```
//!
//! `... 100000 many [users]` hits 10 000 users (or `users`) in turn instead of one, each hit
//! through the map.
//!
//! `... 100000 reserve` reserves 10 tokens of one limit with `Limiter::reserve_local` and
//! settles at 1 (9 given back to the bucket; the lease of 1 000 000 serves the 300 000 runs): a
//! local reserve + settle, against a one-limit hit.
//!
//! `... 100000 all [limits]` decides every request against two limits (or `limits`, at most
//! 4) with `Limiter::check_all_local`: the same user, each limit on a target and rule of its
//! own (`/bench/items`, `/bench/day`, `/bench/l2`, `/bench/l3`), every limit a local hit,
//! into one `Decisions` reused (`Limiter::check_all_local_in`, the hot path's form); `... all 2
//! by-value` returns each list by value (`Limiter::check_all_local`).
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]
use lightrate_core::http::Method;
use lightrate_core::*;
use lightrate_testing::{Unlimited, UnlimitedPerTarget};
use std::hint::black_box;
fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(1_000_000);
    if std::env::args().nth(2).as_deref() == Some("governor") {
        let g = governor::RateLimiter::<String, _, _>::keyed(governor::Quota::per_second(
            std::num::NonZeroU32::MAX,
        ));
        let key = "user-1".to_owned();
        let mut ok = 0u64;
        for _ in 0..n {
            if g.check_key(black_box(&key)).is_ok() {
                ok += 1;
            }
        }
        println!("{ok}");
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let limiter = Limiter::builder(Unlimited)
        .lease_size(MAX_LEASE_SIZE)
        .min_lease_size(MAX_LEASE_SIZE)
        .refill_ahead(false)
        .build();
    let target = Target::path(Method::GET, "/bench/items");
    if std::env::args().nth(2).as_deref() == Some("reserve") {
        let limits = [Limit::new("user-1", target.clone()).with_cost(10)];
        for _ in 0..2 {
            let r = rt.block_on(limiter.reserve(&limits)).unwrap();
            assert!(r.is_allowed());
            let _ = r.settle(&[1]);
        }
        let mut allowed = 0u64;
        for _ in 0..n {
            if let Some(r) = limiter.reserve_local(black_box(&limits)) {
                if r.is_allowed() {
                    allowed += 1;
                }
                black_box(r.settle(black_box(&[1])));
            }
        }
        println!("{allowed}");
        return;
    }
    if std::env::args().nth(2).as_deref() == Some("all") {
        let count: usize = std::env::args()
            .nth(3)
            .map(|s| s.parse().unwrap())
            .unwrap_or(2);
        let paths = ["/bench/items", "/bench/day", "/bench/l2", "/bench/l3"];
        let limits: Vec<Limit<'_>> = paths[..count]
            .iter()
            .map(|path| Limit::new("user-1", Target::path(Method::GET, *path)))
            .collect();
        let limiter = Limiter::builder(UnlimitedPerTarget)
            .lease_size(MAX_LEASE_SIZE)
            .min_lease_size(MAX_LEASE_SIZE)
            .refill_ahead(false)
            .build();
        // The first request learns the rules; the second leases the buckets full.
        for _ in 0..2 {
            assert!(rt
                .block_on(limiter.check_all(&limits))
                .unwrap()
                .is_allowed());
        }
        let mut allowed = 0u64;
        if std::env::args().nth(4).as_deref() == Some("by-value") {
            for _ in 0..n {
                if let Some(d) = limiter.check_all_local(black_box(&limits)) {
                    allowed += u64::from(d.is_allowed());
                }
            }
        } else {
            let mut decisions = Decisions::default();
            for _ in 0..n {
                if limiter.check_all_local_in(black_box(&limits), &mut decisions) {
                    allowed += u64::from(decisions.is_allowed());
                }
            }
        }
        println!("{allowed}");
        return;
    }
    if std::env::args().nth(2).as_deref() == Some("many") {
        // Many users (10 000, or the third argument) in turn: every hit goes through the map.
        let count: usize = std::env::args()
            .nth(3)
            .map(|s| s.parse().unwrap())
            .unwrap_or(10_000);
        let users: Vec<String> = (0..count).map(|i| format!("user-{i:08}")).collect();
        for user in &users {
            rt.block_on(limiter.check(user, &target)).unwrap();
            rt.block_on(limiter.check(user, &target)).unwrap();
        }
        let mut allowed = 0u64;
        for i in 0..n as usize {
            let user = &users[i % users.len()];
            if let Some(d) = limiter.check_local(black_box(user), black_box(&target), 1) {
                allowed += u64::from(d.is_allowed());
            }
        }
        println!("{allowed}");
        return;
    }
    // The first request learns the rule; the second leases the bucket full.
    rt.block_on(limiter.check("user-1", &target)).unwrap();
    rt.block_on(limiter.check("user-1", &target)).unwrap();
    let mut allowed = 0u64;
    for _ in 0..n {
        if let Some(d) = limiter.check_local(black_box("user-1"), black_box(&target), 1) {
            if d.is_allowed() {
                allowed += 1;
            }
        }
    }
    println!("{allowed}");
}
