//! `RedisSource::replace_rules` against a real `redis-server`: new limits apply at once (what
//! each user used is kept, so a larger burst gives its room at once), every bucket of a rule
//! still there is kept (clones included), and rules Lua cannot hold exactly are refused with
//! the old ones kept.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::time::Duration;

use lightrate_core::{ErrorKind, ManualClock, RefillRate, RuleSet, Target};
use lightrate_redis::test_util::RedisServer;

use support::{grant, source, take};

/// The default rule and `send_email`, with these rates and bursts.
fn rules(email_rate: RefillRate, email_burst: u64) -> RuleSet {
    RuleSet::builder()
        .default_rule(RefillRate::per_second(1), 5)
        .operation("Send Email", "^send_email$", email_rate, email_burst)
        .build()
        .unwrap()
}

#[tokio::test]
async fn new_rules_keep_every_bucket_and_apply_their_limits() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let clock = ManualClock::new();
    let email = Target::operation("send_email");
    let s = source(&redis.url(), rules(RefillRate::per_hour(10), 10), &clock);
    let clone = s.clone();
    assert_eq!(grant(&s, "alice", &email, 3).await, (3, 7));

    // A larger burst: alice used 3, so she has the new room at once: 17 of 20.
    s.replace_rules(rules(RefillRate::per_second(1), 20))
        .unwrap();
    let r = take(&clone, "alice", &email, 1).await;
    assert_eq!((r.tokens_consumed, r.tokens_remaining), (1, 16));
    assert_eq!(r.rule.burst_rate, 20, "the clone serves the new rules");
    // The new rate applies: one token a second.
    clock.advance(Duration::from_secs(2));
    assert_eq!(grant(&s, "alice", &email, 1).await, (1, 17));
    // A new user gets the new burst.
    assert_eq!(grant(&s, "bob", &email, 1).await, (1, 19));

    // A smaller burst keeps what was used: bob used 1 of the new 4, alice 3.
    s.replace_rules(rules(RefillRate::per_hour(1), 4)).unwrap();
    assert_eq!(grant(&s, "bob", &email, 10).await, (3, 0));
    assert_eq!(grant(&s, "alice", &email, 10).await, (1, 0));
    assert_eq!(s.rules().resolve(&email).burst_rate, 4);
}

#[tokio::test]
async fn rules_redis_cannot_hold_are_refused_and_the_old_ones_stay() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let clock = ManualClock::new();
    let email = Target::operation("send_email");
    let s = source(&redis.url(), rules(RefillRate::per_hour(10), 10), &clock);
    assert_eq!(grant(&s, "alice", &email, 1).await, (1, 9));
    // 10¹⁰ tokens a day: 10¹⁰ × 86 400 000 ms ≥ 2⁵³.
    let e = s
        .replace_rules(rules(RefillRate::per_day(1), 10_000_000_000))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Configuration);
    assert!(e.message().contains("2^53"), "{e}");
    assert_eq!(s.rules().resolve(&email).burst_rate, 10);
    assert_eq!(grant(&s, "alice", &email, 1).await, (1, 8));
}
