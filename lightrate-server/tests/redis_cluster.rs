//! `lightrate-server --redis-cluster`, the binary itself, over real HTTP, on a 6-node Redis
//! Cluster (3 primaries, 3 replicas) started by the test, one primary killed under load: keys on
//! the other primaries are all 200 through the failover; the dead primary's keys are a prompt
//! 503 with `Retry-After`, never a hang and never a grant, and 200 again as soon as its replica
//! is promoted; what was spent stays spent. Every wait is a poll with a deadline.
#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lightrate_redis::test_util::RedisCluster;
use lightrate_testing::Listening;
use reqwest::StatusCode;
use serde_json::{json, Value};

const API_KEY: &str = "sk_test_redis_0123456789";
const APP_ID: &str = "app_cluster";

/// `send_email`: burst 10 and 1 token per 1000 s, so nothing refills during the test.
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

/// The server's Redis timeout (500 ms) plus what a loaded two-core machine may add.
const PROMPTLY: Duration = Duration::from_millis(1_500);
/// How long a failover may take here.
const FAILOVER: Duration = Duration::from_secs(15);
/// How soon after the promotion the dead primary's keys must be 200 again.
const SERVED_AGAIN: Duration = Duration::from_secs(1);

struct ScratchDir(std::path::PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The server binary on the cluster, on a free port.
fn server(urls: &str) -> (Listening, ScratchDir) {
    let dir = std::env::temp_dir().join(format!("lightrate-server-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = dir.join("rules.toml");
    std::fs::write(&rules, RULES).unwrap();
    let process = Listening::spawn(
        Command::new(env!("CARGO_BIN_EXE_lightrate-server"))
            .args(["--listen", "127.0.0.1:0", "--config"])
            .arg(&rules)
            .args(["--redis-cluster", urls])
            .env("LIGHTRATE_API_KEY", API_KEY)
            .env("LIGHTRATE_APPLICATION_ID", APP_ID)
            .env_remove("LIGHTRATE_REDIS_URL")
            .env_remove("LIGHTRATE_REDIS_CLUSTER_URLS")
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stderr(Stdio::null()),
    );
    (process, ScratchDir(dir))
}

/// POSTs a consume of `n` `send_email` tokens for `user`: (status, body, Retry-After).
async fn consume(
    http: &reqwest::Client,
    base: &str,
    user: &str,
    n: u64,
) -> (StatusCode, Value, Option<String>) {
    let response = http
        .post(format!("{base}/api/v1/tokens/consume"))
        .bearer_auth(API_KEY)
        .json(&json!({"applicationId": APP_ID, "userIdentifier": user,
                      "tokensRequested": n, "operation": "send_email"}))
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

/// One client (its own connection) consuming for each of `users` in turn until `stop`: every
/// answer's start, latency, status and body.
type Seen = Vec<(Duration, Duration, StatusCode, Value, Option<String>)>;

/// How far the clients have got: calls made, and calls answered 200 after a refusal.
#[derive(Default)]
struct Progress {
    calls: AtomicU64,
    recovered: AtomicU64,
}

fn client(
    base: String,
    users: Vec<String>,
    start: Instant,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
) -> tokio::task::JoinHandle<Seen> {
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let (mut seen, mut failed) = (Vec::new(), false);
        for user in users.iter().cycle() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let at = start.elapsed();
            let (status, body, retry_after) = consume(&http, &base, user, 1).await;
            progress.calls.fetch_add(1, Ordering::Relaxed);
            if status == StatusCode::OK && failed {
                progress.recovered.fetch_add(1, Ordering::Relaxed);
            }
            if status != StatusCode::OK {
                failed = true;
                // As a client honouring Retry-After briefly would: not a busy loop.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen.push((at, start.elapsed() - at, status, body, retry_after));
        }
        seen
    })
}

async fn until(limit: Duration, what: &str, condition: impl Fn() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_503_for_its_own_keys_only_and_200_again_once_its_replica_is_promoted()
{
    let Some(cluster) = RedisCluster::start_with_replicas(3, 1) else {
        return;
    };
    let (process, _dir) = server(&cluster.urls().join(","));
    let base = process.base_url().to_owned();
    let http = reqwest::Client::new();

    // 60 users; which primary each one's bucket lives on.
    let victim = cluster.primary_of(0, 0).unwrap();
    let (mut sick, mut healthy) = (Vec::new(), Vec::new());
    for i in 0..60 {
        let user = format!("user-{i}");
        let slot = cluster.key_slot(&format!("lightrate:{APP_ID}:rule_send_email:{user}"));
        if cluster.primary_of(slot, 0) == Some(victim) {
            sick.push((user, slot));
        } else {
            healthy.push(user);
        }
    }
    assert!(sick.len() > 2 && healthy.len() > 10, "{sick:?}");
    // One of the victim's users spends the whole burst (9 of it now, 1 by the load below).
    let (spent, _) = sick.remove(0);
    let (status, body, _) = consume(&http, &base, &spent, 9).await;
    assert_eq!(
        (status, body["tokensConsumed"].as_u64()),
        (StatusCode::OK, Some(9))
    );
    let (status, body, _) = consume(&http, &base, &spent, 1).await;
    assert_eq!(body["tokensRemaining"], 0, "{status} {body}");

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let (healthy_progress, sick_progress) =
        (Arc::<Progress>::default(), Arc::<Progress>::default());
    // Three clients for the healthy users, one for the victim's.
    let mut clients: Vec<_> = (0..3)
        .map(|part| {
            let users = healthy.iter().skip(part).step_by(3).cloned().collect();
            client(
                base.clone(),
                users,
                start,
                stop.clone(),
                healthy_progress.clone(),
            )
        })
        .collect();
    let sick_users = sick.iter().map(|(u, _)| u.clone()).collect();
    clients.push(client(
        base.clone(),
        sick_users,
        start,
        stop.clone(),
        sick_progress.clone(),
    ));
    // Traffic before the fault: every user served at least once.
    until(FAILOVER, "the first rounds", || {
        healthy_progress.calls.load(Ordering::Relaxed) >= 60
            && sick_progress.calls.load(Ordering::Relaxed) >= 20
    })
    .await;
    // What the spent user spent has reached the victim's replica.
    assert!(
        cluster.wait_replicated(victim, Duration::from_secs(10)),
        "the replica did not catch up"
    );
    let cluster = Arc::new(Mutex::new(cluster));
    let killed = start.elapsed();
    cluster.lock().unwrap().kill(victim);
    let slot = sick[0].1;
    let promoted_at = {
        let cluster = cluster.clone();
        tokio::task::spawn_blocking(move || {
            let cluster = cluster.lock().unwrap();
            let running: Vec<usize> = (0..cluster.nodes().len())
                .filter(|&i| cluster.nodes()[i].is_running())
                .collect();
            let done = cluster.wait_until(FAILOVER, |c| {
                running.iter().all(|&asked| {
                    c.primary_of(slot, asked)
                        .is_some_and(|p| running.contains(&p))
                })
            });
            assert!(done, "no replica promoted within {FAILOVER:?}");
            start.elapsed()
        })
        .await
        .unwrap()
    };
    until(FAILOVER, "the victim's keys served again", || {
        sick_progress.recovered.load(Ordering::Relaxed) > 0
    })
    .await;
    stop.store(true, Ordering::Relaxed);

    let sick_seen = clients.pop().unwrap().await.unwrap();
    let mut healthy_requests = 0;
    for task in clients {
        for (at, took, status, body, _) in task.await.unwrap() {
            healthy_requests += 1;
            assert_eq!(status, StatusCode::OK, "a healthy key at {at:?}: {body}");
            assert!(took < PROMPTLY, "a healthy key took {took:?}");
        }
    }
    let mut refused = 0;
    let mut last_refusal = killed;
    for (at, took, status, body, retry_after) in &sick_seen {
        assert!(*took < PROMPTLY, "a call took {took:?}");
        if *status != StatusCode::OK {
            refused += 1;
            last_refusal = last_refusal.max(*at + *took);
            assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            assert_eq!(retry_after.as_deref(), Some("1"));
            assert!(
                body.get("tokensConsumed").is_none(),
                "never a grant: {body}"
            );
        }
    }
    let served_again = sick_seen
        .iter()
        .find(|(at, _, status, _, _)| *status == StatusCode::OK && *at >= last_refusal)
        .map(|(at, took, ..)| *at + *took)
        .unwrap();
    println!(
        "killed at {killed:?}, promoted at {promoted_at:?}, served again at {served_again:?}; \
         {healthy_requests} healthy requests all 200; {refused} of {} on the victim 503",
        sick_seen.len()
    );
    assert!(refused > 0, "the kill was not felt");
    assert!(healthy_requests > 50, "{healthy_requests}");
    assert!(
        served_again <= promoted_at + SERVED_AGAIN,
        "200 again {:?} after the promotion",
        served_again.saturating_sub(promoted_at)
    );
    // The spent bucket is still spent on the promoted replica.
    let (status, body, _) = consume(&http, &base, &spent, 1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tokensConsumed"], 0, "{body}");
}
