//! The consume endpoint: authentication, body validation, the store, JSON answers; and the
//! health check.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use lightrate_core::protocol::CONSUME_PATH;
use lightrate_core::{ConsumeRequest, ErrorKind, Target, MAX_USER_IDENTIFIER_BYTES};
use serde_json::{json, Map, Value};
use subtle::ConstantTimeEq;

use crate::{ServerConfig, TokenStore};

/// What the handler shares across requests.
#[derive(Debug)]
pub(crate) struct AppState<S> {
    pub(crate) api_key: String,
    pub(crate) application_id: String,
    pub(crate) source: Arc<S>,
    pub(crate) consume_calls: AtomicU64,
}

pub(crate) fn router<S: TokenStore>(config: &ServerConfig<S>, state: Arc<AppState<S>>) -> Router {
    Router::new()
        .route(
            CONSUME_PATH,
            post(consume::<S>).fallback(method_not_allowed),
        )
        .route("/health", get(health::<S>))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(config.body_limit))
        .with_state(state)
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

async fn not_found(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no route for {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method) -> Response {
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed here; use POST"),
    );
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

async fn consume<S: TokenStore>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let authorised =
        presented_key(&headers).is_some_and(|key| bool::from(key.ct_eq(state.api_key.as_bytes())));
    if !authorised {
        return error(StatusCode::UNAUTHORIZED, "Invalid or missing API key");
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return error(rejection.status(), rejection.body_text()),
    };
    state.consume_calls.fetch_add(1, Ordering::Relaxed);
    let fields = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(fields)) => fields,
        Ok(_) => return error(StatusCode::BAD_REQUEST, "the body must be a JSON object"),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body is not valid JSON: {e}"),
            )
        }
    };
    let parsed = match Parsed::from_fields(&fields, &headers) {
        Ok(parsed) => parsed,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    if parsed.application_id != state.application_id {
        return error(StatusCode::NOT_FOUND, "Application not found");
    }
    let mut request = ConsumeRequest::new(parsed.user, &parsed.target, parsed.tokens);
    request.tokens_requested_for_default_bucket_match = parsed.default_match;
    match state.source.consume_tokens(request).await {
        Ok(answer) => Json(answer).into_response(),
        Err(e) if e.kind() == ErrorKind::InvalidInput => {
            error(StatusCode::BAD_REQUEST, e.message())
        }
        Err(e) if e.is_outage() => {
            tracing::warn!(target: "lightrate::server", error = %e, "the token store cannot answer");
            unavailable(e.message())
        }
        Err(e) => {
            tracing::error!(target: "lightrate::server", error = %e, "the token store failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.message())
        }
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
        if user.trim().is_empty() {
            return Err("userIdentifier must not be blank".into());
        }
        if user.len() > MAX_USER_IDENTIFIER_BYTES {
            return Err(format!(
                "userIdentifier must be at most {MAX_USER_IDENTIFIER_BYTES} bytes"
            ));
        }
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
        let long = "x".repeat(MAX_USER_IDENTIFIER_BYTES + 1);
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
