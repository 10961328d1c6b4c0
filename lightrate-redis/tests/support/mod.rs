//! What the Redis tests share besides the servers (`lightrate_redis::test_util`).
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};

use lightrate_core::{
    ConsumeRequest, ConsumeTokensResponse, ManualClock, RuleSet, Target, TokenSource,
};
use lightrate_redis::RedisSource;

/// A source on `url` with time from `clock`, under an application id of its own (so that
/// tests sharing a server never share a bucket).
pub(crate) fn source(url: &str, rules: RuleSet, clock: &ManualClock) -> RedisSource {
    RedisSource::builder(rules)
        .application_id(unique_app())
        .clock(clock.clone())
        .connect(url)
        .unwrap()
}

/// An application id no other source of this test binary has.
pub(crate) fn unique_app() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("app{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Consumes `n` tokens and unwraps the answer.
pub(crate) async fn take(
    source: &RedisSource,
    user: &str,
    target: &Target<'_>,
    n: u64,
) -> ConsumeTokensResponse {
    source
        .consume_tokens(ConsumeRequest::new(user, target, n))
        .await
        .unwrap()
}

/// (granted, remaining) of a consume.
pub(crate) async fn grant(
    source: &RedisSource,
    user: &str,
    target: &Target<'_>,
    n: u64,
) -> (u64, u64) {
    let r = take(source, user, target, n).await;
    (r.tokens_consumed, r.tokens_remaining)
}

/// A plain connection for inspecting keys.
pub(crate) async fn redis(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}
