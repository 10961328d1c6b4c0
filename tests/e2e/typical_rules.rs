//! The rules people write, over real sockets: the token server answers every consume 20 ms
//! late, give or take 10 ms, and one in twenty five times as late; the demo app runs with the
//! library's defaults. One user per rule sends 40 requests 50 ms apart (all five users at
//! once). Far from the limit (100/minute, 1000/hour, 10 000/day) every request is allowed with
//! at most 8 calls for the 40 (the SDKs' fixed lease of 5 makes 8), because leases follow what
//! the source says is left and the demand, not the refill rate; a rule with room to spare
//! likewise; a rule the demand drains (10/s, burst 20, at 20/s) admits what the source has.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use lightrate_core::{RefillRate, RuleSet, RuleSpec};
use lightrate_server::faults::Fault;

use crate::support::{distant_source, http, Framework};

/// (route, refill, burst): each a rule on `GET /items/<route>`.
const RULES: [(&str, RefillRate, u64); 5] = [
    ("minute", RefillRate::per_minute(100), 100),
    ("hour", RefillRate::per_hour(1000), 1000),
    ("day", RefillRate::per_day(10_000), 10_000),
    ("second", RefillRate::per_second(10), 20),
    ("fast", RefillRate::per_second(1_000_000_000), 1_000_000_000),
];

const REQUESTS: usize = 40;

/// What one user saw: 200s, and the latency of each request.
async fn paced(url: String, user: &'static str) -> (usize, Vec<Duration>) {
    let http = http();
    let mut allowed = 0;
    let mut latencies = Vec::new();
    for i in 0..REQUESTS {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let start = Instant::now();
        let status = http
            .get(&url)
            .header("x-user-id", user)
            .send()
            .await
            .unwrap()
            .status();
        latencies.push(start.elapsed());
        match status {
            StatusCode::OK => allowed += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("{url}: {other}"),
        }
    }
    latencies.sort_unstable();
    (allowed, latencies)
}

async fn typical_rules(framework: Framework) {
    let mut rules = RuleSet::builder().default_rule(RefillRate::per_second(1), 5);
    for (route, refill, burst) in RULES {
        rules = rules.rule(RuleSpec::path(
            Method::GET,
            format!("^/items/{route}$"),
            refill,
            burst,
        ));
    }
    let jittery = Fault::Jitter {
        delay: Duration::from_millis(20),
        jitter: Duration::from_millis(10),
        slow_one_in: 20,
    };
    let (_server, faults, limiter) = distant_source(rules.build().unwrap(), jittery).await;
    let app = framework.start(limiter);

    let users: Vec<_> = RULES
        .iter()
        .map(|(route, ..)| {
            let url = format!("{}/items/{route}", app.base_url);
            tokio::spawn(paced(url, route))
        })
        .collect();
    for ((route, refill, burst), user) in RULES.iter().zip(users) {
        let (allowed, latencies) = user.await.unwrap();
        let calls = faults
            .recorded()
            .iter()
            .filter(|r| r.json()["path"] == format!("/items/{route}"))
            .count();
        let p50 = latencies[REQUESTS / 2];
        println!(
            "{framework:?} {refill} burst {burst}: {allowed} of {REQUESTS} allowed, {calls} \
             source calls, p50 {p50:?}, slowest {:?}",
            latencies[REQUESTS - 1]
        );
        if *route == "second" {
            // 20/s against 10/s with a burst of 20: what the source has over the 2 s (20 + 10
            // a second), at most; and leases follow it down to one request's cost.
            assert!((35..=REQUESTS).contains(&allowed), "{route}: {allowed}");
        } else {
            assert_eq!(
                allowed, REQUESTS,
                "{route}: a request under the limit was refused"
            );
            assert!(calls <= 8, "{route}: {calls} calls for {REQUESTS} requests");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_people_write_stay_local_on_a_jittery_source_axum() {
    typical_rules(Framework::Axum).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_people_write_stay_local_on_a_jittery_source_actix() {
    typical_rules(Framework::Actix).await;
}
