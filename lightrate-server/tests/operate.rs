//! Operating the binary: `check`, SIGHUP reloads, SIGTERM drains, JSON logs without secrets.
//! Each test runs `lightrate-server` itself and talks to it over HTTP.
#![allow(clippy::unwrap_used, missing_docs)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lightrate_testing::Listening;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const API_KEY: &str = "sk_test_operate_0123456789";
const APP_ID: &str = "app_operate";
const BIN: &str = env!("CARGO_BIN_EXE_lightrate-server");

/// What a test waits for at most, polling; never a fixed sleep.
const PATIENCE: Duration = Duration::from_secs(10);

/// `send_email` with this burst, refilling one token per 1000 s (nothing refills in a test).
fn rules(burst: u64) -> String {
    format!(
        "[default]\nrefill_rate = 1\nburst_rate = 5\n\n[[rules]]\nid = 'rule_send_email'\n\
         name = 'Send Email'\nmatcher = '^send_email$'\nrefill_rate = 0.001\nburst_rate = {burst}\n"
    )
}

struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lightrate-server-operate-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        ScratchDir(dir)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `lightrate-server`, its log lines (stderr) arriving on a channel; killed when
/// dropped.
struct Server {
    process: Listening,
    base_url: String,
    logs: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Server {
    fn start(config: &Path, extra: &[&str]) -> Server {
        Server::spawn(Command::new(BIN), config, extra, API_KEY)
    }

    fn start_with_key(config: &Path, key: &str) -> Server {
        Server::spawn(Command::new(BIN), config, &[], key)
    }

    /// Under a limit of `files` open descriptors (`ulimit -n`).
    fn start_limited(files: u32, config: &Path, extra: &[&str]) -> Server {
        let mut shell = Command::new("sh");
        shell
            .arg("-c")
            .arg(format!("ulimit -n {files} && exec \"$0\" \"$@\""))
            .arg(BIN);
        Server::spawn(shell, config, extra, API_KEY)
    }

    fn spawn(mut command: Command, config: &Path, extra: &[&str], key: &str) -> Server {
        command
            .args(["--listen", "127.0.0.1:0", "--config"])
            .arg(config)
            .args(extra)
            .env("LIGHTRATE_API_KEY", key)
            .env("LIGHTRATE_APPLICATION_ID", APP_ID)
            .env_remove("LIGHTRATE_REDIS_URL")
            .env_remove("LIGHTRATE_REDIS_CLUSTER_URLS")
            .env_remove("LIGHTRATE_LOG_FORMAT")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        let mut process = Listening::spawn(&mut command);
        let (send, logs) = mpsc::channel();
        let stderr = process.child().stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Server {
            base_url: process.base_url().to_owned(),
            process,
            logs,
            seen: Vec::new(),
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.process.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for a log line containing `text`; returns it.
    fn log_line(&mut self, text: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(text)) {
            return line.clone();
        }
        let end = Instant::now() + PATIENCE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.logs.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => panic!("no log line with {text:?}; saw {:#?}", self.seen),
            }
        }
    }

    /// Waits for the process to exit.
    fn exit(&mut self) -> ExitStatus {
        let end = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.process.child().try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < end, "the server did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every log line, once the process has exited.
    fn all_logs(&mut self) -> Vec<String> {
        let mut lines = std::mem::take(&mut self.seen);
        while let Ok(line) = self.logs.recv_timeout(Duration::from_secs(2)) {
            lines.push(line);
        }
        lines
    }

    fn addr(&self) -> String {
        self.base_url.trim_start_matches("http://").to_owned()
    }
}

fn check(file: &Path) -> (bool, String, String) {
    let output = Command::new(BIN)
        .arg("check")
        .arg(file)
        .env_clear()
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_prints_the_rules_of_a_good_file_and_the_line_of_a_fault_in_a_bad_one() {
    let dir = ScratchDir::new();
    let good = dir.file("good.toml", &rules(10));
    let (ok, stdout, stderr) = check(&good);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("valid, 2 rules"), "{stdout}");
    assert!(
        stdout.contains("rule_send_email  operation ~ ^send_email$"),
        "{stdout}"
    );
    assert!(stdout.contains("burst 10"), "{stdout}");
    assert_eq!(stderr, "");

    let cases = [
        (
            rules(0),
            "line 5: rule \"Send Email\": burst_rate must be at least 1",
        ),
        (
            rules(10).replace("refill_rate = 0.001", "refill = \"3/fortnight\""),
            "line 9",
        ),
        (
            rules(10).replace("matcher", "matchr"),
            "unknown field `matchr`",
        ),
        (
            "[default]\nrefill_rate = 1\n".to_owned(),
            "missing field `burst_rate`",
        ),
    ];
    for (text, expected) in cases {
        let bad = dir.file("bad.toml", &text);
        let (ok, stdout, stderr) = check(&bad);
        assert!(!ok, "{text}");
        assert_eq!(stdout, "");
        assert!(stderr.contains(expected), "{text}\n=> {stderr}");
        assert!(stderr.contains("bad.toml"), "{stderr}");
    }
    let (ok, _, stderr) = check(&dir.0.join("missing.toml"));
    assert!(!ok);
    assert!(stderr.contains("cannot read rules file"), "{stderr}");
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// One `send_email` token for `user`: the answer's body.
async fn consume(server: &Server, user: &str) -> Value {
    let response = http()
        .post(format!("{}/api/v1/tokens/consume", server.base_url))
        .bearer_auth(API_KEY)
        .json(&json!({"applicationId": APP_ID, "userIdentifier": user,
                      "tokensRequested": 1, "operation": "send_email"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn left_and_burst(answer: &Value) -> (u64, u64) {
    (
        answer["tokensRemaining"].as_u64().unwrap(),
        answer["rule"]["burstRate"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn sighup_applies_a_good_file_keeping_buckets_and_refuses_a_bad_one() {
    let dir = ScratchDir::new();
    let config = dir.file("rules.toml", &rules(10));
    let mut server = Server::start(&config, &[]);
    for left in (7..10).rev() {
        assert_eq!(left_and_burst(&consume(&server, "alice").await), (left, 10));
    }
    // A keep-alive connection opened before the reload is still served after it.
    let mut kept = TcpStream::connect(server.addr()).await.unwrap();

    std::fs::write(&config, rules(20)).unwrap();
    server.signal("HUP");
    server.log_line("rules reloaded");
    // New limits apply; alice's bucket is kept, with what she used (3): the new room is hers
    // at once, 17 of 20 (not 7, and not a new bucket of 20).
    assert_eq!(left_and_burst(&consume(&server, "alice").await), (16, 20));
    assert_eq!(left_and_burst(&consume(&server, "bob").await), (19, 20));
    kept.write_all(b"GET /health HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = kept.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    std::fs::write(&config, rules(0)).unwrap();
    server.signal("HUP");
    let refused = server.log_line("rules reload refused");
    assert!(
        refused.contains("burst_rate must be at least 1"),
        "{refused}"
    );
    assert!(refused.contains("line 5"), "{refused}");
    assert_eq!(left_and_burst(&consume(&server, "alice").await), (15, 20));

    let metrics = http()
        .get(format!("{}/metrics", server.base_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("lightrate_server_rule_reloads_total{result=\"applied\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lightrate_server_rule_reloads_total{result=\"refused\"} 1\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn sigterm_lets_a_slow_request_in_flight_finish_then_exits_0() {
    let dir = ScratchDir::new();
    let config = dir.file("rules.toml", &rules(10));
    let mut server = Server::start(&config, &["--drain-timeout", "20s"]);
    let body = format!(
        r#"{{"applicationId":"{APP_ID}","userIdentifier":"carol","tokensRequested":1,"operation":"send_email"}}"#
    );
    let (first, rest) = body.split_at(20);
    // A slow client: the headers and part of the body before the signal, the rest after.
    let mut slow = TcpStream::connect(server.addr()).await.unwrap();
    // One answer first: the server has accepted this connection (not left it in the backlog).
    slow.write_all(b"GET /health HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = slow.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let head = format!(
        "POST /api/v1/tokens/consume HTTP/1.1\r\nhost: t\r\nx-api-key: {API_KEY}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{first}",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    server.signal("TERM");
    server.log_line("stopping");
    // No new connections once it stops accepting.
    let start = Instant::now();
    while TcpStream::connect(server.addr()).await.is_ok() {
        assert!(start.elapsed() < PATIENCE, "still accepting");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    slow.write_all(rest.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    slow.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.contains(r#""tokensConsumed":1"#), "{response}");
    let status = server.exit();
    assert_eq!(status.code(), Some(0));
    server.log_line("stopped");
}

#[test]
fn a_short_api_key_is_warned_about_by_its_length_alone() {
    let dir = ScratchDir::new();
    let config = dir.file("rules.toml", &rules(10));
    let key = "k3y-0f-11";
    let mut server = Server::start_with_key(&config, key);
    let line = server.log_line("shorter than 16 bytes");
    assert!(line.contains("key_bytes=9"), "{line}");
    server.signal("TERM");
    assert_eq!(server.exit().code(), Some(0));
    let logs = server.all_logs();
    assert!(logs.iter().all(|l| !l.contains(key)), "{logs:#?}");
    // A key of 16 bytes and more is not warned about.
    let mut long = Server::start(&config, &[]);
    long.signal("TERM");
    assert_eq!(long.exit().code(), Some(0));
    let logs = long.all_logs();
    assert!(
        logs.iter().all(|l| !l.contains("shorter than")),
        "{logs:#?}"
    );
    assert!(API_KEY.len() >= 16);
}

#[tokio::test]
async fn json_logs_are_one_object_a_line_and_hold_no_key_and_no_redis_password() {
    let dir = ScratchDir::new();
    let config = dir.file("rules.toml", &rules(10));
    let password = "pw_very_secret_42";
    // A Redis that is not there: its errors are logged.
    let redis = format!("redis://:{password}@127.0.0.1:9");
    let mut server = Server::start(&config, &["--log-format", "json", "--redis", &redis]);
    let url = format!("{}/api/v1/tokens/consume", server.base_url);
    let body = json!({"applicationId": APP_ID, "userIdentifier": "u", "tokensRequested": 1});
    let answer = http()
        .post(&url)
        .bearer_auth(API_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 503);
    let wrong = http()
        .post(&url)
        .bearer_auth(format!("{API_KEY}x"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    server.log_line("the token store cannot answer");
    server.signal("TERM");
    assert_eq!(server.exit().code(), Some(0));
    let logs = server.all_logs();
    assert!(logs.len() >= 4, "{logs:#?}");
    for line in &logs {
        let event: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            event["level"].is_string() && event["message"].is_string(),
            "{line}"
        );
        assert!(!line.contains(API_KEY), "{line}");
        assert!(!line.contains(password), "{line}");
    }
}

#[tokio::test]
async fn the_default_connection_cap_follows_the_descriptor_limit() {
    let dir = ScratchDir::new();
    let config = dir.file("rules.toml", &rules(10));
    // 64 descriptors: a cap of 32 connections, the rest kept for the process itself.
    let mut server = Server::start_limited(64, &config, &["--request-timeout", "30s"]);
    assert!(server.log_line("serving").contains("max_connections=32"));
    let mut held = Vec::new();
    for _ in 0..32 {
        let mut stream = TcpStream::connect(server.addr()).await.unwrap();
        stream
            .write_all(b"GET /health HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(stream);
    }
    // Past the cap: refused at once, never an accept error.
    for _ in 0..10 {
        let mut stream = TcpStream::connect(server.addr()).await.unwrap();
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        let response = String::from_utf8_lossy(&response);
        assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    }
    drop(held);
    server.signal("TERM");
    assert_eq!(server.exit().code(), Some(0));
    let logs = server.all_logs();
    assert!(
        !logs.iter().any(|l| l.contains("accept failed")),
        "{logs:#?}"
    );
}

#[tokio::test]
async fn out_of_descriptors_the_server_backs_off_quietly_and_serves_again_once_they_are_freed() {
    let dir = ScratchDir::new();
    let config = dir.file("rules.toml", &rules(10));
    // A cap above what 64 descriptors allow: accepts fail for want of descriptors.
    let mut server = Server::start_limited(
        64,
        &config,
        &["--max-connections", "1000", "--request-timeout", "60s"],
    );
    let mut idle = Vec::new();
    for _ in 0..80 {
        idle.push(TcpStream::connect(server.addr()).await.unwrap());
    }
    server.log_line("accept failed");
    // Freed: served again within the back-off (at most 200 ms), whatever the OS's backlog.
    drop(idle);
    let start = Instant::now();
    loop {
        let served = tokio::time::timeout(Duration::from_millis(500), async {
            let mut stream = TcpStream::connect(server.addr()).await.ok()?;
            stream
                .write_all(b"GET /health HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
                .await
                .ok()?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await.ok()?;
            Some(response.starts_with(b"HTTP/1.1 200"))
        })
        .await;
        if let Ok(Some(true)) = served {
            break;
        }
        assert!(start.elapsed() < PATIENCE, "not served again");
    }
    server.log_line("accepting again");
    server.signal("TERM");
    assert_eq!(server.exit().code(), Some(0));
    let failures = server
        .all_logs()
        .iter()
        .filter(|l| l.contains("accept failed"))
        .count();
    assert_eq!(failures, 1, "one line for the whole run of failures");
}

#[cfg(feature = "test-util")]
#[tokio::test]
async fn fault_delay_makes_every_answer_late() {
    let dir = ScratchDir::new();
    let config = dir.file("rules.toml", &rules(10));
    let server = Server::start(&config, &["--fault-delay-ms", "300"]);
    let start = Instant::now();
    assert_eq!(left_and_burst(&consume(&server, "dave").await), (9, 10));
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
}
