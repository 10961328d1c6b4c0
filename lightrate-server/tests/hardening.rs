//! The server against clients that stall, flood or send too much, over real sockets: nothing
//! unauthorised is read, every request has a deadline, connections are capped, and what held
//! before (400, 413, 431) still does.
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lightrate_core::{EmbeddedSource, RuleSet};
use lightrate_server::{LightRateServer, RunningServer, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "sk_test_hardening_0123456789";
const APP: &str = "app_1";

/// What "at once" allows on a loaded two-core machine; far below every deadline it is
/// compared with.
const AT_ONCE: Duration = Duration::from_millis(1_500);

async fn server(configure: impl FnOnce(ServerConfig) -> ServerConfig) -> RunningServer {
    let config = ServerConfig::new(KEY, APP, EmbeddedSource::new(RuleSet::demo())).unwrap();
    LightRateServer::new(configure(config))
        .bind("127.0.0.1:0")
        .await
        .unwrap()
}

/// Headers of a consume announcing a 64 KiB body, with `auth` as extra header lines.
fn consume_head(method: &str, path: &str, auth: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
         {auth}content-length: 65536\r\n\r\n"
    )
}

/// What the server sent until it closed the connection, and when it closed it (from
/// `since`); `None` if it was still open after `wait`.
async fn until_closed(
    stream: &mut TcpStream,
    since: Instant,
    wait: Duration,
) -> (String, Option<Duration>) {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let end = tokio::time::Instant::from_std(since + wait);
    loop {
        match tokio::time::timeout_at(end, stream.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&received).into(), None),
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (
                    String::from_utf8_lossy(&received).into(),
                    Some(since.elapsed()),
                )
            }
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// Connects, sends `head` and 60 KB of a 64 KB body, and sends no more.
async fn stall(addr: SocketAddr, head: &str) -> (TcpStream, Instant) {
    let since = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    // The body is what an attacker would send: most of it, never the end. Written in a task
    // of its own, so that a server that stops reading cannot block the test.
    let (read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&[b' '; 60_000]).await;
        write
    });
    let write = writer.await.unwrap();
    (read.reunite(write).unwrap(), since)
}

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

#[tokio::test]
async fn a_stalled_body_without_a_valid_key_is_answered_401_at_once_and_closed() {
    let server = server(|c| c.request_timeout(Duration::from_secs(60))).await;
    for auth in ["", "x-api-key: wrong\r\n", "authorization: Bearer nope\r\n"] {
        let head = consume_head("POST", "/api/v1/tokens/consume", auth);
        let (mut stream, since) = stall(server.local_addr(), &head).await;
        let (response, closed) = until_closed(&mut stream, since, AT_ONCE * 2).await;
        assert_eq!(
            status_line(&response),
            "HTTP/1.1 401 Unauthorized",
            "{auth:?}"
        );
        assert!(response.contains("connection: close"), "{response}");
        let closed = closed.unwrap_or_else(|| panic!("{auth:?}: still open"));
        assert!(closed < AT_ONCE, "{auth:?}: closed after {closed:?}");
    }
    assert_eq!(server.consume_calls(), 0);
}

#[tokio::test]
async fn a_stalled_body_on_an_unknown_route_or_method_is_answered_at_once_and_closed() {
    let server = server(|c| c.request_timeout(Duration::from_secs(60))).await;
    let auth = format!("x-api-key: {KEY}\r\n");
    for (method, path, status) in [
        ("POST", "/api/v1/nothing", "HTTP/1.1 404 Not Found"),
        (
            "PUT",
            "/api/v1/tokens/consume",
            "HTTP/1.1 405 Method Not Allowed",
        ),
    ] {
        let (mut stream, since) =
            stall(server.local_addr(), &consume_head(method, path, &auth)).await;
        let (response, closed) = until_closed(&mut stream, since, AT_ONCE * 2).await;
        assert_eq!(status_line(&response), status);
        assert!(
            closed.is_some_and(|c| c < AT_ONCE),
            "{method} {path}: {closed:?}"
        );
    }
}

#[tokio::test]
async fn a_declared_body_past_the_limit_is_answered_413_at_once_and_closed() {
    let server = server(|c| c.request_timeout(Duration::from_secs(60))).await;
    let head = format!(
        "POST /api/v1/tokens/consume HTTP/1.1\r\nhost: t\r\nx-api-key: {KEY}\r\n\
         content-length: 10000000\r\n\r\n"
    );
    let (mut stream, since) = stall(server.local_addr(), &head).await;
    let (response, closed) = until_closed(&mut stream, since, AT_ONCE * 2).await;
    assert_eq!(status_line(&response), "HTTP/1.1 413 Payload Too Large");
    assert!(closed.is_some_and(|c| c < AT_ONCE), "{closed:?}");
}

#[tokio::test]
async fn a_stalled_body_with_the_key_is_dropped_at_the_deadline() {
    let deadline = Duration::from_millis(400);
    let server = server(|c| c.request_timeout(deadline)).await;
    let head = consume_head(
        "POST",
        "/api/v1/tokens/consume",
        &format!("authorization: Bearer {KEY}\r\n"),
    );
    let (mut stream, since) = stall(server.local_addr(), &head).await;
    let (response, closed) = until_closed(&mut stream, since, deadline + AT_ONCE).await;
    let closed = closed.expect("closed at the deadline");
    assert!(
        closed >= deadline,
        "closed after {closed:?}, before the deadline"
    );
    assert_eq!(status_line(&response), "HTTP/1.1 408 Request Timeout");
    assert!(response.contains("within 400 ms"), "{response}");
}

#[tokio::test]
async fn stalled_headers_and_idle_connections_are_closed_at_the_deadline() {
    let deadline = Duration::from_millis(400);
    let server = server(|c| c.request_timeout(deadline)).await;
    // Half a request line, then nothing (slowloris).
    let since = Instant::now();
    let mut slow = TcpStream::connect(server.local_addr()).await.unwrap();
    slow.write_all(b"POST /api/v1/tokens/con").await.unwrap();
    // A keep-alive connection that asked once and then stays idle.
    let mut idle = TcpStream::connect(server.local_addr()).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let answered = Instant::now();

    let (_, closed) = until_closed(&mut slow, since, deadline + AT_ONCE).await;
    let closed = closed.expect("slowloris closed");
    assert!(closed >= deadline, "{closed:?}");
    let (rest, closed) = until_closed(&mut idle, answered, deadline + AT_ONCE).await;
    assert_eq!(rest, "");
    assert!(closed.expect("idle connection closed") >= deadline.mul_f64(0.9));
}

#[tokio::test]
async fn a_whole_request_within_the_deadline_is_served_on_a_kept_alive_connection() {
    let deadline = Duration::from_millis(600);
    let server = server(|c| c.request_timeout(deadline)).await;
    let connected = Instant::now();
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    let body = format!(r#"{{"applicationId":"{APP}","userIdentifier":"u","tokensRequested":1}}"#);
    let request = format!(
        "POST /api/v1/tokens/consume HTTP/1.1\r\nhost: t\r\nx-api-key: {KEY}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    // The deadline counts from each request's first byte: requests each whole at once, one
    // after the other on one connection, are all served until the connection is older than
    // a deadline and a quarter, and then once more (no wait for time to pass: the requests
    // are the wait).
    let mut served = 0;
    loop {
        let last = connected.elapsed() > deadline.mul_f64(1.25);
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(AT_ONCE, stream.read(&mut buf))
            .await
            .expect("an answer at once")
            .unwrap();
        let response = String::from_utf8_lossy(&buf[..n]);
        assert!(
            response.starts_with("HTTP/1.1 200 OK"),
            "request {served} after {:?}: {response}",
            connected.elapsed()
        );
        served += 1;
        if last {
            break;
        }
    }
    assert!(served >= 2, "{served}");
}

/// Opens a connection and gets one `/health` answer on it, so that the server holds it.
async fn held(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    stream
}

/// `GET /health` on a new connection: the status line, or what went wrong.
async fn health(addr: SocketAddr) -> String {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return "connect failed".into();
    };
    let since = Instant::now();
    if stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .await
        .is_err()
    {
        return "write failed".into();
    }
    let (response, _) = until_closed(&mut stream, since, AT_ONCE).await;
    status_line(&response).to_owned()
}

#[tokio::test]
async fn the_connection_cap_refuses_at_once_then_recovers() {
    let server = server(|c| {
        c.max_connections(3)
            .request_timeout(Duration::from_secs(60))
    })
    .await;
    let addr = server.local_addr();
    let mut open = vec![held(addr).await, held(addr).await, held(addr).await];

    let since = Instant::now();
    let mut refused = TcpStream::connect(addr).await.unwrap();
    let (response, closed) = until_closed(&mut refused, since, AT_ONCE * 2).await;
    assert_eq!(status_line(&response), "HTTP/1.1 503 Service Unavailable");
    assert!(response.contains("retry-after: 1"), "{response}");
    assert!(closed.is_some_and(|c| c < AT_ONCE), "{closed:?}");

    // One client leaves: a slot is free again as soon as the server has seen it.
    drop(open.pop());
    let start = Instant::now();
    loop {
        let status = health(addr).await;
        if status == "HTTP/1.1 200 OK" {
            break;
        }
        assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
        assert!(start.elapsed() < AT_ONCE, "no slot freed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The slot is taken again by the next connection: the cap still holds.
    let _third = held(addr).await;
    assert_eq!(health(addr).await, "HTTP/1.1 503 Service Unavailable");
}

#[tokio::test]
async fn what_held_before_still_holds() {
    let server = server(|c| c).await;
    let client = reqwest::Client::new();
    let url = format!("{}/api/v1/tokens/consume", server.base_url());

    // Malformed bodies: 400 with a JSON message.
    for body in ["{", "[1]", r#"{"applicationId":"app_1"}"#] {
        let response = client
            .post(&url)
            .bearer_auth(KEY)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let json: serde_json::Value = response.json().await.unwrap();
        assert_eq!(json["error"], "Bad Request", "{json}");
        assert!(json["message"].as_str().unwrap().len() > 5, "{json}");
    }

    // Past 64 KiB without a declared length (chunks): 413 once the limit is passed.
    let head = format!(
        "POST /api/v1/tokens/consume HTTP/1.1\r\nhost: t\r\nx-api-key: {KEY}\r\n\
         transfer-encoding: chunked\r\n\r\n"
    );
    let since = Instant::now();
    let stream = TcpStream::connect(server.local_addr()).await.unwrap();
    let (read, mut write) = stream.into_split();
    let chunk = format!("2000\r\n{}\r\n", " ".repeat(0x2000));
    let writer = tokio::spawn(async move {
        let _ = write.write_all(head.as_bytes()).await;
        for _ in 0..9 {
            if write.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
        }
        write
    });
    let mut stream = read.reunite(writer.await.unwrap()).unwrap();
    let (response, _) = until_closed(&mut stream, since, AT_ONCE * 2).await;
    assert_eq!(status_line(&response), "HTTP/1.1 413 Payload Too Large");

    // Huge headers: 431.
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    let since = Instant::now();
    let huge = format!(
        "GET /health HTTP/1.1\r\nhost: t\r\nx-filler: {}\r\n\r\n",
        "a".repeat(512 * 1024)
    );
    let _ = stream.write_all(huge.as_bytes()).await;
    let (response, _) = until_closed(&mut stream, since, AT_ONCE * 2).await;
    assert_eq!(
        status_line(&response),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
}
