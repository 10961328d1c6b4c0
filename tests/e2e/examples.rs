//! The example binaries themselves, as a new user runs them: `cargo run --example axum_app`
//! (and `actix_app`) with no configuration, on a free port.

use std::process::Stdio;

use lightrate::http::Method;
use lightrate::metrics::{
    DECISIONS_TOTAL, LIVE_BUCKETS, SOURCE_CALLS_TOTAL, TOKENS_EXPIRED_TOTAL, TOKENS_LEASED_TOTAL,
};
use lightrate::{LightRateClient, RefillRate, RuleSet, RuleSpec, Target};
use lightrate_server::faults::Fault;
use lightrate_testing::{demo_app, Listening, Scrape};
use reqwest::StatusCode;

use crate::support::{http, TokenServer, API_KEY, APP_ID};

/// An example binary, started with the embedded source; killed when dropped.
type Example = Listening;

fn start(name: &str) -> Example {
    start_with(name, &[])
}

/// Starts an example binary with these `LIGHTRATE_*` variables (and no others).
fn start_with(name: &str, vars: &[(&str, &str)]) -> Example {
    let mut command = demo_app(name);
    command.stderr(Stdio::null()).envs(vars.iter().copied());
    let example = Listening::spawn(&mut command);
    assert!(
        example.base_url().starts_with("http://127.0.0.1:"),
        "{}",
        example.base_url()
    );
    example
}

async fn drive(example: &Example) {
    let base = example.base_url();
    let client = http();
    let text = |path: &'static str, user: Option<&'static str>| {
        let mut request = client.get(format!("{base}{path}"));
        if let Some(user) = user {
            request = request.header("x-user-id", user);
        }
        async move {
            let response = request.send().await.unwrap();
            (response.status(), response.text().await.unwrap())
        }
    };
    assert_eq!(text("/healthz", None).await, (StatusCode::OK, "ok".into()));
    assert_eq!(
        text("/hello", Some("ivan")).await,
        (StatusCode::OK, "hello ivan".into())
    );
    assert_eq!(
        text("/items/7", Some("ivan")).await,
        (StatusCode::OK, r#"{"id":"7"}"#.into())
    );
    let sent = client
        .post(format!("{base}/emails"))
        .header("x-user-id", "ivan")
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), StatusCode::OK);
    assert_eq!(sent.text().await.unwrap(), r#"{"sent":true}"#);
    // The demo rules: GET /hello has a burst of 20 (one was spent above).
    for _ in 0..19 {
        assert_eq!(text("/hello", Some("ivan")).await.0, StatusCode::OK);
    }
    let (status, body) = text("/hello", Some("ivan")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body.contains("\"rate_limited\""), "{body}");
}

#[tokio::test]
async fn the_axum_example_serves_the_demo_contract() {
    drive(&start("axum_app")).await;
}

#[tokio::test]
async fn the_actix_example_serves_the_demo_contract() {
    drive(&start("actix_app")).await;
}

/// The rules of the metrics scenario, on the token server: `GET /hello` three an hour (so that
/// the denial cache holds for the whole test), `/items` plenty (leases of more than one, local
/// hits), the default rule as in the demo.
fn metrics_rules() -> RuleSet {
    RuleSet::builder()
        .default_rule(RefillRate::per_second(1), 5)
        .rule(
            RuleSpec::path(Method::GET, "^/hello", RefillRate::per_hour(1), 3)
                .with_id("rule_get_hello"),
        )
        .rule(
            RuleSpec::path(
                Method::GET,
                "^/items",
                RefillRate::per_second(10_000),
                100_000,
            )
            .with_id("rule_get_items"),
        )
        .build()
        .unwrap()
}

/// `GET path` as `user` (none: no header) on the example: the status.
async fn status(example: &Example, path: &str, user: Option<&str>) -> StatusCode {
    let mut request = http().get(format!("{}{path}", example.base_url()));
    if let Some(user) = user {
        request = request.header("x-user-id", user);
    }
    request.send().await.unwrap().status()
}

/// The example's `/metrics`, parsed by a Prometheus text parser.
async fn scrape(example: &Example) -> Scrape {
    let response = http()
        .get(format!("{}/metrics", example.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    Scrape::parse(&response.text().await.unwrap())
}

/// Waits until the example has answered and counted every call the token server received
/// from it (`others`: the calls other clients made), polling its `/metrics`.
async fn settled(example: &Example, tokens: &TokenServer, others: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let s = scrape(example).await;
        let counted: f64 = s.all(SOURCE_CALLS_TOTAL).iter().map(|(_, n)| n).sum();
        let received = tokens.calls();
        if counted as usize + others == received {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the example counted {counted} calls, the server received {received}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

fn decisions(scrape: &Scrape, outcome: &str, by: &str, rule: &str) -> u64 {
    scrape.count(
        DECISIONS_TOTAL,
        &[("outcome", outcome), ("decided_by", by), ("rule", rule)],
    )
}

/// Allowed, denied (by the source and by the denial cache), source-error and invalid requests
/// through an example binary (its own process, its own Prometheus recorder) taking its tokens
/// from the token server; each counter of its `/metrics` has the exact value.
async fn metrics_count_every_outcome(name: &str) {
    let tokens = TokenServer::with_rules(metrics_rules()).await;
    let base_url = tokens.server.base_url();
    let example = start_with(
        name,
        &[
            ("LIGHTRATE_API_KEY", API_KEY),
            ("LIGHTRATE_APPLICATION_ID", APP_ID),
            ("LIGHTRATE_BASE_URL", &base_url),
            ("LIGHTRATE_ON_UNAVAILABLE", "allow"),
        ],
    );
    // Another process spends all of dora's `/hello` tokens at the source.
    let other = LightRateClient::builder(API_KEY, APP_ID)
        .base_url(&base_url)
        .build()
        .unwrap();
    let spent = other
        .consume_tokens("dora", 3, Target::path(Method::GET, "/hello"))
        .await
        .unwrap();
    assert_eq!(spent.tokens_consumed, 3);
    let calls_before = tokens.calls();

    // Allowed by the source: three leases of one (near the limit), the last says "empty".
    for _ in 0..3 {
        assert_eq!(
            status(&example, "/hello", Some("ann")).await,
            StatusCode::OK
        );
    }
    // Denied by the denial cache: no call.
    for _ in 0..2 {
        assert_eq!(
            status(&example, "/hello", Some("ann")).await,
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    // Denied by the source: this process did not know dora's bucket was empty.
    assert_eq!(
        status(&example, "/hello", Some("dora")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Allowed, most of them locally: `/items` has plenty, leases grow with demand.
    for _ in 0..30 {
        assert_eq!(
            status(&example, "/items/1", Some("ann")).await,
            StatusCode::OK
        );
    }
    // Refill-ahead leases run in the background: wait for the last one to be answered, so
    // that the fault below meets eve's call and not one of them (the one other call the server
    // received is the other client's).
    settled(&example, &tokens, 1).await;
    let items_calls = tokens.calls() - calls_before - 4;
    // The source fails (a 500 is not retried): the outage policy (allow) decides.
    tokens
        .faults
        .push(Fault::Status(reqwest::StatusCode::INTERNAL_SERVER_ERROR));
    assert_eq!(
        status(&example, "/healthz", Some("eve")).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&example, "/items/9", Some("eve")).await,
        StatusCode::OK
    );
    // Invalid: no call, 400.
    let long = "x".repeat(300);
    assert_eq!(
        status(&example, "/hello", Some(&long)).await,
        StatusCode::BAD_REQUEST
    );

    let s = scrape(&example).await;
    let all = s.all(DECISIONS_TOTAL);
    assert_eq!(
        decisions(&s, "allowed", "source", "rule_get_hello"),
        3,
        "{all:?}"
    );
    assert_eq!(
        decisions(&s, "allowed", "local", "rule_get_hello"),
        0,
        "{all:?}"
    );
    assert_eq!(
        decisions(&s, "denied", "denial_cache", "rule_get_hello"),
        2,
        "{all:?}"
    );
    assert_eq!(
        decisions(&s, "denied", "source", "rule_get_hello"),
        1,
        "{all:?}"
    );
    // Each of the thirty `/items` requests was allowed once: by a lease it waited for, or
    // locally (derived from the tokens of the rule's buckets). Refill-ahead leases run in the
    // background, so there were at least as many calls as requests that waited for one.
    let items_source = decisions(&s, "allowed", "source", "rule_get_items");
    let items_local = decisions(&s, "allowed", "local", "rule_get_items");
    assert_eq!(items_source + items_local, 30, "{all:?}");
    assert!(
        items_local > 0 && items_source as usize <= items_calls,
        "{all:?}"
    );
    assert_eq!(decisions(&s, "unavailable", "source", ""), 1, "{all:?}");
    assert_eq!(decisions(&s, "invalid", "local", ""), 1, "{all:?}");
    let calls = |result| s.count(SOURCE_CALLS_TOTAL, &[("result", result)]);
    assert_eq!(calls("granted") as usize, 3 + items_calls);
    assert_eq!(calls("denied"), 1);
    assert_eq!(calls("internal"), 1);
    // The call histogram counts every call.
    assert_eq!(
        s.count("lightrate_source_call_duration_seconds_count", &[]) as usize,
        5 + items_calls
    );
    assert_eq!(
        s.count(LIVE_BUCKETS, &[]),
        4,
        "ann's two, dora's, eve's (made for her lease)"
    );
    assert_eq!(s.count(TOKENS_EXPIRED_TOTAL, &[]), 0);
    let leased = s.count(TOKENS_LEASED_TOTAL, &[]);
    assert!(leased >= 33, "{leased}");
}

#[tokio::test]
async fn the_axum_example_counts_every_outcome_in_its_metrics() {
    metrics_count_every_outcome("axum_app").await;
}

#[tokio::test]
async fn the_actix_example_counts_every_outcome_in_its_metrics() {
    metrics_count_every_outcome("actix_app").await;
}

/// `LIGHTRATE_MODE=shadow`: nothing refused, the would-be 429s counted as `shadow_denied`.
async fn shadow_mode_counts_what_it_lets_through(name: &str) {
    let tokens = TokenServer::with_rules(metrics_rules()).await;
    let base_url = tokens.server.base_url();
    let example = start_with(
        name,
        &[
            ("LIGHTRATE_API_KEY", API_KEY),
            ("LIGHTRATE_APPLICATION_ID", APP_ID),
            ("LIGHTRATE_BASE_URL", &base_url),
            ("LIGHTRATE_MODE", "shadow"),
        ],
    );
    for _ in 0..6 {
        assert_eq!(
            status(&example, "/hello", Some("ann")).await,
            StatusCode::OK
        );
    }
    let long = "x".repeat(300);
    assert_eq!(
        status(&example, "/hello", Some(&long)).await,
        StatusCode::OK
    );
    let s = scrape(&example).await;
    let all = s.all(DECISIONS_TOTAL);
    assert_eq!(
        decisions(&s, "allowed", "source", "rule_get_hello"),
        3,
        "{all:?}"
    );
    assert_eq!(
        decisions(&s, "shadow_denied", "denial_cache", "rule_get_hello"),
        3,
        "{all:?}"
    );
    assert_eq!(decisions(&s, "denied", "denial_cache", "rule_get_hello"), 0);
    assert_eq!(decisions(&s, "invalid", "local", ""), 1, "{all:?}");
    // Tokens were consumed as enforcement would have.
    assert_eq!(tokens.calls(), 3);
}

#[tokio::test]
async fn the_axum_example_in_shadow_mode() {
    shadow_mode_counts_what_it_lets_through("axum_app").await;
}

#[tokio::test]
async fn the_actix_example_in_shadow_mode() {
    shadow_mode_counts_what_it_lets_through("actix_app").await;
}

/// `cargo run --example tonic_app`: the health service answers SERVING, five calls per user
/// (the demo rules' default rule), then RESOURCE_EXHAUSTED with the retry delay; an unusable
/// identifier is INVALID_ARGUMENT; a call without one is limited by its address.
#[tokio::test]
async fn the_tonic_example_serves_the_demo_contract() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let example = start("tonic_app");
    let channel = tonic::transport::Channel::from_shared(example.base_url().to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client = HealthClient::new(channel);
    let check = |user: Option<String>| {
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: String::new(),
        });
        if let Some(user) = user {
            request
                .metadata_mut()
                .insert("x-user-id", user.parse().unwrap());
        }
        let mut client = client.clone();
        async move { client.check(request).await.map(|a| a.into_inner().status()) }
    };
    for _ in 0..5 {
        assert_eq!(
            check(Some("ivan".into())).await.unwrap(),
            ServingStatus::Serving
        );
    }
    let refused = check(Some("ivan".into())).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert_eq!(refused.metadata().get("retry-after").unwrap(), "1");
    assert!(refused.metadata().get("grpc-retry-pushback-ms").is_some());
    let invalid = check(Some("x".repeat(300))).await.unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument, "{invalid:?}");
    // Without an identifier: the peer address's own bucket (burst 5).
    for _ in 0..5 {
        assert!(check(None).await.is_ok());
    }
    assert_eq!(
        check(None).await.unwrap_err().code(),
        tonic::Code::ResourceExhausted
    );
}
