//! `GET /metrics`, scraped over a real socket and read with a Prometheus text parser
//! (`prometheus-parse`): exact counter values after allowed, denied, invalid, unauthorised,
//! unknown-application and store-error requests.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use lightrate_core::{
    ConsumeRequest, ConsumeTokensResponse, EmbeddedSource, Error, ErrorKind, RefillRate, RuleSet,
    TokenSource,
};
use lightrate_server::{LightRateServer, RunningServer, ServerConfig, TokenStore};
use prometheus_parse::{Scrape, Value};
use serde_json::json;

const KEY: &str = "sk_test_metrics_0123456789";
const APP: &str = "app_metrics";

/// The embedded source, except that the user `timeout` always times out and the user
/// `misconfigured` always gets a configuration error: store errors on demand.
#[derive(Debug)]
struct FailingStore(EmbeddedSource);

impl TokenSource for FailingStore {
    async fn consume_tokens(
        &self,
        request: ConsumeRequest<'_>,
    ) -> Result<ConsumeTokensResponse, Error> {
        match request.user_identifier {
            "timeout" => Err(Error::new(ErrorKind::Timeout, "the store did not answer")),
            "misconfigured" => Err(Error::new(ErrorKind::Configuration, "bad store")),
            _ => self.0.consume_now(request),
        }
    }
}

impl TokenStore for FailingStore {
    fn live_buckets(&self) -> Option<u64> {
        self.0.live_buckets()
    }
}

fn rules() -> RuleSet {
    RuleSet::builder()
        .default_rule(RefillRate::per_hour(1), 5)
        .operation("Send Email", "^send_email$", RefillRate::per_hour(1), 2)
        .build()
        .unwrap()
}

async fn server(metrics: bool) -> RunningServer<FailingStore> {
    let store = Arc::new(FailingStore(EmbeddedSource::new(rules())));
    let config = ServerConfig::with_store(KEY, APP, store)
        .unwrap()
        .metrics(metrics);
    LightRateServer::new(config)
        .bind("127.0.0.1:0")
        .await
        .unwrap()
}

/// POSTs `body` with `key` (none if `None`) and returns the status.
async fn post(server: &RunningServer<FailingStore>, key: Option<&str>, body: String) -> u16 {
    let mut request = reqwest::Client::new()
        .post(format!("{}/api/v1/tokens/consume", server.base_url()))
        .header("content-type", "application/json")
        .body(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.unwrap().status().as_u16()
}

fn consume(user: &str, tokens: u64, operation: Option<&str>) -> String {
    let mut body = json!({"applicationId": APP, "userIdentifier": user, "tokensRequested": tokens});
    if let Some(op) = operation {
        body["operation"] = json!(op);
    }
    body.to_string()
}

/// The value of the sample `name` whose labels include every pair of `labels`.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&prometheus_parse::Sample> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(k).unwrap_or("") == *v)
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:#?}");
    match &found[0].value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{name}: {other:?}"),
    }
}

#[tokio::test]
async fn every_counter_has_its_exact_value_after_each_kind_of_request() {
    let server = server(true).await;
    let send_email = Some("send_email");
    // alice: 2 granted, then denied (burst 2).
    for expected in [200, 200, 200] {
        assert_eq!(
            post(&server, Some(KEY), consume("alice", 1, send_email)).await,
            expected
        );
    }
    // bob asks for 5 and gets the 2 there are (a partial grant is granted).
    assert_eq!(
        post(&server, Some(KEY), consume("bob", 5, send_email)).await,
        200
    );
    // carol: 3 tokens under the default rule.
    assert_eq!(
        post(&server, Some(KEY), consume("carol", 3, None)).await,
        200
    );
    // Invalid: not JSON, and no user.
    assert_eq!(post(&server, Some(KEY), "{".into()).await, 400);
    let no_user = json!({"applicationId": APP, "tokensRequested": 1}).to_string();
    assert_eq!(post(&server, Some(KEY), no_user).await, 400);
    // Unauthorised: no key, a wrong key, twice.
    assert_eq!(post(&server, None, consume("eve", 1, None)).await, 401);
    assert_eq!(
        post(&server, Some("wrong"), consume("eve", 1, None)).await,
        401
    );
    assert_eq!(
        post(&server, Some("wrong"), consume("eve", 1, None)).await,
        401
    );
    // Another application.
    let other = json!({"applicationId": "other", "userIdentifier": "u", "tokensRequested": 1});
    assert_eq!(post(&server, Some(KEY), other.to_string()).await, 404);
    // Store errors: two timeouts (503), one configuration error (500).
    assert_eq!(
        post(&server, Some(KEY), consume("timeout", 1, None)).await,
        503
    );
    assert_eq!(
        post(&server, Some(KEY), consume("timeout", 1, None)).await,
        503
    );
    assert_eq!(
        post(&server, Some(KEY), consume("misconfigured", 1, None)).await,
        500
    );
    // Not consumes: not counted.
    let health = reqwest::get(format!("{}/health", server.base_url()))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    let response = reqwest::get(format!("{}/metrics", server.base_url()))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();

    let requests = "lightrate_server_consume_requests_total";
    let by = |status: &'static str, rule: &'static str| {
        value(&scrape, requests, &[("status", status), ("rule", rule)])
    };
    assert_eq!(by("granted", "rule_send_email"), 3.0, "{text}");
    assert_eq!(by("denied", "rule_send_email"), 1.0);
    assert_eq!(by("granted", "rule_default"), 1.0);
    assert_eq!(by("denied", "rule_default"), 0.0);
    assert_eq!(by("invalid", ""), 2.0);
    assert_eq!(by("unauthorized", ""), 3.0);
    assert_eq!(by("unknown_application", ""), 1.0);
    assert_eq!(by("unavailable", ""), 2.0);
    assert_eq!(by("error", ""), 1.0);
    assert_eq!(by("timeout", ""), 0.0);

    let tokens = "lightrate_server_tokens_granted_total";
    assert_eq!(value(&scrape, tokens, &[("rule", "rule_send_email")]), 4.0);
    assert_eq!(value(&scrape, tokens, &[("rule", "rule_default")]), 3.0);

    let errors = "lightrate_server_store_errors_total";
    assert_eq!(value(&scrape, errors, &[("kind", "timeout")]), 2.0);
    assert_eq!(value(&scrape, errors, &[("kind", "configuration")]), 1.0);

    // alice and bob under send_email, carol under the default rule: none full.
    assert_eq!(value(&scrape, "lightrate_server_live_buckets", &[]), 3.0);
    assert_eq!(
        value(&scrape, "lightrate_server_connections_refused_total", &[]),
        0.0
    );

    // Every consume request is timed: 14 of them, all in some bucket.
    let histogram = scrape
        .samples
        .iter()
        .find(|s| s.metric == "lightrate_server_consume_duration_seconds")
        .unwrap();
    let Value::Histogram(buckets) = &histogram.value else {
        panic!("{histogram:?}")
    };
    let inf = buckets.iter().find(|b| b.less_than.is_infinite()).unwrap();
    assert_eq!(inf.count, 14.0);
    assert!(
        buckets.windows(2).all(|w| w[0].count <= w[1].count),
        "cumulative"
    );
    assert!(text.contains("lightrate_server_consume_duration_seconds_count 14\n"));
    assert!(scrape.docs.contains_key(requests), "HELP lines");
}

#[tokio::test]
async fn metrics_can_be_turned_off() {
    let server = server(false).await;
    let response = reqwest::get(format!("{}/metrics", server.base_url()))
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}
