//! The local-hit hot path against governor's keyed limiter, in the same run; and a request
//! against two limits (`check_all_local`) against two governor keyed limiters in a row.
//!
//! `cargo bench -p lightrate-core --bench local_bucket`

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use governor::{Quota, RateLimiter};
use lightrate_core::http::Method;
use lightrate_core::{Decision, Decisions, Limit, Limiter, Target};
use lightrate_testing::{Unlimited, UnlimitedPerTarget};

/// One decision: the local hit, or (once per million) a lease.
#[inline]
fn decide(
    limiter: &Limiter,
    runtime: &tokio::runtime::Runtime,
    user: &str,
    target: &Target<'_>,
) -> Decision {
    match limiter.check_local(user, target, 1) {
        Some(decision) => decision,
        None => runtime
            .block_on(limiter.check_with_source(user, target.clone().into_owned(), 1))
            .unwrap(),
    }
}

/// One decision against several limits: every limit a local hit, or (once per million) a
/// lease.
#[inline]
fn decide_all(
    limiter: &Limiter,
    runtime: &tokio::runtime::Runtime,
    limits: &[Limit<'_>],
) -> Decisions {
    match limiter.check_all_local(limits) {
        Some(decisions) => decisions,
        None => runtime.block_on(limiter.check_all(limits)).unwrap(),
    }
}

fn users(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user-{i:08}")).collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

fn local_hit(c: &mut Criterion) {
    let runtime = runtime();
    let target = Target::path(Method::GET, "/bench/items");
    let mut group = c.benchmark_group("local_hit");

    let one = Unlimited::limiter();
    decide(&one, &runtime, "user-1", &target);
    group.bench_function("lightrate_1_user", |b| {
        b.iter(|| decide(&one, &runtime, black_box("user-1"), black_box(&target)))
    });

    let many = Unlimited::limiter();
    let names = users(100_000);
    for name in &names {
        decide(&many, &runtime, name, &target);
    }
    assert_eq!(many.stats().live_buckets, 100_000);
    let mut i = 0;
    group.bench_function("lightrate_100k_users", |b| {
        b.iter(|| {
            i = (i + 1) % names.len();
            decide(&many, &runtime, black_box(&names[i]), black_box(&target))
        })
    });

    let quota = Quota::per_second(NonZeroU32::MAX);
    let governor = RateLimiter::<String, _, _>::keyed(quota);
    for name in &names {
        governor.check_key(name).unwrap();
    }
    let mut i = 0;
    group.bench_function("governor_keyed_100k_users", |b| {
        b.iter(|| {
            i = (i + 1) % names.len();
            governor.check_key(black_box(&names[i]))
        })
    });
    group.finish();
}

/// Two threads on one key: `iters` decisions split across them; time per decision.
fn hot_key(c: &mut Criterion) {
    let mut group = c.benchmark_group("hot_key_2_threads");
    let target = Target::path(Method::GET, "/bench/hot");

    let limiter = Unlimited::limiter();
    decide(&limiter, &runtime(), "hot", &target);
    group.bench_function("lightrate", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|scope| {
                for _ in 0..2 {
                    scope.spawn(|| {
                        let runtime = runtime();
                        for _ in 0..iters / 2 {
                            black_box(decide(&limiter, &runtime, "hot", &target));
                        }
                    });
                }
            });
            start.elapsed()
        })
    });

    let governor = RateLimiter::<String, _, _>::keyed(Quota::per_second(NonZeroU32::MAX));
    let key = "hot".to_owned();
    group.bench_function("governor", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|scope| {
                for _ in 0..2 {
                    scope.spawn(|| {
                        for _ in 0..iters / 2 {
                            let _ = black_box(governor.check_key(&key));
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    group.finish();
}

/// One user, one thread: a request against two limits (a rule each: a per-second and a
/// per-day limit, say) beside two governor keyed limiters checked in a row; one limit of each
/// for reference.
fn two_limits(c: &mut Criterion) {
    let runtime = runtime();
    let mut group = c.benchmark_group("two_limits");
    let target = Target::path(Method::GET, "/bench/items");

    let one = Unlimited::limiter();
    decide(&one, &runtime, "user-1", &target);
    group.bench_function("lightrate_one_limit", |b| {
        b.iter(|| decide(&one, &runtime, black_box("user-1"), black_box(&target)))
    });

    let two = UnlimitedPerTarget::limiter();
    let limits = [
        Limit::new("user-1", target.clone()),
        Limit::new("user-1", Target::path(Method::GET, "/bench/day")),
    ];
    for _ in 0..2 {
        assert!(decide_all(&two, &runtime, &limits).is_allowed());
    }
    group.bench_function("lightrate_check_all_local", |b| {
        b.iter(|| decide_all(&two, &runtime, black_box(&limits)))
    });
    // Into one `Decisions`, reused: the hot path's form.
    let mut decisions = Decisions::default();
    group.bench_function("lightrate_check_all_local_in", |b| {
        b.iter(|| {
            if !two.check_all_local_in(black_box(&limits), &mut decisions) {
                decisions = runtime.block_on(two.check_all(&limits)).unwrap();
            }
            decisions.is_allowed()
        })
    });

    let quota = Quota::per_second(NonZeroU32::MAX);
    let (first, second) = (
        RateLimiter::<String, _, _>::keyed(quota),
        RateLimiter::<String, _, _>::keyed(quota),
    );
    let key = "user-1".to_owned();
    first.check_key(&key).unwrap();
    second.check_key(&key).unwrap();
    group.bench_function("governor_one_keyed", |b| {
        b.iter(|| first.check_key(black_box(&key)))
    });
    group.bench_function("governor_two_keyed_in_a_row", |b| {
        b.iter(|| {
            first
                .check_key(black_box(&key))
                .and_then(|_| second.check_key(black_box(&key)))
        })
    });
    group.finish();
}

criterion_group!(benches, local_hit, hot_key, two_limits);
criterion_main!(benches);
