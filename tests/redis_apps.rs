//! The demo apps on Redis: `LIGHTRATE_REDIS_URL` and no API key make both example binaries
//! keep their buckets in Redis, say so on stderr, and two instances share one bucket per user.
#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

use lightrate_redis::test_util::RedisServer;
use lightrate_testing::{demo_app, Listening};
use reqwest::StatusCode;

/// An example binary on Redis; killed when dropped.
type App = Listening;

/// Kills the app and returns what it wrote on stderr.
fn stop(mut app: App) -> String {
    let child = app.child();
    let _ = child.kill();
    let _ = child.wait();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    stderr
}

fn start(name: &str, redis_url: &str) -> App {
    let mut command = demo_app(name);
    command
        .env("LIGHTRATE_REDIS_URL", redis_url)
        .stderr(Stdio::piped());
    Listening::spawn(&mut command)
}

/// Alternates `GET /hello` for one user between two instances: together they admit what one
/// bucket holds (burst 20, 1/s; the test takes well under 2 s), not 20 each.
async fn share_one_bucket(a: &App, b: &App, user: &str) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut allowed = 0;
    let start = std::time::Instant::now();
    for i in 0..40 {
        let app = if i % 2 == 0 { a } else { b };
        let response = client
            .get(format!("{}/hello", app.base_url()))
            .header("x-user-id", user)
            .send()
            .await
            .unwrap();
        match response.status() {
            StatusCode::OK => allowed += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("{other}: {}", response.text().await.unwrap()),
        }
    }
    println!("{user}: {allowed} of 40 allowed in {:?}", start.elapsed());
    // One bucket: at most its burst plus what refilled meanwhile; far below 2 × 20.
    let refilled = start.elapsed().as_secs() + 1;
    assert!(
        allowed <= 20 + refilled && allowed >= 10,
        "{allowed} allowed in {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn two_demo_apps_on_one_redis_share_one_bucket_per_user() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let (axum, actix) = (start("axum_app", &url), start("actix_app", &url));
    share_one_bucket(&axum, &actix, "ivan").await;
    let second_axum = start("axum_app", &url);
    share_one_bucket(&axum, &second_axum, "olga").await;
    let expected = format!("Redis at 127.0.0.1:{}", redis.port());
    for app in [axum, actix, second_axum] {
        let stderr = stop(app);
        assert!(stderr.contains(&expected), "{stderr}");
    }
}

/// `/export`'s in-flight cap (2 per user) is shared by every app on one Redis: of four slow
/// requests of one user sent at once, two to each app, exactly two are admitted.
#[tokio::test]
async fn two_demo_apps_on_one_redis_share_the_in_flight_cap() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let (axum, actix) = (start("axum_app", &url), start("actix_app", &url));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let requests: Vec<_> = [&axum, &actix, &axum, &actix]
        .iter()
        .map(|app| {
            let (client, url) = (client.clone(), format!("{}/export?ms=2000", app.base_url()));
            tokio::spawn(async move {
                let response = client
                    .get(url)
                    .header("x-user-id", "pia")
                    .send()
                    .await
                    .unwrap();
                (response.status(), started.elapsed())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for request in requests {
        answers.push(request.await.unwrap());
    }
    let admitted = answers.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    let refused: Vec<_> = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!((admitted, refused.len()), (2, 2), "{answers:?}");
    // Refused at once, not after the others finished.
    assert!(
        refused.iter().all(|(_, at)| *at < Duration::from_secs(2)),
        "{answers:?}"
    );
    // Both apps' slots are free again, once their releases (sent to Redis in the background
    // when a response is done) have landed.
    for app in [&axum, &actix] {
        let mut freed = false;
        for _ in 0..500 {
            let response = client
                .get(format!("{}/export", app.base_url()))
                .header("x-user-id", "pia")
                .send()
                .await
                .unwrap();
            if response.status() == StatusCode::OK {
                freed = true;
                break;
            }
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(freed, "the slots were never released");
    }
    stop(axum);
    stop(actix);
}
