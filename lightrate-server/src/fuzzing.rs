//! The body of the server's fuzz target (`fuzz/fuzz_targets/server_request.rs`), replayed over
//! the corpus by `tests/fuzz_corpus.rs`: a consume request made of the fuzzer's bytes, answered
//! by the real router on the embedded source. Not an API.

use std::cell::RefCell;

use axum::body::Body;
use http::{HeaderName, HeaderValue, Request, StatusCode};
use http_body_util::BodyExt;
use lightrate_core::protocol::CONSUME_PATH;
use lightrate_core::{EmbeddedSource, RuleSet};
use tower::ServiceExt;

use crate::{LightRateServer, ServerConfig};

/// The key the target's server accepts (an input may present it, or anything else).
pub const KEY: &str = "fuzz-key-0123456789";

struct Harness {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
}

thread_local! {
    static HARNESS: RefCell<Option<Harness>> = const { RefCell::new(None) };
}

/// `data` is a header block (`name: value` lines) up to the first blank line, then the body.
/// The request goes to `POST /api/v1/tokens/consume` (or to the path on a first line that
/// starts with `/`). Panics if the answer is not one the protocol allows: a status of the
/// documented set, a JSON body that is an answer (200) or an error with a message.
pub fn consume_request(data: &[u8]) {
    let split = data
        .windows(2)
        .position(|w| w == b"\n\n")
        .unwrap_or(data.len());
    let (head, body) = data.split_at(split);
    let body = body.get(2..).unwrap_or_default().to_vec();
    let mut request = Request::post(CONSUME_PATH);
    for (i, line) in head.split(|b| *b == b'\n').enumerate() {
        if i == 0 && line.starts_with(b"/") {
            if let Ok(uri) = http::Uri::try_from(line) {
                request = request.uri(uri);
            }
            continue;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            request = request.header(name, value);
        }
    }
    let Ok(request) = request.body(Body::from(body)) else {
        return;
    };
    HARNESS.with(|cell| {
        let mut cell = cell.borrow_mut();
        let harness = cell.get_or_insert_with(|| {
            let source = EmbeddedSource::new(RuleSet::demo());
            let config = ServerConfig::new(KEY, "app_fuzz", source).expect("a valid config");
            Harness {
                runtime: tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime"),
                router: LightRateServer::new(config).router(),
            }
        });
        let router = harness.router.clone();
        harness.runtime.block_on(async move {
            let answer = router
                .oneshot(request)
                .await
                .expect("the router is infallible");
            let status = answer.status();
            let bytes = answer
                .into_body()
                .collect()
                .await
                .expect("an answer's body is readable")
                .to_bytes();
            check(status, &bytes);
        });
    });
}

fn check(status: StatusCode, body: &[u8]) {
    let allowed = [200, 400, 401, 404, 405, 408, 413, 500, 503];
    assert!(allowed.contains(&status.as_u16()), "status {status}");
    if status == StatusCode::METHOD_NOT_ALLOWED && body.is_empty() {
        return;
    }
    let json: serde_json::Value = serde_json::from_slice(body).expect("every answer is JSON");
    if status == StatusCode::OK {
        let answer: lightrate_core::ConsumeTokensResponse =
            serde_json::from_value(json).expect("a 200 is a consume answer");
        assert!(
            answer.tokens_consumed <= answer.rule.burst_rate,
            "{answer:?}"
        );
    } else {
        assert!(json["error"].is_string(), "{json}");
        assert!(json["message"].is_string(), "{json}");
    }
}
