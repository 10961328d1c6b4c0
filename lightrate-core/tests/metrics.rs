//! The `metrics` feature: every figure the limiter publishes, read back from a Prometheus
//! scrape by a real parser.
#![cfg(feature = "metrics")]
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use lightrate_testing::{Recording, Scrape};
use metrics_exporter_prometheus::PrometheusBuilder;

use lightrate_core::metrics::*;
use lightrate_core::{Error, ErrorKind, Limiter, ManualClock, RefillRate, RuleSet, Target};

/// The limiter's figures as a scrape would read them, from a recorder of this test's own.
fn scrape(limiter: &Limiter) -> Scrape {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || limiter.publish_metrics());
    Scrape::parse(&handle.render())
}

fn decisions(scrape: &Scrape, outcome: &str, by: &str, rule: &str) -> u64 {
    scrape.count(
        DECISIONS_TOTAL,
        &[("outcome", outcome), ("decided_by", by), ("rule", rule)],
    )
}

#[tokio::test]
async fn every_outcome_is_counted_and_local_hits_are_derived_per_rule() {
    let rules = RuleSet::builder()
        .default_rule(RefillRate::per_second(1000), 10_000)
        .operation("Tiny", "^tiny$", RefillRate::per_hour(1), 2)
        .build()
        .unwrap();
    let source = Recording::with_rules(rules);
    let clock = ManualClock::new();
    let limiter = Limiter::builder(source.clone())
        .clock(clock.clone())
        .min_lease_size(10)
        .refill_ahead(false)
        .build();
    // The default rule: the first request learns it, the second leases ten (one for
    // itself), the next nine are local hits.
    let search = Target::operation("search");
    for _ in 0..11 {
        assert!(limiter.check("a", &search).await.unwrap().is_allowed());
    }
    // `tiny`: two granted by the source (the second empties it), then the denial cache,
    // then (past its window on this clock) the source says no.
    let tiny = Target::operation("tiny");
    for _ in 0..3 {
        limiter.check("a", &tiny).await.unwrap();
    }
    clock.advance(Duration::from_secs(3600));
    assert!(!limiter.check("a", &tiny).await.unwrap().is_allowed());
    // An unusable identifier, and an outage.
    assert!(limiter.check(" ", &search).await.is_err());
    source.fail_with(Some(Error::new(ErrorKind::Timeout, "slow")));
    limiter.check("b", &search).await.unwrap();

    let s = scrape(&limiter);
    let rule = "rule_default";
    assert_eq!(
        decisions(&s, "allowed", "local", rule),
        9,
        "{:?}",
        s.all(DECISIONS_TOTAL)
    );
    assert_eq!(decisions(&s, "allowed", "source", rule), 2);
    assert_eq!(decisions(&s, "allowed", "source", "rule_tiny"), 2);
    assert_eq!(decisions(&s, "allowed", "local", "rule_tiny"), 0);
    assert_eq!(decisions(&s, "denied", "denial_cache", "rule_tiny"), 1);
    assert_eq!(decisions(&s, "denied", "source", "rule_tiny"), 1);
    assert_eq!(decisions(&s, "invalid", "local", ""), 1);
    assert_eq!(decisions(&s, "unavailable", "source", ""), 1);
    let calls = |result| s.count(SOURCE_CALLS_TOTAL, &[("result", result)]);
    assert_eq!(
        (calls("granted"), calls("denied"), calls("timeout")),
        (4, 1, 1)
    );
    assert_eq!(s.count(TOKENS_LEASED_TOTAL, &[]), 13);
    assert_eq!(s.count(TOKENS_EXPIRED_TOTAL, &[]), 0);
    // The gauges are the stats'.
    let stats = limiter.stats();
    assert_eq!(s.count(LIVE_BUCKETS, &[]), stats.live_buckets);
    assert_eq!(s.count(CACHED_TARGETS, &[]), stats.cached_targets);
    assert_eq!(s.get(BREAKER_OPEN, &[]), Some(0.0));
    assert_eq!(stats.local_hits, 9);
    assert_eq!(stats.source_calls, 6);
}

#[test]
fn lost_tokens_are_not_local_hits() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let rules = RuleSet::builder()
        .default_rule(RefillRate::per_second(1000), 10_000)
        .build()
        .unwrap();
    let limiter = Limiter::builder(Recording::with_rules(rules))
        .clock(ManualClock::new())
        .min_lease_size(10)
        .refill_ahead(false)
        .build();
    let search = Target::operation("search");
    for _ in 0..4 {
        runtime.block_on(limiter.check("a", &search)).unwrap();
    }
    // Two local hits; seven tokens held, then lost.
    limiter.reset();
    let s = scrape(&limiter);
    assert_eq!(decisions(&s, "allowed", "local", "rule_default"), 2);
    assert_eq!(s.count(TOKENS_EXPIRED_TOTAL, &[]), 7);
    assert_eq!(s.count(LIVE_BUCKETS, &[]), 0);
}
