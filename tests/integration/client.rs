//! `LightRateClient` against the real `lightrate-server`, with faults injected by the server's
//! own fault layer.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use lightrate::{ErrorKind, LightRateClient, Target, TokenSource};
use lightrate_server::faults::Fault;
use serde_json::json;

use crate::support::{refused_addr, start_server, API_KEY, APP_ID};

const QUICK: Duration = Duration::from_secs(5);

#[tokio::test]
async fn every_target_kind_is_granted_under_its_rule() {
    let t = start_server().await;
    let client = t.client(QUICK);

    let op = client
        .consume_tokens("alice", 1, Target::operation("send_email"))
        .await
        .unwrap();
    assert_eq!((op.tokens_consumed, op.tokens_remaining), (1, 9));
    assert_eq!(op.rule.id, "rule_send_email");
    assert!(!op.rule.is_default);

    let path = client
        .consume_tokens("alice", 2, Target::path(Method::GET, "/hello"))
        .await
        .unwrap();
    assert_eq!((path.tokens_consumed, path.tokens_remaining), (2, 18));
    assert_eq!(path.rule.http_method.as_deref(), Some("GET"));

    let default = client
        .consume_tokens("alice", 1, Target::Default)
        .await
        .unwrap();
    assert!(default.rule.is_default);
    assert_eq!(default.rule.matcher, None);
    assert_eq!(default.tokens_remaining, 4);

    // An unmatched path falls to the default rule: the same bucket as above.
    let items = client
        .consume_tokens("alice", 1, Target::path(Method::GET, "/items/42"))
        .await
        .unwrap();
    assert!(items.rule.is_default);
    assert_eq!(items.tokens_remaining, 3);
}

#[tokio::test]
async fn partial_grants_denials_and_refill_on_the_servers_clock() {
    let t = start_server().await;
    let client = t.client(QUICK);
    let email = || Target::operation("send_email");

    let first = client.consume_tokens("bob", 8, email()).await.unwrap();
    assert_eq!(first.tokens_consumed, 8);
    let partial = client.consume_tokens("bob", 5, email()).await.unwrap();
    assert_eq!((partial.tokens_consumed, partial.tokens_remaining), (2, 0));
    assert_eq!(partial.throttles, 1);
    let denied = client.consume_tokens("bob", 1, email()).await.unwrap();
    assert!(!denied.is_granted());
    // Another user is unaffected.
    assert!(client
        .consume_tokens("carol", 1, email())
        .await
        .unwrap()
        .is_granted());

    t.clock.advance(Duration::from_secs(3));
    let refilled = client.consume_tokens("bob", 5, email()).await.unwrap();
    assert_eq!(refilled.tokens_consumed, 3);
}

#[tokio::test]
async fn the_wire_carries_exactly_the_protocols_json_and_headers() {
    let t = start_server().await;
    let client = t.client(QUICK);
    client
        .consume_tokens("u1", 3, Target::path(Method::POST, "/api/send"))
        .await
        .unwrap();
    client
        .consume_tokens("u1", 1, Target::operation("send_email"))
        .await
        .unwrap();
    client
        .consume_tokens("u1", 1, Target::Default)
        .await
        .unwrap();

    let recorded = t.faults.recorded();
    assert_eq!(recorded.len(), 3);
    let r = &recorded[0];
    assert_eq!(r.method, Method::POST);
    assert_eq!(r.uri.path(), "/api/v1/tokens/consume");
    let header = |name: &str| r.headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(header("authorization"), Some(format!("Bearer {API_KEY}")));
    assert_eq!(header("x-api-key").as_deref(), Some(API_KEY));
    assert_eq!(header("x-application-id").as_deref(), Some(APP_ID));
    assert_eq!(header("content-type").as_deref(), Some("application/json"));
    assert_eq!(header("accept").as_deref(), Some("application/json"));
    assert_eq!(
        header("user-agent"),
        Some(format!("lightrate-rust/{}", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(
        String::from_utf8(r.body.to_vec()).unwrap(),
        format!(
            r#"{{"applicationId":"{APP_ID}","userIdentifier":"u1","tokensRequested":3,"path":"/api/send","httpMethod":"POST"}}"#
        )
    );
    assert_eq!(
        recorded[1].json(),
        json!({"applicationId": APP_ID, "userIdentifier": "u1", "tokensRequested": 1,
               "operation": "send_email"})
    );
    assert_eq!(
        recorded[2].json(),
        json!({"applicationId": APP_ID, "userIdentifier": "u1", "tokensRequested": 1})
    );
}

#[tokio::test]
async fn client_errors_carry_status_and_server_message() {
    let t = start_server().await;

    let wrong_key = LightRateClient::builder("sk_wrong_key_that_is_long", APP_ID)
        .base_url(t.server.base_url())
        .build()
        .unwrap();
    let e = wrong_key
        .consume_tokens("u", 1, Target::Default)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized);
    assert_eq!(e.status(), Some(StatusCode::UNAUTHORIZED));
    assert_eq!(e.message(), "Invalid or missing API key");
    assert!(e.is_configuration());

    let wrong_app = LightRateClient::builder(API_KEY, "app_other")
        .base_url(t.server.base_url())
        .build()
        .unwrap();
    let e = wrong_app
        .consume_tokens("u", 1, Target::Default)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert_eq!(e.message(), "Application not found");

    let client = t.client(QUICK);
    let huge_user = "u".repeat(2000);
    let e = client
        .consume_tokens(&huge_user, 1, Target::Default)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadRequest);
    assert!(e.message().contains("userIdentifier"), "{e}");

    // None of these is retried: three requests reached the server, one each.
    assert_eq!(t.faults.count(), 3);
}

#[tokio::test]
async fn blank_user_and_zero_tokens_are_rejected_without_a_call() {
    let t = start_server().await;
    let client = t.client(QUICK);
    for (user, n) in [("", 1), ("  ", 1), ("u", 0)] {
        let e = client
            .consume_tokens(user, n, Target::Default)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
    }
    assert_eq!(t.faults.count(), 0);
}

#[tokio::test]
async fn a_slow_answer_times_out_on_time_and_is_not_retried() {
    let t = start_server().await;
    t.faults.push(Fault::Delay(Duration::from_secs(10)));
    let client = t.client(Duration::from_millis(300));
    let started = Instant::now();
    let e = client
        .consume_tokens("u", 1, Target::Default)
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(e.kind(), ErrorKind::Timeout);
    assert!(e.is_outage());
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(1500), "took {elapsed:?}");
    assert_eq!(
        t.faults.count(),
        1,
        "a timed-out request must not be retried"
    );
}

#[tokio::test]
async fn a_refused_connection_is_a_network_error_after_bounded_retries() {
    let base = refused_addr().await;
    let client = LightRateClient::builder(API_KEY, APP_ID)
        .base_url(base)
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let started = Instant::now();
    let e = client
        .consume_tokens("u", 1, Target::Default)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Network);
    assert!(e.is_outage());
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(!format!("{e:?} {e}").contains(API_KEY));
}

#[tokio::test]
async fn a_garbage_answer_is_a_decode_error() {
    let t = start_server().await;
    t.faults.push(Fault::Garbage);
    let e = t
        .client(QUICK)
        .consume_tokens("u", 1, Target::Default)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Decode);
    assert!(e.message().contains("not json"), "{e}");
    assert_eq!(t.faults.count(), 1);
}

#[tokio::test]
async fn a_503_then_success_is_retried_transparently() {
    let t = start_server().await;
    t.faults
        .push(Fault::Status(StatusCode::SERVICE_UNAVAILABLE));
    t.faults.push(Fault::Status(StatusCode::BAD_GATEWAY));
    let answer = t
        .client(QUICK)
        .consume_tokens("u", 1, Target::operation("send_email"))
        .await
        .unwrap();
    assert_eq!(answer.tokens_consumed, 1);
    assert_eq!(t.faults.count(), 3);
    // Only the last attempt was processed: exactly one token was charged.
    assert_eq!(answer.tokens_remaining, 9);
}

#[tokio::test]
async fn retries_stop_at_retry_attempts() {
    let t = start_server().await;
    t.faults
        .set_always(Some(Fault::Status(StatusCode::SERVICE_UNAVAILABLE)));
    let client = LightRateClient::builder(API_KEY, APP_ID)
        .base_url(t.server.base_url())
        .retry_attempts(2)
        .build()
        .unwrap();
    let e = client
        .consume_tokens("u", 1, Target::Default)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert_eq!(e.message(), "injected fault");
    assert_eq!(t.faults.count(), 3, "one attempt and two retries");
}

#[tokio::test]
async fn retry_after_is_honoured_within_the_deadline() {
    let t = start_server().await;
    t.faults
        .push(Fault::StatusRetryAfter(StatusCode::TOO_MANY_REQUESTS, 1));
    let started = Instant::now();
    let answer = t
        .client(QUICK)
        .consume_tokens("u", 1, Target::Default)
        .await
        .unwrap();
    assert!(answer.is_granted());
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(t.faults.count(), 2);
}

#[tokio::test]
async fn retry_after_past_the_deadline_fails_at_once() {
    let t = start_server().await;
    t.faults
        .push(Fault::StatusRetryAfter(StatusCode::SERVICE_UNAVAILABLE, 30));
    let started = Instant::now();
    let e = t
        .client(Duration::from_secs(2))
        .consume_tokens("u", 1, Target::Default)
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert_eq!(e.retry_after(), Some(Duration::from_secs(30)));
    assert_eq!(t.faults.count(), 1);
}

#[tokio::test]
async fn a_dropped_connection_is_a_network_error_and_not_retried() {
    let t = start_server().await;
    t.faults.push(Fault::Drop);
    let e = t
        .client(QUICK)
        .consume_tokens("u", 1, Target::Default)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Network, "{e}");
    assert_eq!(
        t.faults.count(),
        1,
        "the request was sent: it may have been charged"
    );
}

#[tokio::test]
async fn an_echoed_api_key_is_scrubbed_from_errors() {
    let t = start_server().await;
    t.faults.push(Fault::Body(
        StatusCode::UNAUTHORIZED,
        format!(r#"{{"message":"key {API_KEY} is revoked"}}"#),
    ));
    let e = t
        .client(QUICK)
        .consume_tokens("u", 1, Target::Default)
        .await
        .unwrap_err();
    assert_eq!(e.message(), "key [redacted] is revoked");
    assert!(!format!("{e} {e:?}").contains(API_KEY));
}

#[tokio::test]
async fn non_json_error_bodies_fall_back_to_the_status() {
    let t = start_server().await;
    t.faults
        .push(Fault::Body(StatusCode::IM_A_TEAPOT, "<html>".into()));
    let e = t
        .client(QUICK)
        .consume_tokens("u", 1, Target::Default)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Api);
    assert_eq!(e.message(), "HTTP 418 Error");
}

#[tokio::test]
async fn the_client_is_a_token_source() {
    let t = start_server().await;
    let client = t.client(QUICK);
    let target = Target::operation("send_email");
    let request = lightrate::ConsumeRequest::new("u", &target, 5).with_default_bucket_match(1);
    let answer = TokenSource::consume_tokens(&client, request).await.unwrap();
    assert_eq!(answer.tokens_consumed, 5);
    assert_eq!(
        t.faults.recorded()[0].json()["tokensRequestedForDefaultBucketMatch"],
        json!(1)
    );
}

#[tokio::test]
async fn local_buckets_like_the_sdks_with_leases_up_to_the_bucket_size() {
    let t = start_server().await;
    let client = t.client(QUICK);
    let email = || Target::operation("send_email");

    // send_email refills 1 per second with a burst of 10. The first lease learns the rule, the
    // second the others' take (none); then leases grow with demand, within what is left, and
    // shrink to one request's cost when fewer than three tokens would be left over.
    let mut local = 0;
    for _ in 0..10 {
        let r = client
            .consume_local_bucket_token("dana", email())
            .await
            .unwrap();
        assert!(r.success);
        local += usize::from(r.used_local_token);
        let status = r.bucket_status.clone().unwrap();
        assert_eq!(status.rule_id, "rule_send_email");
    }
    let asked: Vec<u64> = t
        .faults
        .recorded()
        .iter()
        .map(|r| r.json()["tokensRequested"].as_u64().unwrap())
        .collect();
    assert_eq!(asked[..2], [1, 1], "{asked:?}");
    assert!(
        asked.iter().all(|&n| n <= 8),
        "{asked:?}: never more than what is left"
    );
    assert_eq!(
        asked.len() + local,
        10,
        "{asked:?}: one call per request not served locally"
    );
    assert!(local >= 4, "{asked:?}");
    // The last lease emptied the source: denials come from the denial cache, with no call.
    let calls = t.faults.count();
    for _ in 0..20 {
        let r = client
            .consume_local_bucket_token("dana", email())
            .await
            .unwrap();
        assert!(!r.success);
    }
    assert_eq!(t.faults.count(), calls, "denied requests make no API calls");

    let statuses = client.get_all_bucket_statuses();
    assert_eq!(statuses.len(), 1);
    assert_eq!(statuses[0].user_identifier, "dana");
    client.reset_all_buckets();
    assert!(client.get_all_bucket_statuses().is_empty());
}

#[tokio::test]
async fn local_buckets_surface_api_errors_like_the_sdks() {
    let t = start_server().await;
    t.faults
        .set_always(Some(Fault::Status(StatusCode::INTERNAL_SERVER_ERROR)));
    let e = t
        .client(QUICK)
        .consume_local_bucket_token("erin", Target::Default)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Internal);
}
