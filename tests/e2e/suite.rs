//! The end-to-end cases, written once against a base URL and run for both demo apps.

use std::time::{Duration, Instant};

use lightrate::OnUnavailable;
use lightrate_server::faults::Fault;
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{http, logs, Framework, LimiterOptions, TokenServer};

async fn get(
    base: &str,
    path: &str,
    user: Option<&str>,
) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let mut request = http().get(format!("{base}{path}"));
    if let Some(user) = user {
        request = request.header("x-user-id", user);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

async fn post(base: &str, path: &str, user: &str) -> StatusCode {
    http()
        .post(format!("{base}{path}"))
        .header("x-user-id", user)
        .send()
        .await
        .unwrap()
        .status()
}

/// A user is allowed up to the burst, then gets 429 with Retry-After and a JSON body; another
/// user is unaffected; once the retry-after has passed (on the token server's clock, which the
/// app's limiter shares), the user is allowed again.
pub async fn burst_then_429_then_allowed_again(framework: Framework) {
    let tokens = TokenServer::start().await;
    let app = framework.start(tokens.limiter(LimiterOptions::default()));
    let base = &app.base_url;
    for _ in 0..20 {
        let (status, _, body) = get(base, "/hello", Some("alice")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "hello alice"));
    }
    let (status, headers, body) = get(base, "/hello", Some("alice")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "1");
    let json: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"], "rate_limited");
    assert_eq!(json["retryAfter"], 1);
    assert_eq!(get(base, "/hello", Some("bob")).await.0, StatusCode::OK);

    tokens.clock.advance(Duration::from_secs(1));
    assert_eq!(get(base, "/hello", Some("alice")).await.0, StatusCode::OK);
    assert_eq!(
        get(base, "/hello", Some("alice")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// Near the limit each lease asks for one request's cost (no process holds tokens another may
/// need); the lease that empties the source teaches the denial cache, and denied requests
/// inside the denial window cause no call.
pub async fn calls_are_bounded_and_denials_are_free(framework: Framework) {
    let tokens = TokenServer::start().await;
    let app = framework.start(tokens.limiter(LimiterOptions::default()));
    let base = &app.base_url;
    let mut allowed = 0;
    while post(base, "/emails", "carol").await == StatusCode::OK {
        allowed += 1;
    }
    assert_eq!(allowed, 10, "the burst of send_email");
    // One call per request, and none for the first denial: the last lease said it was empty.
    assert_eq!(tokens.calls(), 10);
    assert!(tokens
        .faults
        .recorded()
        .iter()
        .all(|r| r.json()["tokensRequested"] == 1));
    for _ in 0..30 {
        assert_eq!(
            post(base, "/emails", "carol").await,
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    assert_eq!(
        tokens.calls(),
        10,
        "denied requests in the denial window make no calls"
    );
}

/// `POST /emails` sends the operation and no path; `GET /items/42` the concrete path;
/// `/healthz` never reaches the token server.
pub async fn targets_on_the_wire(framework: Framework) {
    let tokens = TokenServer::start().await;
    let app = framework.start(tokens.limiter(LimiterOptions::default()));
    let base = &app.base_url;
    for _ in 0..10 {
        let (status, _, body) = get(base, "/healthz", Some("dave")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    }
    assert_eq!(tokens.calls(), 0);

    assert_eq!(post(base, "/emails", "dave").await, StatusCode::OK);
    let (status, _, body) = get(base, "/items/42", Some("dave")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        serde_json::json!({"id": "42"})
    );

    let recorded = tokens.faults.recorded();
    assert_eq!(recorded.len(), 2);
    let email = recorded[0].json();
    assert_eq!(email["operation"], "send_email");
    assert_eq!(email["userIdentifier"], "dave");
    assert!(
        email.get("path").is_none() && email.get("httpMethod").is_none(),
        "{email}"
    );
    let item = recorded[1].json();
    assert_eq!(item["path"], "/items/42");
    assert_eq!(item["httpMethod"], "GET");
    assert!(item.get("operation").is_none(), "{item}");
}

/// 100 concurrent requests of one new user: the first lease learns the rule, the second
/// carries everyone who came meanwhile; exactly the burst is admitted, never more.
pub async fn concurrent_requests_of_a_new_user_make_two_calls(framework: Framework) {
    let tokens = TokenServer::start().await;
    // A slow token server, so that all hundred are waiting when the lease lands.
    tokens.faults.push(Fault::Delay(Duration::from_secs(1)));
    let app = framework.start(tokens.limiter(LimiterOptions::default()));
    let base = app.base_url.clone();
    let client = http();
    let requests = (0..100).map(|_| {
        let client = client.clone();
        let url = format!("{base}/hello");
        tokio::spawn(async move {
            client
                .get(url)
                .header("x-user-id", "erin")
                .send()
                .await
                .unwrap()
                .status()
        })
    });
    let mut ok = 0;
    for request in requests.collect::<Vec<_>>() {
        if request.await.unwrap() == StatusCode::OK {
            ok += 1;
        }
    }
    assert!(
        tokens.calls() <= 2,
        "one lease to learn the rule and one for everyone waiting, not {}",
        tokens.calls()
    );
    // `GET /hello` has a burst of 20 (and the clock does not move): all of it, nothing more.
    assert_eq!(ok, 20);
}

/// No `x-user-id`: limited by the peer address. Unusable identifiers: 400, no call.
pub async fn peer_address_and_bad_identifiers(framework: Framework) {
    let tokens = TokenServer::start().await;
    let app = framework.start(tokens.limiter(LimiterOptions::default()));
    let base = &app.base_url;
    let (status, _, body) = get(base, "/hello", None).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello 127.0.0.1"));
    assert_eq!(
        tokens.faults.recorded()[0].json()["userIdentifier"],
        "127.0.0.1"
    );

    let long = "x".repeat(10 * 1024);
    let client = http();
    let bad: Vec<reqwest::header::HeaderValue> = vec![
        reqwest::header::HeaderValue::from_static(""),
        reqwest::header::HeaderValue::from_str(&long).unwrap(),
        reqwest::header::HeaderValue::from_bytes(b"a\tb").unwrap(),
        reqwest::header::HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
    ];
    for value in bad {
        let response = client
            .get(format!("{base}/hello"))
            .header("x-user-id", value.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{value:?}");
        let json: Value = response.json().await.unwrap();
        assert_eq!(json["error"], "invalid_user_identifier");
    }
    assert_eq!(tokens.calls(), 1, "no call for an unusable identifier");
}

/// The token server down, slow past the timeout, answering 500, answering garbage: `allow`
/// passes, `deny` answers 503 with Retry-After; each within the timeout plus a margin.
pub async fn outages_follow_the_policy_on_time(framework: Framework) {
    let timeout = Duration::from_millis(400);
    for policy in [OnUnavailable::Allow, OnUnavailable::Deny] {
        for fault in ["down", "slow", "500", "garbage"] {
            let tokens = TokenServer::start().await;
            match fault {
                "slow" => tokens
                    .faults
                    .set_always(Some(Fault::Delay(Duration::from_secs(10)))),
                "500" => tokens.faults.set_always(Some(Fault::Status(
                    reqwest::StatusCode::INTERNAL_SERVER_ERROR,
                ))),
                "garbage" => tokens.faults.set_always(Some(Fault::Garbage)),
                _ => {}
            }
            let options = LimiterOptions {
                on_unavailable: policy,
                timeout,
                ..LimiterOptions::default()
            };
            let limiter = if fault == "down" {
                tokens.limiter_at(&refused_base_url(), options)
            } else {
                tokens.limiter(options)
            };
            let app = framework.start(limiter);
            let started = Instant::now();
            let (status, headers, body) = get(&app.base_url, "/hello", Some("frank")).await;
            let elapsed = started.elapsed();
            assert!(
                elapsed < timeout + Duration::from_secs(2),
                "{policy:?}/{fault}: {elapsed:?}"
            );
            match policy {
                OnUnavailable::Allow => {
                    assert_eq!(status, StatusCode::OK, "{fault}: {body}");
                }
                _ => {
                    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{fault}: {body}");
                    assert!(headers.contains_key("retry-after"), "{fault}");
                    let json: Value = serde_json::from_str(&body).unwrap();
                    assert_eq!(json["error"], "rate_limiter_unavailable");
                }
            }
        }
    }
}

/// A wrong API key: the configured policy, and one configuration error in the logs, not one
/// per request.
pub async fn a_wrong_api_key_is_logged_once(framework: Framework) {
    let tokens = TokenServer::start().await;
    let options = LimiterOptions {
        on_unavailable: OnUnavailable::Deny,
        api_key: Some("sk_wrong_key_for_e2e"),
        ..LimiterOptions::default()
    };
    let before = logs::count("configuration error");
    let app = framework.start(tokens.limiter(options));
    for _ in 0..20 {
        let (status, _, _) = get(&app.base_url, "/hello", Some("gina")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(logs::count("configuration error") - before, 1);
    assert!(
        !logs::contains("sk_wrong_key_for_e2e"),
        "the key never appears in logs"
    );
    assert_eq!(
        tokens.calls(),
        1,
        "calls are held off after a configuration error"
    );
}

fn refused_base_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{address}")
}

/// Instantiates every case for both frameworks.
macro_rules! for_both_apps {
    ($($case:ident),* $(,)?) => {
        mod axum_app {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(crate::support::Framework::Axum).await;
                }
            )*
        }
        mod actix_app {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(crate::support::Framework::Actix).await;
                }
            )*
        }
    };
}

for_both_apps!(
    burst_then_429_then_allowed_again,
    calls_are_bounded_and_denials_are_free,
    targets_on_the_wire,
    concurrent_requests_of_a_new_user_make_two_calls,
    peer_address_and_bad_identifiers,
    outages_follow_the_policy_on_time,
    a_wrong_api_key_is_logged_once,
);
