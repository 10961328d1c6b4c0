//! A hot key on a remote source: the token server answers every consume 20 ms late, and 32
//! clients of one user hammer `GET /hello` on a rule with tokens for all of them. Nobody may
//! be told 429: requests that arrive while a lease travels ride the next one, and leases grow
//! with demand so that the next one starts before the bucket runs dry.
#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use lightrate_core::{RefillRate, RuleSet, RuleSpec};
use lightrate_server::faults::Fault;

use crate::support::{distant_source, http, Framework};

const CLIENTS: usize = 32;
const REQUESTS_PER_CLIENT: usize = 150;

async fn hot_key(framework: Framework) {
    let rules = RuleSet::builder()
        .default_rule(RefillRate::per_second(1), 5)
        .rule(RuleSpec::path(
            Method::GET,
            "^/hello",
            RefillRate::per_second(1_000_000_000),
            1_000_000_000,
        ))
        .build()
        .unwrap();
    let (_server, faults, limiter) =
        distant_source(rules, Fault::Delay(Duration::from_millis(20))).await;
    let app = framework.start(limiter.clone());

    let too_many = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let http = http();
            let url = format!("{}/hello", app.base_url);
            let too_many = too_many.clone();
            tokio::spawn(async move {
                for _ in 0..REQUESTS_PER_CLIENT {
                    let status = http
                        .get(&url)
                        .header("x-user-id", "hot")
                        .send()
                        .await
                        .unwrap()
                        .status();
                    if status == StatusCode::TOO_MANY_REQUESTS {
                        too_many.fetch_add(1, Ordering::Relaxed);
                    } else {
                        assert_eq!(status, StatusCode::OK);
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    let requests = CLIENTS * REQUESTS_PER_CLIENT;
    let calls = faults.count();
    println!(
        "{framework:?}: {requests} requests, {calls} consume calls 20 ms away: {:.1} requests \
         per call; largest lease {}",
        requests as f64 / calls as f64,
        faults
            .recorded()
            .iter()
            .map(|r| r.json()["tokensRequested"].as_u64().unwrap())
            .max()
            .unwrap()
    );
    assert_eq!(
        too_many.load(Ordering::Relaxed),
        0,
        "429 with tokens to spare"
    );
    assert!(
        calls < requests / 4,
        "{calls} calls for {requests} requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_on_a_slow_source_is_never_refused_axum() {
    hot_key(Framework::Axum).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_on_a_slow_source_is_never_refused_actix() {
    hot_key(Framework::Actix).await;
}
