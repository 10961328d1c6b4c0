//! Several limits in one decision, over real sockets, for both demo apps against the real
//! token server: `/search` (per second AND per day), `/reports` (user AND organisation), the
//! `pro_` plan on `/hello`, `/export`'s in-flight cap; and two LightRate middlewares stacked
//! on one app (per user under per organisation), which must limit by both.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{http, Framework, LimiterOptions, TokenServer};

async fn get(
    base: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut request = http().get(format!("{base}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.text().await.unwrap();
    let json = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, headers, json)
}

/// The rules of the refusal's `violations`.
fn violations(body: &Value) -> Vec<String> {
    body["violations"]
        .as_array()
        .unwrap_or_else(|| panic!("no violations in {body}"))
        .iter()
        .map(|v| v["rule"].as_str().unwrap().to_owned())
        .collect()
}

/// `/search`: 2 a second (burst 5) AND 12 a day. The per-second limit's refusals take
/// nothing from the day: over seconds of ten requests each, exactly 12 are admitted; then the
/// day refuses, with its own (long) `Retry-After`.
pub async fn search_is_limited_per_second_and_per_day(framework: Framework) {
    let tokens = TokenServer::start().await;
    let app = framework.start(tokens.limiter(LimiterOptions::default()));
    let base = &app.base_url;
    let user = [("x-user-id", "sam")];
    let mut admitted = 0;
    for second in 0..6 {
        let mut this_second = 0;
        for _ in 0..10 {
            let (status, headers, body) = get(base, "/search", &user).await;
            match status {
                StatusCode::OK => {
                    assert_eq!(body, serde_json::json!({"results": []}));
                    this_second += 1;
                }
                StatusCode::TOO_MANY_REQUESTS => {
                    let secs: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
                    assert_eq!(body["retryAfter"], secs);
                    assert!(!violations(&body).is_empty());
                }
                other => panic!("{other}: {body}"),
            }
        }
        assert!(this_second <= 5, "second {second}: {this_second}");
        admitted += this_second;
        tokens.clock.advance(Duration::from_secs(3));
    }
    assert_eq!(admitted, 12, "the day's quota, no more and no less");
    let (status, headers, body) = get(base, "/search", &user).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(violations(&body), ["rule_search_per_day"]);
    let secs: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    // 12 a day: a token every two hours, less what passed.
    assert!(secs > 3600, "{secs}");
}

/// `/reports`: the user's path rule (burst 5) AND the organisation's (burst 8); without a
/// usable `x-org-id`, 400 and no token taken. A request the organisation refuses gives the
/// user's token back.
pub async fn reports_are_limited_per_user_and_per_organisation(framework: Framework) {
    let tokens = TokenServer::start().await;
    let app = framework.start(tokens.limiter(LimiterOptions::default()));
    let base = &app.base_url;
    for headers in [
        &[("x-user-id", "bob")][..],
        &[("x-user-id", "bob"), ("x-org-id", "")][..],
        &[("x-user-id", "bob"), ("x-org-id", &"x".repeat(300))][..],
    ] {
        let (status, _, body) = get(base, "/reports", headers).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{headers:?}: {body}");
        assert!(body["error"].is_string());
    }
    // Missing, the answer names it (not "a user identifier": the user's is there).
    let (_, _, body) = get(base, "/reports", &[("x-user-id", "bob")]).await;
    assert_eq!(body["error"], "missing_identifier", "{body}");
    assert_eq!(body["message"], "this endpoint needs the x-org-id header");
    let bob = [("x-user-id", "bob"), ("x-org-id", "acme")];
    for _ in 0..5 {
        let (status, _, body) = get(base, "/reports", &bob).await;
        assert_eq!(
            (status, &body),
            (StatusCode::OK, &serde_json::json!({"org": "acme"}))
        );
    }
    let (status, _, body) = get(base, "/reports", &bob).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(violations(&body), ["rule_reports"]);
    // The organisation has 3 of 8 left: another user of it gets 3, then the organisation
    // refuses; the user's tokens of the refused requests go back...
    let eve = [("x-user-id", "eve"), ("x-org-id", "acme")];
    for _ in 0..3 {
        assert_eq!(get(base, "/reports", &eve).await.0, StatusCode::OK);
    }
    for _ in 0..3 {
        let (status, _, body) = get(base, "/reports", &eve).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(violations(&body), ["rule_org_reports"]);
    }
    // ...so that she has 2 of her 5 left for another organisation.
    let eve_elsewhere = [("x-user-id", "eve"), ("x-org-id", "initech")];
    for _ in 0..2 {
        assert_eq!(
            get(base, "/reports", &eve_elsewhere).await.0,
            StatusCode::OK
        );
    }
    assert_eq!(
        get(base, "/reports", &eve_elsewhere).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// `/hello` by a `pro_` user is limited by `hello_pro` (burst 50), not the path rule (20).
pub async fn pro_users_get_their_plan(framework: Framework) {
    let tokens = TokenServer::start().await;
    let app = framework.start(tokens.limiter(LimiterOptions::default()));
    let base = &app.base_url;
    let count = |user: &'static str| async move {
        let mut admitted = 0;
        for _ in 0..60 {
            let (status, _, body) = get(base, "/hello", &[("x-user-id", user)]).await;
            match status {
                StatusCode::OK => admitted += 1,
                StatusCode::TOO_MANY_REQUESTS => {
                    assert_eq!(violations(&body).len(), 1);
                }
                other => panic!("{other}"),
            }
        }
        admitted
    };
    assert_eq!(count("pro_pat").await, 50);
    assert_eq!(count("pat").await, 20);
}

/// `/export`: at most 2 requests of a user in flight. Of three sent at once, one gets 429
/// with `Retry-After: 1` at once; another user is not affected; a slot is free again once its
/// response was sent.
pub async fn exports_are_capped_in_flight(framework: Framework) {
    let tokens = TokenServer::start().await;
    let app = framework.start(tokens.limiter(LimiterOptions::default()));
    let base = app.base_url.clone();
    let started = std::time::Instant::now();
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let base = base.clone();
            tokio::spawn(async move {
                let answer = get(&base, "/export?ms=1500", &[("x-user-id", "xena")]).await;
                (answer, started.elapsed())
            })
        })
        .collect();
    let (status, _, body) = get(&base, "/export", &[("x-user-id", "yuri")]).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, serde_json::json!({"exported": true}))
    );
    let mut answers = Vec::new();
    for task in slow {
        answers.push(task.await.unwrap());
    }
    answers.sort_by_key(|((status, ..), _)| *status);
    let statuses: Vec<_> = answers.iter().map(|((status, ..), _)| *status).collect();
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    let ((_, headers, body), refused_after) = &answers[2];
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(violations(body), ["in_flight_export"]);
    // Refused at once, not after waiting for a slot.
    assert!(
        *refused_after < Duration::from_millis(1500),
        "{refused_after:?}"
    );
    for _ in 0..3 {
        assert_eq!(
            get(&base, "/export", &[("x-user-id", "xena")]).await.0,
            StatusCode::OK
        );
    }
}

/// axum drops a request's future when its client goes away: the slot is free at once.
pub async fn an_export_whose_client_went_away_frees_its_slot() {
    let tokens = TokenServer::start().await;
    let app = Framework::Axum.start(tokens.limiter(LimiterOptions::default()));
    let base = app.base_url.clone();
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    for _ in 0..2 {
        let gone = impatient
            .get(format!("{base}/export?ms=10000"))
            .header("x-user-id", "zoe")
            .send()
            .await;
        assert!(gone.unwrap_err().is_timeout());
    }
    // The server sees the connections close shortly after; the slots are freed with them.
    let mut admitted = false;
    for _ in 0..400 {
        if get(&base, "/export", &[("x-user-id", "zoe")]).await.0 == StatusCode::OK {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        admitted,
        "the slots of clients that went away were never freed"
    );
}

macro_rules! for_both_apps {
    ($($case:ident),* $(,)?) => {
        mod axum_app {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(crate::support::Framework::Axum).await;
                }
            )*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn an_export_whose_client_went_away_frees_its_slot() {
                super::an_export_whose_client_went_away_frees_its_slot().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_user_layer_under_an_organisation_layer_limits_by_both() {
                super::stacked::axum().await;
            }
        }
        mod actix_app {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(crate::support::Framework::Actix).await;
                }
            )*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_user_middleware_under_an_organisation_middleware_limits_by_both() {
                super::stacked::actix().await;
            }
        }
    };
}

for_both_apps!(
    search_is_limited_per_second_and_per_day,
    reports_are_limited_per_user_and_per_organisation,
    pro_users_get_their_plan,
    exports_are_capped_in_flight,
);

/// The stacking case: a per-user middleware (`x-user-id`) under a per-organisation one
/// (`x-org-id`), each on its own limiter with the demo rules. One user sends 25 requests to
/// `/hello` (burst 20), each from another organisation: 20 are admitted, not 25, and the
/// organisations of the 5 refused keep their tokens.
mod stacked {
    use super::*;
    use crate::support::TokenServer;

    const USER: &str = "x-user-id";
    const ORG: &str = "x-org-id";

    async fn send_25(base: &str) -> usize {
        let mut admitted = 0;
        for org in 0..25 {
            let org = format!("org{org}");
            let (status, _, body) = get(base, "/hello", &[(USER, "uma"), (ORG, &org)]).await;
            match status {
                StatusCode::OK => admitted += 1,
                StatusCode::TOO_MANY_REQUESTS => {
                    assert_eq!(violations(&body), ["rule_hello"]);
                }
                other => panic!("{other}: {body}"),
            }
        }
        admitted
    }

    /// An organisation whose request was refused by the user's limit still has its whole
    /// burst (`/hello`, 20): checked on its own limiter.
    async fn organisation_kept_its_tokens(orgs: &lightrate::Limiter) {
        let mut left = 0;
        for _ in 0..30 {
            let target = lightrate::Target::path(http::Method::GET, "/hello");
            if orgs.check("org24", &target).await.unwrap().is_allowed() {
                left += 1;
            }
        }
        // The first refused request may keep what the outer middleware took (it learns
        // then that another is stacked under it); the last one gives it back.
        assert_eq!(left, 20, "org24's token was kept by a refused request");
    }

    pub async fn axum() {
        use axum::routing::get as route_get;
        use lightrate::tower::{Identify, LightRateLayer};
        let (users, orgs) = (TokenServer::start().await, TokenServer::start().await);
        let user_limiter = users.limiter(LimiterOptions::default());
        let org_limiter = orgs.limiter(LimiterOptions::default());
        let router = axum::Router::new()
            .route("/hello", route_get(|| async { "hi" }))
            .layer(
                LightRateLayer::new(user_limiter)
                    .identify(Identify::header(http::HeaderName::from_static(USER))),
            )
            .layer(
                LightRateLayer::new(org_limiter.clone())
                    .identify(Identify::header(http::HeaderName::from_static(ORG))),
            );
        let app = crate::axum::serve_router(router);
        assert_eq!(send_25(&app.base_url).await, 20);
        organisation_kept_its_tokens(&org_limiter).await;
    }

    pub async fn actix() {
        use actix_web::{web, App, HttpServer};
        use lightrate::actix::{Identify, LightRate};
        let (users, orgs) = (TokenServer::start().await, TokenServer::start().await);
        let user_limiter = users.limiter(LimiterOptions::default());
        let org_limiter = orgs.limiter(LimiterOptions::default());
        let org_for_app = org_limiter.clone();
        let app = crate::actix::serve(move |listener| {
            Ok(HttpServer::new(move || {
                App::new()
                    .route("/hello", web::get().to(|| async { "hi" }))
                    .wrap(
                        LightRate::new(user_limiter.clone()).identify(Identify::header(
                            actix_web::http::header::HeaderName::from_static(USER),
                        )),
                    )
                    .wrap(
                        LightRate::new(org_for_app.clone()).identify(Identify::header(
                            actix_web::http::header::HeaderName::from_static(ORG),
                        )),
                    )
            })
            .workers(1)
            .listen(listener)?
            .run())
        });
        assert_eq!(send_25(&app.base_url).await, 20);
        organisation_kept_its_tokens(&org_limiter).await;
    }
}
