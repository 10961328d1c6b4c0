//! `lightrate-server` speaks the protocol as the hosted API does, to any HTTP client.

use std::time::Duration;

use lightrate_core::{EmbeddedSource, RefillRate, RuleSet, Target};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{start_server, start_server_with, TestServer, API_KEY, APP_ID};

async fn post(t: &TestServer, headers: &[(&str, &str)], body: &str) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/api/v1/tokens/consume", t.server.base_url()))
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn bearer() -> String {
    format!("Bearer {API_KEY}")
}

#[tokio::test]
async fn accepts_the_key_as_bearer_or_x_api_key_and_the_app_from_body_or_header() {
    let t = start_server().await;
    let body =
        json!({"applicationId": APP_ID, "userIdentifier": "u", "tokensRequested": 1}).to_string();
    let (status, answer) = post(&t, &[("authorization", &bearer())], &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["tokensConsumed"], 1);
    assert_eq!(answer["rule"]["isDefault"], true);
    assert_eq!(answer["rule"]["matcher"], Value::Null);

    // Ruby's SDK sends no X-Application-Id; the reference documents x-api-key.
    let (status, _) = post(&t, &[("x-api-key", API_KEY)], &body).await;
    assert_eq!(status, StatusCode::OK);

    let no_app = json!({"userIdentifier": "u", "tokensRequested": 1}).to_string();
    let (status, _) = post(
        &t,
        &[("x-api-key", API_KEY), ("x-application-id", APP_ID)],
        &no_app,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(t.server.consume_calls(), 3);
}

#[tokio::test]
async fn rejects_missing_and_wrong_keys_with_401() {
    let t = start_server().await;
    let body =
        json!({"applicationId": APP_ID, "userIdentifier": "u", "tokensRequested": 1}).to_string();
    for headers in [
        vec![],
        vec![("authorization", "Bearer nope")],
        vec![("x-api-key", "nope")],
        vec![("authorization", "Basic c2s6")],
        vec![("authorization", "Bearer sk_test_0123456789abcdeX")],
    ] {
        let (status, answer) = post(&t, &headers, &body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert_eq!(
            answer,
            json!({"error": "Unauthorized", "message": "Invalid or missing API key"})
        );
    }
    assert_eq!(t.server.consume_calls(), 0);
}

#[tokio::test]
async fn unknown_application_is_404() {
    let t = start_server().await;
    let body =
        json!({"applicationId": "other", "userIdentifier": "u", "tokensRequested": 1}).to_string();
    let (status, answer) = post(&t, &[("authorization", &bearer())], &body).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        answer,
        json!({"error": "Not Found", "message": "Application not found"})
    );
}

#[tokio::test]
async fn malformed_bodies_get_json_400s() {
    let t = start_server().await;
    let auth = [("authorization", bearer())];
    let auth: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for (body, expected) in [
        ("{not json", "not valid JSON"),
        ("[1,2]", "JSON object"),
        ("", "not valid JSON"),
        (
            r#"{"applicationId":"app_test","tokensRequested":1}"#,
            "userIdentifier is required",
        ),
        (
            r#"{"applicationId":"app_test","userIdentifier":"u","tokensRequested":1,"operation":"o","path":"/p","httpMethod":"GET"}"#,
            "mutually exclusive",
        ),
        (
            r#"{"applicationId":"app_test","userIdentifier":"u","tokensRequested":-4}"#,
            "positive integer",
        ),
    ] {
        let (status, answer) = post(&t, &auth, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer["error"], "Bad Request");
        assert!(
            answer["message"].as_str().unwrap().contains(expected),
            "{body}: {answer}"
        );
    }
    // Nothing was charged.
    assert_eq!(t.server.source().bucket_count(), 0);
}

#[tokio::test]
async fn bodies_past_the_limit_get_413() {
    let t = start_server().await;
    let huge = format!(
        r#"{{"applicationId":"{APP_ID}","userIdentifier":"u","tokensRequested":1,"pad":"{}"}}"#,
        "x".repeat(100_000)
    );
    let (status, answer) = post(&t, &[("authorization", &bearer())], &huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer["error"], "Payload Too Large");
}

#[tokio::test]
async fn other_routes_and_methods_get_json_errors() {
    let t = start_server().await;
    let http = reqwest::Client::new();
    let get = http
        .get(format!("{}/api/v1/tokens/consume", t.server.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(get.headers()["allow"], "POST");
    let missing = http
        .get(format!("{}/nope", t.server.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"], "Not Found");
    let health = http
        .get(format!("{}/health", t.server.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn shutdown_closes_the_port() {
    let t = start_server().await;
    let base = t.server.base_url();
    let client = t.client(std::time::Duration::from_secs(2));
    assert!(client
        .consume_tokens("u", 1, lightrate::Target::Default)
        .await
        .is_ok());
    t.server.shutdown().await;
    let e = client
        .consume_tokens("u", 1, lightrate::Target::Default)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), lightrate::ErrorKind::Network, "{e} ({base})");
}

/// Slow and fractional rates survive the trip from a rules file, through the server's JSON,
/// into the client: exactly for readable rates, within 0.1% for any decimal.
#[tokio::test]
async fn slow_rates_round_trip_through_toml_the_server_and_the_client() {
    let rules = RuleSet::from_toml_str(
        r#"
        [default]
        refill = "1/day"
        burst_rate = 3

        [[rules]]
        name = "hourly"
        matcher = "^hourly$"
        refill = "10/hour"
        burst_rate = 10

        [[rules]]
        name = "decimal"
        matcher = "^decimal$"
        refill_rate = 0.000277778
        burst_rate = 1
        "#,
    )
    .unwrap();
    let expected = |op: &str| rules.resolve(&Target::operation(op)).refill_rate;
    let (hourly, decimal, daily) = (expected("hourly"), expected("decimal"), expected("x"));
    assert_eq!(hourly, RefillRate::per_hour(10));
    assert_eq!(daily, RefillRate::per_day(1));
    let t = start_server_with(EmbeddedSource::new(rules)).await;
    let client = t.client(Duration::from_secs(5));
    for (op, rate) in [("hourly", hourly), ("decimal", decimal), ("x", daily)] {
        let answer = client
            .consume_tokens("u", 1, Target::operation(op))
            .await
            .unwrap();
        assert_eq!(answer.rule.refill_rate, rate, "{op}");
    }
    // On the wire: tokens per second as the decimal that reads back as the same rate.
    let (status, body) = post(
        &t,
        &[("authorization", &bearer())],
        r#"{"applicationId":"app_test","userIdentifier":"v","tokensRequested":1,"operation":"hourly"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let per_second = body["rule"]["refillRate"].as_f64().unwrap();
    assert!((per_second - 10.0 / 3600.0).abs() < 1e-15, "{per_second}");
    let per_second = {
        let (_, body) = post(
            &t,
            &[("authorization", &bearer())],
            r#"{"applicationId":"app_test","userIdentifier":"v","tokensRequested":1,"operation":"decimal"}"#,
        )
        .await;
        body["rule"]["refillRate"].as_f64().unwrap()
    };
    assert_eq!(per_second, 0.000277778);
    // A denial on the hourly rule says the true wait: six minutes a token.
    let mut last = None;
    for _ in 0..11 {
        last = Some(
            client
                .consume_tokens("w", 1, Target::operation("hourly"))
                .await
                .unwrap(),
        );
    }
    let last = last.unwrap();
    assert_eq!(last.tokens_consumed, 0);
    assert_eq!(last.retry_after_ms, Some(360_000));
}
