//! The consume script against a real `redis-server`: refill, burst, partial grants, the
//! default-rule charge, expiry, slow and fast rates, odd identifiers, and a proptest with the
//! embedded source as the model.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::time::Duration;

use lightrate_core::http::Method;
use lightrate_core::{
    ConsumeRequest, EmbeddedSource, ErrorKind, ManualClock, RefillRate, RuleSet, RuleSpec, Target,
    TokenSource,
};
use lightrate_redis::test_util::RedisServer;
use lightrate_redis::RedisSource;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use redis::AsyncCommands;

use support::{grant, source, take};

fn one_rule(rate: RefillRate, burst: u64) -> RuleSet {
    RuleSet::builder()
        .default_rule(rate, burst)
        .build()
        .unwrap()
}

async fn pttl(url: &str, key: &str) -> i64 {
    support::redis(url).await.pttl(key).await.unwrap()
}

#[tokio::test]
async fn buckets_start_full_refill_exactly_and_cap_at_burst() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let clock = ManualClock::new();
    let s = source(&redis.url(), RuleSet::demo(), &clock);
    let hello = Target::path(Method::GET, "/hello"); // burst 20, 1/s
    let r = take(&s, "u", &hello, 1).await;
    assert_eq!((r.tokens_consumed, r.tokens_remaining), (1, 19));
    assert_eq!(r.rule.id, "rule_hello");
    assert_eq!(grant(&s, "u", &hello, 19).await, (19, 0));
    clock.advance(Duration::from_millis(999));
    assert_eq!(grant(&s, "u", &hello, 1).await, (0, 0));
    clock.advance(Duration::from_millis(1));
    assert_eq!(grant(&s, "u", &hello, 1).await, (1, 0));
    // A long idle time refills only to the burst.
    clock.advance(Duration::from_secs(3600));
    let r = take(&s, "u", &hello, 100).await;
    assert_eq!(
        (r.tokens_consumed, r.tokens_remaining, r.throttles),
        (20, 0, 1)
    );
}

#[tokio::test]
async fn partial_grants_or_all_or_nothing() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let clock = ManualClock::new();
    let email = Target::operation("send_email"); // burst 10
    let s = source(&redis.url(), RuleSet::demo(), &clock);
    assert_eq!(grant(&s, "u", &email, 8).await, (8, 2));
    let r = take(&s, "u", &email, 5).await;
    assert_eq!(
        (r.tokens_consumed, r.tokens_remaining, r.throttles),
        (2, 0, 1)
    );

    let all_or_nothing = RedisSource::builder(RuleSet::demo())
        .application_id(support::unique_app())
        .clock(clock.clone())
        .partial_grants(false)
        .connect(&redis.url())
        .unwrap();
    assert_eq!(grant(&all_or_nothing, "u", &email, 8).await, (8, 2));
    assert_eq!(grant(&all_or_nothing, "u", &email, 5).await, (0, 2));
    assert_eq!(grant(&all_or_nothing, "u", &email, 2).await, (2, 0));
}

#[tokio::test]
async fn the_default_rule_is_charged_the_default_bucket_match() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let clock = ManualClock::new();
    let s = source(&redis.url(), RuleSet::demo(), &clock);
    let items = Target::path(Method::GET, "/items/1"); // the default rule: burst 5
    let r = s
        .consume_tokens(ConsumeRequest::new("u", &items, 5).with_default_bucket_match(1))
        .await
        .unwrap();
    assert!(r.rule.is_default);
    assert_eq!((r.tokens_consumed, r.tokens_remaining), (1, 4));
    // Any other rule is charged what was requested.
    let email = Target::operation("send_email");
    let r = s
        .consume_tokens(ConsumeRequest::new("u", &email, 5).with_default_bucket_match(1))
        .await
        .unwrap();
    assert_eq!((r.tokens_consumed, r.tokens_remaining), (5, 5));
}

#[tokio::test]
async fn every_write_sets_the_expiry_and_a_full_bucket_has_no_key() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let clock = ManualClock::new();
    // 3 tokens per second (a token every 333.33 ms), burst 10.
    let s = source(&url, one_rule(RefillRate::per_second(3), 10), &clock);
    let key = s.bucket_key("u", &Target::Default);
    assert_eq!(grant(&s, "u", &Target::Default, 1).await, (1, 9));
    // One token short: full again in 1000/3 ms, rounded up.
    let ttl = pttl(&url, &key).await;
    assert!((300..=334).contains(&ttl), "{ttl}");
    assert_eq!(grant(&s, "u", &Target::Default, 9).await, (9, 0));
    let ttl = pttl(&url, &key).await;
    assert!((3_300..=3_334).contains(&ttl), "{ttl}");
    // 100 ms later: a write (even one that grants nothing) sets the expiry again.
    clock.advance(Duration::from_millis(100));
    assert_eq!(grant(&s, "u", &Target::Default, 1).await, (0, 0));
    let ttl = pttl(&url, &key).await;
    assert!((3_200..=3_234).contains(&ttl), "{ttl}");
    // Full again 10 s later: taking one writes it with the one-token expiry again.
    clock.advance(Duration::from_secs(10));
    assert_eq!(grant(&s, "u", &Target::Default, 1).await, (1, 9));
    let ttl = pttl(&url, &key).await;
    assert!((300..=334).contains(&ttl), "{ttl}");
    // A consume that leaves a bucket full stores nothing.
    let all_or_nothing = RedisSource::builder(one_rule(RefillRate::per_second(3), 10))
        .application_id(support::unique_app())
        .clock(clock.clone())
        .partial_grants(false)
        .connect(&url)
        .unwrap();
    assert_eq!(
        grant(&all_or_nothing, "v", &Target::Default, 11).await,
        (0, 10)
    );
    let key = all_or_nothing.bucket_key("v", &Target::Default);
    let exists: bool = support::redis(&url).await.exists(&key).await.unwrap();
    assert!(!exists, "a full bucket must not be stored");
}

#[tokio::test]
async fn a_bucket_written_under_another_rate_keeps_its_whole_tokens() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let clock = ManualClock::new();
    let s = source(&url, one_rule(RefillRate::per_second(1), 10), &clock);
    let key = s.bucket_key("u", &Target::Default);
    // 2 tokens a second wrote it: 2700 units of 500 are 5 whole tokens (and 0.4 of one).
    let _: () = support::redis(&url)
        .await
        .set(&key, "2700:0:500")
        .await
        .unwrap();
    assert_eq!(grant(&s, "u", &Target::Default, 1).await, (1, 4));
    assert_eq!(grant(&s, "u", &Target::Default, 9).await, (4, 0));
}

const DAY_MS: u64 = 86_400_000;

#[tokio::test]
async fn one_per_second_and_one_per_day_are_exact_to_the_millisecond() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let clock = ManualClock::new();
    let rules = RuleSet::builder()
        .default_rule(RefillRate::per_second(1), 2)
        .operation("daily", "^daily$", RefillRate::per_day(1), 3)
        .build()
        .unwrap();
    let s = source(&url, rules, &clock);
    let daily = Target::operation("daily");
    assert_eq!(grant(&s, "u", &Target::Default, 2).await, (2, 0));
    assert_eq!(grant(&s, "u", &daily, 3).await, (3, 0));
    clock.advance(Duration::from_millis(999));
    assert_eq!(grant(&s, "u", &Target::Default, 1).await, (0, 0));
    clock.advance(Duration::from_millis(1));
    assert_eq!(grant(&s, "u", &Target::Default, 1).await, (1, 0));
    assert_eq!(grant(&s, "u", &daily, 1).await, (0, 0));
    clock.advance(Duration::from_millis(DAY_MS - 1_001));
    assert_eq!(grant(&s, "u", &daily, 1).await, (0, 0));
    clock.advance(Duration::from_millis(1));
    assert_eq!(grant(&s, "u", &daily, 1).await, (1, 0));
    // Two days and 5 ms later: two tokens, and the key expires when the third is back.
    clock.advance(Duration::from_millis(2 * DAY_MS + 5));
    assert_eq!(grant(&s, "u", &daily, 5).await, (2, 0));
    let ttl = pttl(&url, &s.bucket_key("u", &daily)).await;
    let expected = (3 * DAY_MS - 5) as i64;
    assert!(ttl <= expected && ttl > expected - 5_000, "{ttl}");
}

#[tokio::test]
async fn a_zero_rate_never_refills_and_its_key_never_expires() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let clock = ManualClock::new();
    let s = source(&redis.url(), one_rule(RefillRate::per_second(0), 3), &clock);
    assert_eq!(grant(&s, "u", &Target::Default, 2).await, (2, 1));
    assert_eq!(
        pttl(&redis.url(), &s.bucket_key("u", &Target::Default)).await,
        -1
    );
    clock.advance(Duration::from_secs(1_000_000));
    assert_eq!(grant(&s, "u", &Target::Default, 2).await, (1, 0));
}

#[tokio::test]
async fn any_identifier_has_a_bucket_and_a_key_of_its_own() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let clock = ManualClock::new();
    let s = RedisSource::builder(RuleSet::demo())
        .application_id("shop")
        .clock(clock.clone())
        .connect(&redis.url())
        .unwrap();
    let email = Target::operation("send_email"); // burst 10
    let users = [
        "alice smith",
        "tenant:42:user:7",
        "{alice}",
        "{alice}x",
        "ålice-✓",
        "a%3Ab",
        "a:b",
    ];
    for (i, user) in users.iter().enumerate() {
        let n = i as u64 + 1;
        assert_eq!(grant(&s, user, &email, n).await, (n, 10 - n), "{user}");
    }
    let mut connection = support::redis(&redis.url()).await;
    let mut keys: Vec<String> = connection.keys("*").await.unwrap();
    keys.sort();
    let mut expected: Vec<String> = users.iter().map(|u| s.bucket_key(u, &email)).collect();
    expected.sort();
    assert_eq!(keys, expected);
    assert!(keys.contains(&"lightrate:shop:rule_send_email:%7Balice%7D".to_owned()));
    assert!(keys.contains(&"lightrate:shop:rule_send_email:alice%20smith".to_owned()));
    assert!(keys.contains(&"lightrate:shop:rule_send_email:%C3%A5lice-%E2%9C%93".to_owned()));
    for key in &keys {
        assert!(
            !key.contains('{') && !key.contains('}') && !key.contains(' '),
            "{key}"
        );
    }
}

#[tokio::test]
async fn redis_time_drives_refills_without_a_test_clock() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let s = RedisSource::builder(one_rule(RefillRate::per_second(1000), 5))
        .application_id(support::unique_app())
        .connect(&redis.url())
        .unwrap();
    assert_eq!(grant(&s, "u", &Target::Default, 5).await, (5, 0));
    // 1 token per ms of Redis time: poll until one is back (no sleeping for a fixed time).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if take(&s, "u", &Target::Default, 1).await.tokens_consumed == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Redis TIME never refilled"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn invalid_requests_and_rules_are_refused_before_any_call() {
    // Nothing listens on this port: only validation can answer.
    let s = RedisSource::connect("redis://127.0.0.1:1", RuleSet::demo()).unwrap();
    let t = Target::Default;
    let long = "x".repeat(lightrate_core::MAX_USER_IDENTIFIER_BYTES + 1);
    for request in [
        ConsumeRequest::new("", &t, 1),
        ConsumeRequest::new("  ", &t, 1),
        ConsumeRequest::new("u", &t, 0),
        ConsumeRequest::new("u", &t, 1).with_default_bucket_match(0),
        ConsumeRequest::new(&long, &t, 1),
    ] {
        let e = s.consume_tokens(request).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    }
    // burst × period must stay below 2^53: 1 token per 1000 s is a period of 10^6 ms.
    let huge = RuleSet::builder()
        .default_rule(RefillRate::per_second(1), 5)
        .rule(
            RuleSpec::operation(
                "Huge",
                "^huge$",
                RefillRate::from_millitokens_per_second(1),
                10_000_000_000,
            )
            .with_id("rule_huge"),
        )
        .build()
        .unwrap();
    let e = RedisSource::connect("redis://127.0.0.1:1", huge).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Configuration);
    assert!(e.message().contains("rule_huge"), "{e}");
    let e = RedisSource::builder(RuleSet::demo())
        .prefix("{tag}")
        .connect("redis://127.0.0.1:1")
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Configuration);
}

/// One step of a random run: wait `dt` ms, then user `user` asks `n` tokens for target
/// `target`, with `tokensRequestedForDefaultBucketMatch` when `default_match` is `Some`.
#[derive(Clone, Debug)]
struct Step {
    dt: u64,
    user: usize,
    target: usize,
    n: u64,
    default_match: Option<u64>,
}

fn step() -> impl Strategy<Value = Step> {
    (
        prop_oneof![0u64..50, 0u64..2_000, 0u64..200_000],
        0usize..3,
        0usize..4,
        1u64..12,
        proptest::option::of(1u64..4),
    )
        .prop_map(|(dt, user, target, n, default_match)| Step {
            dt,
            user,
            target,
            n,
            default_match,
        })
}

fn rules(rates: [RefillRate; 3], bursts: [u64; 3]) -> RuleSet {
    RuleSet::builder()
        .default_rule(rates[0], bursts[0])
        .operation("Op", "^op$", rates[1], bursts[1])
        .path(Method::GET, "^/p", rates[2], bursts[2])
        .build()
        .unwrap()
}

/// Rates of every shape: none, fast, per second, per day, and odd fractions.
fn rate() -> impl Strategy<Value = RefillRate> {
    prop_oneof![
        Just(RefillRate::ZERO),
        (1u64..5_000).prop_map(RefillRate::per_second),
        (1u64..5).prop_map(RefillRate::per_day),
        (1u64..5_000, 1u64..100_000_000).prop_map(|(t, p)| RefillRate::new(t, p).unwrap()),
    ]
}

/// Same rules, same whole-millisecond times, same requests: the Redis source answers exactly
/// what the embedded source answers (grants, remainings, throttles, rules).
#[test]
fn the_script_agrees_with_the_embedded_source() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let strategy = (
        [rate(), rate(), rate()],
        [1u64..40, 1u64..40, 1u64..1000],
        any::<bool>(),
        proptest::collection::vec(step(), 1..120),
    );
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(64);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let users = ["alice", "bob:{1}", "çé 7"];
    let targets = [
        Target::operation("op"),
        Target::path(Method::GET, "/p/1"),
        Target::path(Method::POST, "/p/1"), // the default rule
        Target::Default,
    ];
    runner
        .run(&strategy, |(rates, bursts, partial, steps)| {
            let clock = ManualClock::new();
            let embedded = EmbeddedSource::new(rules(rates, bursts))
                .with_clock(clock.clone())
                .with_partial_grants(partial);
            let redis_source = RedisSource::builder(rules(rates, bursts))
                .application_id(support::unique_app())
                .clock(clock.clone())
                .partial_grants(partial)
                .connect(&url)
                .unwrap();
            runtime.block_on(async {
                for (i, s) in steps.iter().enumerate() {
                    clock.advance(Duration::from_millis(s.dt));
                    let mut request = ConsumeRequest::new(users[s.user], &targets[s.target], s.n);
                    request.tokens_requested_for_default_bucket_match = s.default_match;
                    let expected = embedded.consume_now(request).unwrap();
                    let got = redis_source.consume_tokens(request).await.unwrap();
                    prop_assert_eq!(&got, &expected, "step {} of {:?}", i, steps);
                }
                Ok(())
            })
        })
        .unwrap();
}

#[tokio::test]
async fn a_flushed_script_is_loaded_again() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let clock = ManualClock::new();
    let s = source(&redis.url(), RuleSet::demo(), &clock);
    let email = Target::operation("send_email");
    assert_eq!(grant(&s, "u", &email, 1).await, (1, 9));
    // EVALSHA now answers NOSCRIPT: the source loads the script and runs it again.
    assert!(redis
        .command(&["SCRIPT", "FLUSH"])
        .unwrap()
        .starts_with("+OK"));
    assert_eq!(grant(&s, "u", &email, 1).await, (1, 8));
}
