//! Bytes per live (user, rule) bucket, from the allocator's own count: 1,000,000 buckets.
//!
//! `cargo bench -p lightrate-core --bench memory`
#![allow(missing_docs, clippy::print_stdout, clippy::unwrap_used)]

use std::time::Duration;

use lightrate_core::http::Method;
use lightrate_core::{Limiter, Target};
use lightrate_testing::{new_buckets, Counting, Unlimited};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn main() {
    const BUCKETS: usize = 1_000_000;
    let limiter = Limiter::builder(Unlimited)
        .refill_ahead(false)
        .bucket_ttl(Duration::from_secs(3600))
        .sweep_interval(Duration::from_secs(3600))
        // Past the default cap of a million: every bucket stays.
        .max_buckets(2 * BUCKETS)
        .build();
    let cost = new_buckets(
        &limiter,
        &Target::path(Method::GET, "/bench/items"),
        BUCKETS,
    );
    println!(
        "memory/bytes_per_bucket: {:.1} bytes per live (user, rule) bucket \
         ({BUCKETS} buckets, user identifiers of 13 bytes; {:.2} s to create, {:.0} ns each)",
        cost.bytes_per_bucket,
        cost.elapsed.as_secs_f64(),
        cost.elapsed.as_nanos() as f64 / BUCKETS as f64
    );
}
