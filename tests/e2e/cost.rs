//! Cost known after the response, and waiting instead of refusing, over real sockets, for
//! both demo apps against the real token server (on a manual clock): `/completions`
//! (`llm_requests` AND `llm_tokens`, `x-max-tokens` reserved and settled at the use) and
//! `/jobs` (waits up to 2 s for its token).

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{http, Framework, LimiterOptions, TokenServer};

/// A `POST` with these headers: its status, `Retry-After` and JSON body.
async fn post(
    base: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, Option<u64>, Value) {
    post_with(&http(), base, path, headers).await.unwrap()
}

async fn post_with(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> reqwest::Result<(StatusCode, Option<u64>, Value)> {
    let mut request = client.post(format!("{base}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    let body = response.text().await?;
    let json = serde_json::from_str(&body).unwrap_or(Value::String(body));
    Ok((status, retry_after, json))
}

/// One `/completions` of `user`, reserving `max` and using `used`.
async fn complete(
    base: &str,
    user: &str,
    max: &str,
    used: &str,
) -> (StatusCode, Option<u64>, Value) {
    let headers = [
        ("x-user-id", user),
        ("x-max-tokens", max),
        ("x-use-tokens", used),
    ];
    post(base, "/completions", &headers).await
}

/// `/completions`: an unreadable `x-max-tokens` is 400 before any token is taken; unused
/// tokens go back at once (10 requests reserving 500 and using 50 are all admitted on a
/// budget of 1 000, where 2 would be without settling); a 5xx settles at 0; use beyond the
/// reservation is charged after the fact, and the user's next requests wait it off with a
/// `Retry-After` that says for how long; concurrent reservations never hold more than the
/// budget.
pub async fn completions_reserve_then_settle(framework: Framework) {
    let tokens = TokenServer::start().await;
    let app = framework.start(tokens.limiter(LimiterOptions::default()));
    let base = &app.base_url;

    for max in [None, Some("0"), Some("1001"), Some("lots"), Some("-3")] {
        let mut headers = vec![("x-user-id", "ann")];
        if let Some(max) = max {
            headers.push(("x-max-tokens", max));
        }
        let (status, _, body) = post(base, "/completions", &headers).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{max:?}: {body}");
        assert_eq!(body["error"], "invalid_cost", "{body}");
    }
    assert_eq!(
        tokens.calls(),
        0,
        "no token taken for a request that cannot say its cost"
    );

    for _ in 0..10 {
        let (status, _, body) = complete(base, "ann", "500", "50").await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, json!({"usage": {"total_tokens": 50}}))
        );
    }

    // A 5xx settles at 0: the 900 it reserved are there again.
    let failing = [
        ("x-user-id", "ben"),
        ("x-max-tokens", "900"),
        ("x-fail", "1"),
    ];
    let (status, _, _) = post(base, "/completions", &failing).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(complete(base, "ben", "900", "900").await.0, StatusCode::OK);
    assert_eq!(
        complete(base, "ben", "200", "200").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );

    // 1 500 used of 100 reserved, on a budget of 1 000 (10 a second): the request is served;
    // 500 are owed, which the next request finds at the source and waits off (50 s).
    let (status, _, body) = complete(base, "cat", "100", "1500").await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"usage": {"total_tokens": 1500}}))
    );
    let (status, retry_after, body) = complete(base, "cat", "1", "1").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let retry_after = retry_after.unwrap();
    assert!(
        (49..=52).contains(&retry_after),
        "Retry-After: {retry_after}"
    );
    tokens.clock.advance(Duration::from_secs(retry_after));
    assert_eq!(complete(base, "cat", "1", "1").await.0, StatusCode::OK);

    // Three at once reserving 400 each, each held 300 ms by its handler: two fit.
    let held = [
        ("x-user-id", "dan"),
        ("x-max-tokens", "400"),
        ("x-sleep-ms", "300"),
    ];
    let at_once: Vec<_> = (0..3)
        .map(|_| {
            let base = base.clone();
            tokio::spawn(async move { post(&base, "/completions", &held).await.0 })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in at_once {
        statuses.push(task.await.unwrap());
    }
    statuses.sort();
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
}

/// `/jobs` (5 a second, burst 1, a wait of 2 s): of 12 requests sent at once behind one that
/// took the burst, 10 wait and are served one every 200 ms as the (manual) clock moves; the
/// 2 that would wait longer than 2 s are refused at once with the real `Retry-After`.
pub async fn jobs_wait_for_their_tokens(framework: Framework) {
    let tokens = TokenServer::start().await;
    let app = framework.start(tokens.limiter(LimiterOptions::default()));
    let base = app.base_url.clone();
    let user = [("x-user-id", "eve")];
    let (status, _, body) = post(&base, "/jobs", &user).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"queued": true})));

    let (done, mut answers) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..12 {
        let (base, done) = (base.clone(), done.clone());
        tokio::spawn(async move {
            let _ = done.send(post(&base, "/jobs", &user).await);
        });
    }
    // Refused at once: the clock has not moved.
    for _ in 0..2 {
        let (status, retry_after, body) = answers.recv().await.unwrap();
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert!(retry_after.unwrap() >= 2, "{retry_after:?}");
    }
    // Then one every 200 ms of the clock.
    for served in 0..10 {
        tokens.clock.advance(Duration::from_millis(205));
        let (status, _, body) = tokio::time::timeout(Duration::from_secs(10), answers.recv())
            .await
            .unwrap_or_else(|_| panic!("waiter {served} was not served"))
            .unwrap();
        assert_eq!((status, body), (StatusCode::OK, json!({"queued": true})));
    }
    assert!(answers.try_recv().is_err(), "exactly 12 answers");
}

/// axum drops the future of a request whose client went away: a waiter that leaves takes
/// nothing, and the token it waited for is the next request's.
pub async fn a_waiter_whose_client_went_away_takes_nothing() {
    let tokens = TokenServer::start().await;
    let app = Framework::Axum.start(tokens.limiter(LimiterOptions::default()));
    let base = &app.base_url;
    let user = [("x-user-id", "fay")];
    assert_eq!(post(base, "/jobs", &user).await.0, StatusCode::OK);
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let gone = post_with(&impatient, base, "/jobs", &user).await;
    assert!(gone.unwrap_err().is_timeout());
    tokens.clock.advance(Duration::from_millis(205));
    // The server sees the connection close shortly after, and the waiter leave with it.
    let started = Instant::now();
    loop {
        let (status, _, body) = post(base, "/jobs", &user).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the token went to the gone: {body}"
        );
        tokio::task::yield_now().await;
    }
}

mod axum_app {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn completions_reserve_then_settle() {
        super::completions_reserve_then_settle(crate::support::Framework::Axum).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_wait_for_their_tokens() {
        super::jobs_wait_for_their_tokens(crate::support::Framework::Axum).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiter_whose_client_went_away_takes_nothing() {
        super::a_waiter_whose_client_went_away_takes_nothing().await;
    }
}

mod actix_app {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn completions_reserve_then_settle() {
        super::completions_reserve_then_settle(crate::support::Framework::Actix).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_wait_for_their_tokens() {
        super::jobs_wait_for_their_tokens(crate::support::Framework::Actix).await;
    }
}
