//! Redis down, slow, restarted, or refusing the password: outage errors within the timeout,
//! served again with no restart, and no password anywhere.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lightrate_core::{
    ConsumeRequest, DecisionSource, ErrorKind, Limiter, OnUnavailable, RuleSet, Target, TokenSource,
};
use lightrate_redis::test_util::RedisServer;
use lightrate_redis::RedisSource;

const TIMEOUT: Duration = Duration::from_millis(300);
/// What a loaded two-core machine may add to the timeout.
const MARGIN: Duration = Duration::from_millis(400);
/// How soon a Redis that is back must be served again.
const RECOVERY: Duration = Duration::from_secs(5);

fn source(url: &str) -> RedisSource {
    RedisSource::builder(RuleSet::demo())
        .application_id(support::unique_app())
        .timeout(TIMEOUT)
        .connect(url)
        .unwrap()
}

async fn consume(source: &RedisSource, user: &str) -> Result<u64, lightrate_core::Error> {
    let target = Target::operation("send_email");
    source
        .consume_tokens(ConsumeRequest::new(user, &target, 1))
        .await
        .map(|r| r.tokens_consumed)
}

/// Polls `condition` every 5 ms until it holds; fails past [`RECOVERY`].
async fn until(condition: impl Fn() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < RECOVERY, "not so within {RECOVERY:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls until a consume succeeds; how long that took.
async fn until_served(source: &RedisSource) -> Duration {
    let start = Instant::now();
    loop {
        if consume(source, "after").await.is_ok() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < RECOVERY,
            "not served again within {RECOVERY:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_during_traffic_is_an_outage_then_served_again_after_a_restart() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let source = Arc::new(source(&redis.url()));
    assert_eq!(consume(&source, "warm").await.unwrap(), 1);

    // Traffic: 8 tasks consuming in a loop; every call, before and after the kill, must end
    // within the timeout (plus a margin), and every failure must be an outage.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answered = Arc::new(AtomicU32::new(0));
    let failures = Arc::new(AtomicU32::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let source = source.clone();
            let stop = stop.clone();
            let (answered, failures) = (answered.clone(), failures.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u32, 0u32);
                let mut slowest = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    match consume(&source, &format!("user-{i}")).await {
                        Ok(_) => {
                            ok += 1;
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            assert!(e.is_outage(), "{e:?}");
                            failed += 1;
                            failures.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                    slowest = slowest.max(start.elapsed());
                }
                (ok, failed, slowest)
            })
        })
        .collect();
    // Every task served before the kill.
    until(|| answered.load(Ordering::Relaxed) >= 16).await;
    redis.kill();
    // Down: an outage error, within the timeout.
    let start = Instant::now();
    let e = consume(&source, "probe").await.unwrap_err();
    let took = start.elapsed();
    assert!(e.is_outage(), "{e:?}");
    assert!(
        matches!(e.kind(), ErrorKind::Network | ErrorKind::Timeout),
        "{e:?}"
    );
    assert!(took < TIMEOUT + MARGIN, "{took:?}");
    // The traffic meets the outage too.
    until(|| failures.load(Ordering::Relaxed) >= 8).await;

    // Back on the same port: served again by the same source, within seconds.
    redis.restart();
    let recovered = until_served(&source).await;
    stop.store(true, Ordering::Relaxed);
    let mut totals = (0, 0);
    for task in tasks {
        let (ok, failed, slowest) = task.await.unwrap();
        assert!(slowest < TIMEOUT + MARGIN, "a call took {slowest:?}");
        totals = (totals.0 + ok, totals.1 + failed);
    }
    assert!(totals.0 > 0 && totals.1 > 0, "{totals:?}");
    println!(
        "served again {recovered:?} after the restart; {} calls answered, {} outage errors",
        totals.0, totals.1
    );
    // Redis restarted empty: the bucket is full again.
    assert_eq!(consume(&source, "warm").await.unwrap(), 1);
}

#[tokio::test]
async fn a_redis_that_is_down_at_start_is_an_outage_until_it_is_up() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    redis.kill();
    // Building the source does no I/O: it cannot fail on a Redis that is down.
    let source = source(&redis.url());
    let start = Instant::now();
    let e = consume(&source, "u").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Network, "{e:?}");
    assert!(start.elapsed() < TIMEOUT + MARGIN);
    assert!(source.ping().await.is_err());
    redis.restart();
    until_served(&source).await;
    source.ping().await.unwrap();
}

#[tokio::test]
async fn a_redis_that_does_not_answer_times_out() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let source = source(&redis.url());
    assert_eq!(consume(&source, "u").await.unwrap(), 1);
    // Every other client's commands wait for 3 s.
    let paused = redis.command(&["CLIENT", "PAUSE", "3000", "ALL"]).unwrap();
    assert!(paused.starts_with("+OK"), "{paused}");
    let start = Instant::now();
    let e = consume(&source, "u").await.unwrap_err();
    let took = start.elapsed();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e:?}");
    assert!(took >= TIMEOUT && took < TIMEOUT + MARGIN, "{took:?}");
    assert!(e.message().contains("300 ms"), "{e}");
    let _ = redis.command(&["CLIENT", "UNPAUSE"]).unwrap();
    until_served(&source).await;
}

#[tokio::test]
async fn a_limiter_applies_its_outage_policy_to_a_dead_redis() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let deny = Limiter::builder(source(&redis.url()))
        .on_unavailable(OnUnavailable::Deny)
        .build();
    let allow = Limiter::builder(source(&redis.url()))
        .on_unavailable(OnUnavailable::Allow)
        .build();
    let email = Target::operation("send_email");
    assert!(deny.check("u", &email).await.unwrap().is_allowed());
    redis.kill();
    let start = Instant::now();
    let denied = deny.check("v", &email).await.unwrap();
    assert!(!denied.is_allowed());
    assert_eq!(denied.source(), DecisionSource::Unavailable);
    assert!(matches!(
        denied.unavailable_kind(),
        Some(ErrorKind::Network | ErrorKind::Timeout)
    ));
    let allowed = allow.check("v", &email).await.unwrap();
    assert!(allowed.is_allowed());
    assert_eq!(allowed.source(), DecisionSource::Unavailable);
    assert!(start.elapsed() < 2 * (TIMEOUT + MARGIN));
}

#[tokio::test]
async fn passwords_never_appear_in_errors_or_debug_output() {
    let Some(redis) = RedisServer::start_with_args(&["--requirepass", "s3cret-pw"]) else {
        return;
    };
    let port = redis.port();
    // The right password: served.
    let good = source(&format!("redis://:s3cret-pw@127.0.0.1:{port}"));
    assert_eq!(consume(&good, "u").await.unwrap(), 1);
    assert!(!format!("{good:?}").contains("s3cret-pw"));
    // A wrong one: a configuration error that does not repeat it.
    let bad = source(&format!("redis://default:hunter2-pw@127.0.0.1:{port}"));
    let e = consume(&bad, "u").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Configuration, "{e:?}");
    assert!(!e.is_outage());
    let ping = bad.ping().await.unwrap_err();
    for text in [
        format!("{e}"),
        format!("{e:?}"),
        format!("{ping:?}"),
        format!("{bad:?}"),
    ] {
        assert!(!text.contains("hunter2-pw"), "{text}");
    }
    // No password given: also a configuration error (NOAUTH).
    let none = source(&redis.url());
    assert_eq!(
        consume(&none, "u").await.unwrap_err().kind(),
        ErrorKind::Configuration
    );
    // An unparsable URL is refused without being repeated.
    let e = RedisSource::connect("redis://:hunter2-pw@[bad", RuleSet::demo()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Configuration);
    assert!(!format!("{e}{e:?}").contains("hunter2-pw"));
}
