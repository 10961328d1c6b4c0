//! Measures `RedisSource` on a `redis-server` it starts itself (feature `test-util`, on for
//! examples): consumes per second and latency with 64 concurrent tasks, and Redis memory per
//! live bucket. Figures in BENCHMARKS.md.
//!
//! ```text
//! cargo run --release -p lightrate-redis --example redis_load [-- SECONDS]
//! ```
#![allow(clippy::print_stdout, clippy::unwrap_used, missing_docs)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lightrate_core::{ConsumeRequest, RefillRate, RuleSet, Target, TokenSource};
use lightrate_redis::test_util::RedisServer;
use lightrate_redis::RedisSource;

const TASKS: usize = 64;
const USERS: usize = 5_000;
const MEMORY_USERS: usize = 100_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let rules = RuleSet::builder()
        .default_rule(RefillRate::per_second(1), 5)
        .operation("Send Email", "^send_email$", RefillRate::per_second(1), 10)
        .build()
        .unwrap();
    let source = RedisSource::connect(&redis.url(), rules.clone()).unwrap();

    // Throughput and latency: 64 tasks, each consuming for users spread over 5000.
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let source = source.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let target = Target::operation("send_email");
                let mut latencies = Vec::with_capacity(200_000);
                let mut rng = fastrand::Rng::with_seed(t as u64);
                let mut user = String::new();
                while !stop.load(Ordering::Relaxed) {
                    user.clear();
                    user.push_str("user-");
                    user.push_str(&rng.usize(0..USERS).to_string());
                    let began = Instant::now();
                    source
                        .consume_tokens(ConsumeRequest::new(&user, &target, 1))
                        .await
                        .unwrap();
                    latencies.push(began.elapsed());
                }
                latencies
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = start.elapsed();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "RedisSource, {TASKS} tasks, {USERS} users, {seconds} s: {} consumes, {:.0} consumes/s, \
         p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        at(0.50),
        at(0.99),
        latencies[latencies.len() - 1]
    );

    // Memory per live bucket: 100 000 users one token short of a bucket that refills a token
    // per 1000 s (so each keeps its key for the whole measurement).
    let slow = RuleSet::builder()
        .default_rule(RefillRate::from_millitokens_per_second(1), 5)
        .build()
        .unwrap();
    let source = RedisSource::connect(&redis.url(), slow).unwrap();
    let _ = redis.command(&["FLUSHALL"]).unwrap();
    let before = used_memory(&redis);
    let target = Target::Default;
    for chunk in (0..MEMORY_USERS).collect::<Vec<_>>().chunks(TASKS * 16) {
        let mut calls = tokio::task::JoinSet::new();
        for &i in chunk {
            let source = source.clone();
            calls.spawn(async move {
                let user = format!("user-{i:06}");
                let target = Target::Default;
                source
                    .consume_tokens(ConsumeRequest::new(&user, &target, 1))
                    .await
                    .unwrap()
                    .tokens_consumed
            });
        }
        while let Some(granted) = calls.join_next().await {
            assert_eq!(granted.unwrap(), 1);
        }
    }
    let after = used_memory(&redis);
    let keys: i64 = redis
        .command(&["DBSIZE"])
        .unwrap()
        .trim()
        .trim_start_matches(':')
        .parse()
        .unwrap();
    assert_eq!(keys, MEMORY_USERS as i64);
    println!(
        "Redis memory: used_memory {before} -> {after} bytes for {keys} live buckets: \
         {:.1} bytes per bucket; key e.g. {:?}",
        (after - before) as f64 / keys as f64,
        source.bucket_key("user-000000", &target)
    );
}

fn used_memory(redis: &RedisServer) -> i64 {
    let info = redis.command(&["INFO", "memory"]).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}
