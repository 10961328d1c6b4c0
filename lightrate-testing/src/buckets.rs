//! What a live bucket costs, from the allocator's count.

use std::time::{Duration, Instant};

use lightrate_core::{Limiter, Target};

use crate::alloc::live_bytes;

/// What creating buckets cost: see [`new_buckets`].
#[derive(Clone, Copy, Debug)]
pub struct BucketCost {
    /// Live bytes per (user, rule) bucket.
    pub bytes_per_bucket: f64,
    /// The time it took to create them all.
    pub elapsed: Duration,
}

/// Creates `users` buckets in `limiter` (one first request each, user identifiers of 13
/// bytes, for `target`) and measures the live bytes they hold. The target and its rule are
/// learned beforehand, once. Needs [`Counting`](crate::Counting) as the global allocator, and
/// a limiter whose buckets outlive the measurement.
pub fn new_buckets(limiter: &Limiter, target: &Target<'_>, users: usize) -> BucketCost {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap_or_else(|e| panic!("a runtime: {e}"));
    let check = |user: &str| {
        runtime
            .block_on(limiter.check(user, target))
            .unwrap_or_else(|e| panic!("the source failed: {e}"));
    };
    check("warm-up");
    let names: Vec<String> = (0..users).map(|i| format!("user-{i:08}")).collect();
    let before = live_bytes();
    let started = Instant::now();
    for name in &names {
        check(name);
    }
    let elapsed = started.elapsed();
    let after = live_bytes();
    let live = usize::try_from(limiter.stats().live_buckets).unwrap_or(usize::MAX);
    assert_eq!(live, users + 1, "one bucket per user, and the warm-up's");
    BucketCost {
        bytes_per_bucket: (after - before) as f64 / users as f64,
        elapsed,
    }
}
