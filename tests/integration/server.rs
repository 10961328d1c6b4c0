//! `lightrate-server` speaks the protocol as the hosted API does, to any HTTP client.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{start_server, TestServer, API_KEY, APP_ID};

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
