//! The consume endpoint: authentication from the headers, the body read against the request
//! deadline, validation, the store, JSON answers; the health check and the metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use lightrate_core::protocol::check_user_identifier;
use lightrate_core::protocol::CONSUME_PATH;
use lightrate_core::{ConsumeRequest, ErrorKind, Target};
use serde_json::{json, Map, Value};
use subtle::ConstantTimeEq;

use crate::arrival::request_started;
use crate::metrics::{Outcome, ServerMetrics};
use crate::{ServerConfig, TokenStore};

/// What the handler shares across requests.
#[derive(Debug)]
pub(crate) struct AppState<S> {
    pub(crate) api_key: String,
    pub(crate) application_id: String,
    pub(crate) source: Arc<S>,
    pub(crate) body_limit: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) consume_calls: AtomicU64,
    pub(crate) metrics: Arc<ServerMetrics>,
}

pub(crate) fn router<S: TokenStore>(config: &ServerConfig<S>, state: Arc<AppState<S>>) -> Router {
    let router = Router::new()
        .route(
            CONSUME_PATH,
            post(consume::<S>).fallback(method_not_allowed),
        )
        .route("/health", get(health::<S>));
    let router = if config.metrics {
        router.route("/metrics", get(metrics::<S>))
    } else {
        router
    };
    router.fallback(not_found).with_state(state)
}

/// A JSON error in the reference's shape: `{"error": "<reason>", "message": "<detail>"}`.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let reason = status.canonical_reason().unwrap_or("Error");
    (
        status,
        Json(json!({"error": reason, "message": message.into()})),
    )
        .into_response()
}

/// [`error`], saying the connection closes: its body is not read (hyper closes it then).
fn error_closing(status: StatusCode, message: impl Into<String>) -> Response {
    let mut response = error(status, message);
    response.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    response
}

/// Whether the request announces a body (a length above 0, or chunks).
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::TRANSFER_ENCODING)
        || headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// 503 with `Retry-After: 1`: the store could not answer (and so granted nothing).
fn unavailable(message: &str) -> Response {
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, message);
    response.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    response
}

/// `GET /health`: whether the store answers (for load balancers).
async fn health<S: TokenStore>(State(state): State<Arc<AppState<S>>>) -> Response {
    match state.source.health().await {
        Ok(()) => Json(json!({"status": "ok"})).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "message": e.message()})),
        )
            .into_response(),
    }
}

/// `GET /metrics`: the counters in the Prometheus text format.
async fn metrics<S: TokenStore>(State(state): State<Arc<AppState<S>>>) -> Response {
    let text = state.metrics.render(state.source.live_buckets());
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn not_found(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let message = format!("no route for {method} {}", uri.path());
    if has_body(&headers) {
        error_closing(StatusCode::NOT_FOUND, message)
    } else {
        error(StatusCode::NOT_FOUND, message)
    }
}

async fn method_not_allowed(method: Method, headers: HeaderMap) -> Response {
    let message = format!("{method} is not allowed here; use POST");
    let mut response = if has_body(&headers) {
        error_closing(StatusCode::METHOD_NOT_ALLOWED, message)
    } else {
        error(StatusCode::METHOD_NOT_ALLOWED, message)
    };
    response
        .headers_mut()
        .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
    response
}

/// The key from `Authorization: Bearer <key>`, else from `x-api-key`.
fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .and_then(|v| {
            let (scheme, rest) = v.split_at(v.iter().position(|b| *b == b' ')?);
            scheme
                .eq_ignore_ascii_case(b"bearer")
                .then(|| rest.trim_ascii())
        });
    bearer.or_else(|| headers.get("x-api-key").map(|v| v.as_bytes().trim_ascii()))
}

/// `POST /api/v1/tokens/consume`, counted in the metrics.
async fn consume<S: TokenStore>(
    State(state): State<Arc<AppState<S>>>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let (response, outcome, rule, tokens) = answer(&state, request).await;
    state
        .metrics
        .consume(outcome, rule.as_deref(), tokens, started.elapsed());
    response
}

/// The answer to a consume, its outcome, the rule and the tokens granted.
async fn answer<S: TokenStore>(
    state: &AppState<S>,
    request: Request,
) -> (Response, Outcome, Option<String>, u64) {
    let refused = |status, outcome, message: &str| (error(status, message), outcome, None, 0);
    // Everything that the headers decide is answered before a byte of the body is read.
    let deadline = request_started().unwrap_or_else(Instant::now) + state.request_timeout;
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let authorised =
        presented_key(&headers).is_some_and(|key| bool::from(key.ct_eq(state.api_key.as_bytes())));
    if !authorised {
        let message = "Invalid or missing API key";
        let response = if has_body(&headers) {
            error_closing(StatusCode::UNAUTHORIZED, message)
        } else {
            error(StatusCode::UNAUTHORIZED, message)
        };
        return (response, Outcome::Unauthorized, None, 0);
    }
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = format!("the body is larger than {} bytes", state.body_limit);
    if declared.is_some_and(|n| n > state.body_limit as u64) {
        let response = error_closing(StatusCode::PAYLOAD_TOO_LARGE, too_large);
        return (response, Outcome::Invalid, None, 0);
    }
    let body = match read_body(body, state.body_limit, deadline).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            let response = error_closing(StatusCode::PAYLOAD_TOO_LARGE, too_large);
            return (response, Outcome::Invalid, None, 0);
        }
        Err(BodyError::Late) => {
            let message = format!(
                "the request did not arrive whole within {} ms",
                state.request_timeout.as_millis()
            );
            let response = error_closing(StatusCode::REQUEST_TIMEOUT, message);
            return (response, Outcome::Timeout, None, 0);
        }
        Err(BodyError::Unreadable(e)) => {
            let message = format!("the body could not be read: {e}");
            let response = error_closing(StatusCode::BAD_REQUEST, message);
            return (response, Outcome::Invalid, None, 0);
        }
    };
    state.consume_calls.fetch_add(1, Ordering::Relaxed);
    let fields = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(fields)) => fields,
        Ok(_) => {
            return refused(
                StatusCode::BAD_REQUEST,
                Outcome::Invalid,
                "the body must be a JSON object",
            )
        }
        Err(e) => {
            let message = format!("the body is not valid JSON: {e}");
            return refused(StatusCode::BAD_REQUEST, Outcome::Invalid, &message);
        }
    };
    let parsed = match Parsed::from_fields(&fields, &headers) {
        Ok(parsed) => parsed,
        Err(message) => return refused(StatusCode::BAD_REQUEST, Outcome::Invalid, &message),
    };
    if parsed.application_id != state.application_id {
        return refused(
            StatusCode::NOT_FOUND,
            Outcome::UnknownApplication,
            "Application not found",
        );
    }
    let mut request = ConsumeRequest::new(parsed.user, &parsed.target, parsed.tokens);
    request.tokens_requested_for_default_bucket_match = parsed.default_match;
    match state.source.consume_tokens(request).await {
        Ok(answer) => {
            let granted = answer.tokens_consumed;
            let outcome = if granted > 0 {
                Outcome::Granted
            } else {
                Outcome::Denied
            };
            let rule = answer.rule.id.clone();
            (Json(answer).into_response(), outcome, Some(rule), granted)
        }
        Err(e) if e.kind() == ErrorKind::InvalidInput => {
            refused(StatusCode::BAD_REQUEST, Outcome::Invalid, e.message())
        }
        Err(e) if e.is_outage() => {
            state.metrics.store_error(e.kind());
            tracing::warn!(target: "lightrate::server", error = %e, "the token store cannot answer");
            (unavailable(e.message()), Outcome::Unavailable, None, 0)
        }
        Err(e) => {
            state.metrics.store_error(e.kind());
            tracing::error!(target: "lightrate::server", error = %e, "the token store failed");
            refused(
                StatusCode::INTERNAL_SERVER_ERROR,
                Outcome::Error,
                e.message(),
            )
        }
    }
}

/// Why a body could not be had.
enum BodyError {
    TooLarge,
    Late,
    Unreadable(Box<dyn std::error::Error + Send + Sync>),
}

/// The whole body, at most `limit` bytes, by `deadline`.
async fn read_body(body: Body, limit: usize, deadline: Instant) -> Result<bytes::Bytes, BodyError> {
    let collected =
        tokio::time::timeout_at(deadline.into(), Limited::new(body, limit).collect()).await;
    match collected {
        Err(_) => Err(BodyError::Late),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(BodyError::TooLarge),
        Ok(Err(e)) => Err(BodyError::Unreadable(e)),
    }
}

/// A validated consume body.
struct Parsed<'a> {
    application_id: &'a str,
    user: &'a str,
    tokens: u64,
    target: Target<'a>,
    default_match: Option<u64>,
}

impl<'a> Parsed<'a> {
    fn from_fields(fields: &'a Map<String, Value>, headers: &'a HeaderMap) -> Result<Self, String> {
        // `null` counts as absent: some SDKs send every field.
        let get = |name: &str| fields.get(name).filter(|v| !v.is_null());
        let string = |name: &str| -> Result<Option<&'a str>, String> {
            match fields.get(name).filter(|v| !v.is_null()) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(_) => Err(format!("{name} must be a string")),
            }
        };
        let positive = |name: &str| -> Result<Option<u64>, String> {
            match get(name) {
                None => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(n) if n > 0 => Ok(Some(n)),
                    _ => Err(format!("{name} must be a positive integer")),
                },
            }
        };

        let application_id = match string("applicationId")? {
            Some(app) => app,
            None => headers
                .get("x-application-id")
                .and_then(|v| v.to_str().ok())
                .ok_or("applicationId is required")?,
        };
        let user = string("userIdentifier")?.ok_or("userIdentifier is required")?;
        check_user_identifier(user).map_err(|e| e.message().to_owned())?;
        let tokens = positive("tokensRequested")?.ok_or("tokensRequested is required")?;
        let default_match = positive("tokensRequestedForDefaultBucketMatch")?;
        let target = match (string("operation")?, string("path")?, string("httpMethod")?) {
            (Some(_), Some(_), _) => {
                return Err("operation and path are mutually exclusive".into());
            }
            (Some(""), None, _) => return Err("operation must not be empty".into()),
            (Some(op), None, None) => Target::operation(op),
            (Some(_), None, Some(_)) => {
                return Err("httpMethod goes with path, not operation".into())
            }
            (None, Some(_), None) => return Err("path requires httpMethod".into()),
            (None, Some(path), Some(method)) => {
                let method = Method::from_bytes(method.as_bytes())
                    .map_err(|_| format!("httpMethod {method:?} is not an HTTP method"))?;
                Target::path(method, path)
            }
            (None, None, Some(_)) => return Err("httpMethod requires path".into()),
            (None, None, None) => Target::Default,
        };
        Ok(Parsed {
            application_id,
            user,
            tokens,
            target,
            default_match,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value) -> Result<(String, u64, String, Option<u64>), String> {
        let headers = HeaderMap::new();
        let Value::Object(fields) = body else {
            unreachable!()
        };
        let p = Parsed::from_fields(&fields, &headers)?;
        Ok((
            p.user.to_owned(),
            p.tokens,
            p.target.to_string(),
            p.default_match,
        ))
    }

    #[test]
    fn accepts_every_target_shape_and_nulls() {
        let base = json!({"applicationId": "a", "userIdentifier": "u", "tokensRequested": 2});
        let with = |extra: Value| {
            let mut v = base.clone();
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            parse(v)
        };
        assert_eq!(
            with(json!({"operation": "send"})).unwrap().2,
            "operation send"
        );
        assert_eq!(
            with(json!({"path": "/x", "httpMethod": "GET"})).unwrap().2,
            "GET /x"
        );
        assert_eq!(with(json!({})).unwrap().2, "default rule");
        assert_eq!(
            with(json!({"operation": "op", "path": null, "httpMethod": null, "timestamp": "t"}))
                .unwrap()
                .2,
            "operation op"
        );
        assert_eq!(
            with(json!({"tokensRequestedForDefaultBucketMatch": 1}))
                .unwrap()
                .3,
            Some(1)
        );
    }

    #[test]
    fn rejects_what_the_protocol_forbids() {
        let cases = [
            (
                json!({"userIdentifier": "u", "tokensRequested": 1}),
                "applicationId is required",
            ),
            (
                json!({"applicationId": "a", "tokensRequested": 1}),
                "userIdentifier is required",
            ),
            (
                json!({"applicationId": "a", "userIdentifier": " ", "tokensRequested": 1}),
                "blank",
            ),
            (
                json!({"applicationId": "a", "userIdentifier": "u"}),
                "tokensRequested is required",
            ),
            (
                json!({"applicationId": "a", "userIdentifier": "u", "tokensRequested": 0}),
                "positive",
            ),
            (
                json!({"applicationId": "a", "userIdentifier": "u", "tokensRequested": 1.5}),
                "positive",
            ),
            (
                json!({"applicationId": "a", "userIdentifier": "u", "tokensRequested": "1"}),
                "positive",
            ),
            (
                json!({"applicationId": "a", "userIdentifier": 7, "tokensRequested": 1}),
                "must be a string",
            ),
            (
                json!({"applicationId": "a", "userIdentifier": "u", "tokensRequested": 1,
                    "operation": "o", "path": "/p", "httpMethod": "GET"}),
                "mutually exclusive",
            ),
            (
                json!({"applicationId": "a", "userIdentifier": "u", "tokensRequested": 1,
                    "path": "/p"}),
                "path requires httpMethod",
            ),
            (
                json!({"applicationId": "a", "userIdentifier": "u", "tokensRequested": 1,
                    "httpMethod": "GET"}),
                "httpMethod requires path",
            ),
            (
                json!({"applicationId": "a", "userIdentifier": "u", "tokensRequested": 1,
                    "path": "/p", "httpMethod": "G T"}),
                "not an HTTP method",
            ),
        ];
        for (body, expected) in cases {
            let e = parse(body.clone()).unwrap_err();
            assert!(e.contains(expected), "{body}: {e}");
        }
        let long = "x".repeat(lightrate_core::MAX_USER_IDENTIFIER_BYTES + 1);
        assert!(
            parse(json!({"applicationId": "a", "userIdentifier": long, "tokensRequested": 1}))
                .is_err()
        );
    }

    #[test]
    fn presented_key_reads_bearer_then_x_api_key() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_key(&h), None);
        h.insert("x-api-key", "k2".parse().unwrap());
        assert_eq!(presented_key(&h), Some(&b"k2"[..]));
        h.insert("authorization", "bearer  k1 ".parse().unwrap());
        assert_eq!(presented_key(&h), Some(&b"k1"[..]));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(presented_key(&h), Some(&b"k2"[..]));
    }
}
