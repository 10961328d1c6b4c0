//! The example binaries themselves, as a new user runs them: `cargo run --example axum_app`
//! (and `actix_app`) with no configuration, on a free port.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use reqwest::StatusCode;

use crate::support::http;

/// An example binary, started with the embedded source; killed when dropped.
struct Example {
    child: Child,
    base_url: String,
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cargo test` builds the examples next to the test binaries: target/<profile>/examples.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: run the whole test command (`cargo test`), which builds the examples",
        path.display()
    );
    path
}

fn start(name: &str) -> Example {
    let mut command = Command::new(binary(name));
    command
        .env("PORT", "0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (key, _) in std::env::vars() {
        if key.starts_with("LIGHTRATE_") {
            command.env_remove(key);
        }
    }
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let base_url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{name} printed {line:?} instead of its address"))
        .to_owned();
    assert!(base_url.starts_with("http://127.0.0.1:"), "{base_url}");
    Example { child, base_url }
}

async fn drive(example: &Example) {
    let base = &example.base_url;
    let client = http();
    let text = |path: &'static str, user: Option<&'static str>| {
        let mut request = client.get(format!("{base}{path}"));
        if let Some(user) = user {
            request = request.header("x-user-id", user);
        }
        async move {
            let response = request.send().await.unwrap();
            (response.status(), response.text().await.unwrap())
        }
    };
    assert_eq!(text("/healthz", None).await, (StatusCode::OK, "ok".into()));
    assert_eq!(
        text("/hello", Some("ivan")).await,
        (StatusCode::OK, "hello ivan".into())
    );
    assert_eq!(
        text("/items/7", Some("ivan")).await,
        (StatusCode::OK, r#"{"id":"7"}"#.into())
    );
    let sent = client
        .post(format!("{base}/emails"))
        .header("x-user-id", "ivan")
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), StatusCode::OK);
    assert_eq!(sent.text().await.unwrap(), r#"{"sent":true}"#);
    // The demo rules: GET /hello has a burst of 20 (one was spent above).
    for _ in 0..19 {
        assert_eq!(text("/hello", Some("ivan")).await.0, StatusCode::OK);
    }
    let (status, body) = text("/hello", Some("ivan")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body.contains("\"rate_limited\""), "{body}");
}

#[tokio::test]
async fn the_axum_example_serves_the_demo_contract() {
    drive(&start("axum_app")).await;
}

#[tokio::test]
async fn the_actix_example_serves_the_demo_contract() {
    drive(&start("actix_app")).await;
}
