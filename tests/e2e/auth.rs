//! `examples/axum_auth.rs`: the user comes from what an authentication layer established.

use reqwest::StatusCode;

use crate::support::{http, LimiterOptions, TokenServer};

#[path = "../../examples/axum_auth.rs"]
#[allow(dead_code)]
mod axum_auth;

#[tokio::test]
async fn users_are_limited_by_their_authenticated_subject() {
    let tokens = TokenServer::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = axum_auth::app(tokens.limiter(LimiterOptions::default()));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let me = |token: &'static str| {
        http()
            .get(format!("{base}/me"))
            .header("authorization", format!("Bearer {token}"))
            .send()
    };
    let response = me("token-of-alice").await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "you are alice");
    // /me falls to the default rule: a burst of 5 per user.
    for _ in 0..4 {
        assert_eq!(me("token-of-alice").await.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(
        me("token-of-alice").await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(me("token-of-bob").await.unwrap().status(), StatusCode::OK);
    // Unauthenticated requests never reach the limiter.
    let anonymous = http().get(format!("{base}/me")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let users: Vec<_> = tokens
        .faults
        .recorded()
        .iter()
        .map(|r| r.json()["userIdentifier"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        users.iter().all(|u| u == "alice" || u == "bob"),
        "{users:?}"
    );
    server.abort();
}
