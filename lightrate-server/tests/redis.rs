//! `lightrate-server --redis` / `--redis-cluster`, the binary itself, against real Redis
//! servers started by the tests: replicas share buckets over HTTP, a dead Redis is a prompt 503
//! (consume and `/health`), and a Redis that is back is served with no restart.
#![allow(clippy::unwrap_used, missing_docs)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lightrate_redis::test_util::{RedisCluster, RedisServer};
use lightrate_testing::Listening;
use reqwest::StatusCode;
use serde_json::{json, Value};

const API_KEY: &str = "sk_test_redis_0123456789";
const APP_ID: &str = "app_redis";

/// `send_email`: burst 10 and 1 token per 1000 s, so nothing refills during a test.
const RULES: &str = "\
[default]
refill_rate = 1
burst_rate = 5

[[rules]]
id = 'rule_send_email'
name = 'Send Email'
matcher = '^send_email$'
refill_rate = 0.001
burst_rate = 10
";

/// A `lightrate-server` process; killed when dropped (before its directory is removed).
struct Replica {
    process: Listening,
    base_url: String,
    rules: std::path::PathBuf,
    _dir: ScratchDir,
}

struct ScratchDir(std::path::PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts the server binary with `store_args` (`--redis URL`, say) on a free port.
fn replica(store_args: &[&str]) -> Replica {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "lightrate-server-redis-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = dir.join("rules.toml");
    std::fs::write(&rules, RULES).unwrap();
    let process = Listening::spawn(
        Command::new(env!("CARGO_BIN_EXE_lightrate-server"))
            .args(["--listen", "127.0.0.1:0", "--config"])
            .arg(&rules)
            .args(store_args)
            .env("LIGHTRATE_API_KEY", API_KEY)
            .env("LIGHTRATE_APPLICATION_ID", APP_ID)
            .env_remove("LIGHTRATE_REDIS_URL")
            .env_remove("LIGHTRATE_REDIS_CLUSTER_URLS")
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stderr(Stdio::null()),
    );
    Replica {
        base_url: process.base_url().to_owned(),
        process,
        rules,
        _dir: ScratchDir(dir),
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// POSTs a consume of one `send_email` token for `user`: (status, body, Retry-After).
async fn consume(replica: &Replica, user: &str) -> (StatusCode, Value, Option<String>) {
    let response = http()
        .post(format!("{}/api/v1/tokens/consume", replica.base_url))
        .bearer_auth(API_KEY)
        .json(&json!({"applicationId": APP_ID, "userIdentifier": user,
                      "tokensRequested": 1, "operation": "send_email"}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, response.json().await.unwrap(), retry_after)
}

async fn health(replica: &Replica) -> (StatusCode, Value) {
    let response = http()
        .get(format!("{}/health", replica.base_url))
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

/// 12 consumes alternating between `a` and `b`: exactly the burst (10) granted, with
/// `tokensRemaining` counting down across both replicas.
async fn alternate(a: &Replica, b: &Replica, user: &str) {
    for i in 0..12u64 {
        let replica = if i % 2 == 0 { a } else { b };
        let (status, body, _) = consume(replica, user).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let expected = if i < 10 { (1, 9 - i) } else { (0, 0) };
        assert_eq!(
            (
                body["tokensConsumed"].as_u64().unwrap(),
                body["tokensRemaining"].as_u64().unwrap()
            ),
            expected,
            "call {i}: {body}"
        );
        assert_eq!(body["rule"]["id"], "rule_send_email");
    }
}

#[tokio::test]
async fn two_replicas_on_one_redis_share_every_bucket() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let (a, b) = (replica(&["--redis", &url]), replica(&["--redis", &url]));
    alternate(&a, &b, "alice").await;
    alternate(&b, &a, "bob {1}: ü").await;
    assert_eq!(health(&a).await.0, StatusCode::OK);
}

#[tokio::test]
async fn two_replicas_on_a_redis_cluster_share_every_bucket() {
    let Some(cluster) = RedisCluster::start(3) else {
        return;
    };
    let urls = cluster.urls().join(",");
    let (a, b) = (
        replica(&["--redis-cluster", &urls]),
        replica(&["--redis-cluster", &urls]),
    );
    for user in ["alice", "bob", "carol"] {
        alternate(&a, &b, user).await;
    }
    assert_eq!(health(&b).await, (StatusCode::OK, json!({"status": "ok"})));
}

/// The server's Redis timeout (500 ms) plus what a loaded two-core machine may add.
const PROMPTLY: Duration = Duration::from_millis(1_500);

#[tokio::test]
async fn a_dead_redis_is_a_prompt_503_and_a_restarted_one_is_served_with_no_restart() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let server = replica(&["--redis", &redis.url()]);
    assert_eq!(consume(&server, "u").await.0, StatusCode::OK);
    assert_eq!(health(&server).await.0, StatusCode::OK);

    redis.kill();
    for _ in 0..3 {
        let start = Instant::now();
        let (status, body, retry_after) = consume(&server, "u").await;
        assert!(start.elapsed() < PROMPTLY, "{:?}", start.elapsed());
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"], "Service Unavailable", "{body}");
        assert!(
            body["message"].as_str().unwrap().contains("Redis"),
            "{body}"
        );
        assert_eq!(retry_after.as_deref(), Some("1"));
        assert!(
            body.get("tokensConsumed").is_none(),
            "never a grant: {body}"
        );
    }
    let start = Instant::now();
    let (status, body) = health(&server).await;
    assert!(start.elapsed() < PROMPTLY);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], "unavailable");

    redis.restart();
    let start = Instant::now();
    loop {
        if consume(&server, "u").await.0 == StatusCode::OK {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "not served again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(health(&server).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_server_started_while_redis_is_down_serves_once_it_is_up() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    redis.kill();
    let server = replica(&["--redis", &redis.url()]);
    assert_eq!(
        consume(&server, "u").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(health(&server).await.0, StatusCode::SERVICE_UNAVAILABLE);
    redis.restart();
    let start = Instant::now();
    while health(&server).await.0 != StatusCode::OK {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "not healthy again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(consume(&server, "u").await.0, StatusCode::OK);
}

#[tokio::test]
async fn sighup_on_redis_applies_new_limits_and_keeps_the_buckets_in_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let server = replica(&["--redis", &redis.url()]);
    for _ in 0..3 {
        assert_eq!(consume(&server, "alice").await.0, StatusCode::OK);
    }
    std::fs::write(
        &server.rules,
        RULES.replace("burst_rate = 10", "burst_rate = 20"),
    )
    .unwrap();
    let kill = std::process::Command::new("kill")
        .args(["-HUP", &server.process.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    // A new user shows when the reload is done (alice's bucket must not be touched).
    let start = Instant::now();
    loop {
        let (_, body, _) = consume(&server, "probe").await;
        if body["rule"]["burstRate"] == 20 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not reloaded: {body}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, body, _) = consume(&server, "alice").await;
    // alice keeps what she used (3): the new room is hers at once, 17 of 20, less this one.
    assert_eq!(
        body["tokensRemaining"], 16,
        "alice keeps her bucket: {body}"
    );
    assert_eq!(body["rule"]["burstRate"], 20);
}
